"""The lock of an output folder (and of each downloaded file) where flock does not reach across
hosts (NFS `local_lock`, BeeGFS, Lustre `localflock`): a holder paused past the stale time and
taken over stops when it resumes, two runs starting at once never both hold it, and without flock
a record of this host counts while its pid is alive. Holders are real processes; "another host"
is a process that names itself otherwise and whose flock does not see the first one's."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import storage.locks as locks
from pipeline.output.lock import LOCK_NAME, OutputLocked, exclusive
from storage.locks import LockBusy, claim_path, read_record, record_path, take
from tests.conftest import REPO

ENV = {**os.environ, "PYTHONPATH": str(REPO)}

# A run holding OUT: one commit, then a long wait with no check in it (for a download, say).
PAUSED_HOLDER = """
import sys, threading, time
from pathlib import Path
from pipeline.output.lock import LockLost, exclusive
out = Path(sys.argv[1])
try:
    with exclusive(out, heartbeat_s=0.1, stale_s=1.0):
        while True:
            with (out / "commits").open("a") as f:
                f.write(f"{time.time()}\\n")
            print("held", flush=True)  # after its commit: the test pauses it from here on
            threading.Event().wait(30)
except LockLost as err:
    print(f"LockLost: {err}", flush=True)
    sys.exit(4)
"""


def node_local_flock(monkeypatch) -> None:
    """This process's flock does not see other processes' (another host on NFS with local_lock)."""
    monkeypatch.setattr(fcntl, "flock", lambda fd, op: None)


def ignore_sigint() -> None:
    """What a non-interactive shell does to a background job (`valle-prep run ... &` in a script)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("sigint", ["default", "ignored"])
def test_a_holder_paused_past_the_stale_time_stops_at_once_when_it_resumes(tmp_path, monkeypatch, sigint):
    out = tmp_path / "out"
    a = subprocess.Popen(
        [sys.executable, "-c", PAUSED_HOLDER, str(out)],
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
        preexec_fn=ignore_sigint if sigint == "ignored" else None,
    )
    try:
        assert a.stdout.readline().strip() == "held"
        os.kill(a.pid, signal.SIGSTOP)
        time.sleep(1.5)  # past A's stale time: its heartbeat stopped with it
        node_local_flock(monkeypatch)
        with exclusive(out, host="host-b", heartbeat_s=0.1, stale_s=1.0) as b:
            os.kill(a.pid, signal.SIGCONT)
            resumed = time.monotonic()
            a.wait(timeout=10)
            stopped_after = time.monotonic() - resumed
            said = a.stdout.read()
            assert a.returncode == 4, said
            assert f"LockLost: {out / LOCK_NAME} was taken over by host host-b, pid {os.getpid()}" in said
            assert stopped_after < 5  # its next heartbeat (0.1 s) finds the record replaced; ~0.1 s here
            assert len((out / "commits").read_text().splitlines()) == 1  # nothing after it resumed
            assert read_record(out / LOCK_NAME) == b.record  # A's heartbeat and exit left it alone
            b.check()
    finally:
        a.kill()
        a.wait()
    assert read_record(out / LOCK_NAME)["token"] == b.record["token"]


CONTENDER = """
import fcntl, socket, sys, time
from pathlib import Path
host, out = sys.argv[1], Path(sys.argv[2])
socket.gethostname = lambda: host  # a host of its own,
fcntl.flock = lambda fd, op: None  # whose flock does not see the other's (NFS local_lock)
from pipeline.output.lock import OutputLocked, exclusive
for go in sys.stdin:
    start = float(go)
    while time.time() < start:  # both start at the same moment
        pass
    try:
        with exclusive(out, heartbeat_s=60):
            print("won", flush=True)
            sys.stdin.readline()
    except OutputLocked:
        print("refused", flush=True)
        sys.stdin.readline()
"""


def test_two_hosts_starting_at_once_never_both_hold_the_folder(tmp_path):
    """Two contenders, released at the same moment, race on the record 40 times."""
    out = tmp_path / "out"
    out.mkdir()
    hosts = [
        subprocess.Popen(
            [sys.executable, "-c", CONTENDER, name, str(out)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        for name in ("host-a", "host-b")
    ]
    outcomes = []
    try:
        for _ in range(40):
            start = time.time() + 0.02
            for h in hosts:
                h.stdin.write(f"{start}\n")
                h.stdin.flush()
            outcomes.append(sorted(h.stdout.readline().strip() for h in hosts))
            for h in hosts:  # the winner releases, the loser waits for the next round
                h.stdin.write("next\n")
                h.stdin.flush()
    finally:
        for h in hosts:
            h.stdin.close()
            h.wait(timeout=30)
    assert outcomes.count(["refused", "won"]) == 40, outcomes


@pytest.mark.parametrize("cut_in_after, winner", [("_judge", "host-r"), ("_claim", "host-1")])
def test_a_rival_cutting_into_a_takeover_leaves_one_holder(tmp_path, monkeypatch, cut_in_after, winner):
    """A deterministic interleaving: both judge the same dead holder's record; a rival tries to
    take it over right after this contender judged it (or claimed its next generation). Whoever
    claims first holds it; the other is refused."""
    path = tmp_path / "x.lock"
    record_path(path).write_text(json.dumps({"host": "gone", "pid": 1, "token": "t", "gen": 3, "heartbeat": 0}))
    claim_path(path, 3).write_text("{}")  # the dead holder's claim
    node_local_flock(monkeypatch)
    real, rival = getattr(locks, cut_in_after), []

    def then_rival(*args):
        result = real(*args)
        if not rival:
            rival.append(None)
            try:
                rival[0] = take(path, host="host-r")
            except LockBusy:
                pass
        return result

    monkeypatch.setattr(locks, cut_in_after, then_rival)
    try:
        mine = take(path, host="host-1")
    except LockBusy:
        mine = None
    holders = [h for h in (mine, rival[0]) if h is not None]
    try:
        assert [h.record["host"] for h in holders] == [winner]
        assert read_record(path)["token"] == holders[0].record["token"] and read_record(path)["gen"] == 4
        holders[0].check()
        assert not claim_path(path, 3).exists() and claim_path(path, 4).exists()
    finally:
        for h in holders:
            h.release()


HOLDER_WITHOUT_FLOCK = """
import errno, fcntl, os, sys, time
from pathlib import Path
def no_locks(fd, op):
    raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
fcntl.flock = no_locks
from pipeline.output.lock import exclusive
with exclusive(Path(sys.argv[1]), force=True):
    print("held", flush=True)
    time.sleep(600)
"""


def test_without_flock_a_record_of_this_host_counts_while_its_pid_lives(tmp_path, monkeypatch):
    """ENOLCK + --force-unlock relies on the record: a second run on the same host is refused
    while the first one's pid is alive, and takes over once it is gone."""
    out = tmp_path / "out"
    first = subprocess.Popen(
        [sys.executable, "-c", HOLDER_WITHOUT_FLOCK, str(out)], stdout=subprocess.PIPE, text=True, env=ENV
    )
    try:
        assert first.stdout.readline().strip() == "held"

        def no_locks(fd, op):
            raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

        monkeypatch.setattr(fcntl, "flock", no_locks)
        with pytest.raises(OutputLocked, match=rf"on this host \(host .*, pid {first.pid}, .*alive"):
            with exclusive(out, force=True):
                pass
    finally:
        first.kill()
        first.wait()
    with exclusive(out, force=True) as second:
        assert read_record(out / LOCK_NAME)["pid"] == second.record["pid"] == os.getpid()


def test_a_lost_lock_fails_the_guard_and_check(tmp_path, monkeypatch):
    """What a unit task (another process) and the driver see once another host took over."""
    path = tmp_path / "x.lock"
    a = take(path, host="host-a", heartbeat_s=60)
    node_local_flock(monkeypatch)
    b = take(path, host="host-b", force=True)
    try:
        with pytest.raises(locks.LockLost, match="taken over by host host-b"):
            a.guard.check()
        with pytest.raises(locks.LockLost, match="taken over by host host-b"):
            a.check()
        assert a.lost.is_set()
        a.release()  # leaves B's record as it is
        assert read_record(path) == b.record
    finally:
        b.release()
    assert read_record(path)["released"]


def test_a_lock_lost_while_the_main_thread_waits_interrupts_it(tmp_path, monkeypatch):
    """The heartbeat thread finds the record replaced and stops the main thread's wait at once."""
    out, b = tmp_path / "out", []
    try:
        with pytest.raises(locks.LockLost, match="taken over by host host-b"):
            with exclusive(out, host="host-a", heartbeat_s=0.05):
                node_local_flock(monkeypatch)
                b.append(take(out / LOCK_NAME, host="host-b", force=True, heartbeat_s=60))
                started = time.monotonic()
                threading.Event().wait(30)
        assert time.monotonic() - started < 5
        assert read_record(out / LOCK_NAME) == b[0].record
    finally:
        for lock in b:
            lock.release()
