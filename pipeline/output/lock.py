"""Output lock: one `valle-prep run` at a time on an output folder, on one machine or many.

In: the output folder. Out: while held, `OUT/.valle-prep.lock` is locked (flock, exclusive) and
holds the holder's record: host, pid, start time and a heartbeat that a thread renews every
HEARTBEAT_S seconds. When the run ends the file is emptied, not deleted (deleting it would let
two runs lock two different files of the same name).

Two guards, because flock is node-local on some cluster file systems (NFS mounted with
`local_lock`, BeeGFS, Lustre with `localflock`): there, drivers on two hosts both get the flock.
- flock: a second run on the same host stops at once with `OutputLocked` naming the holder. The
  kernel drops the lock when its process ends, kill -9 included, so a killed run never blocks the
  next one on its host.
- the record, checked once the flock is ours: a record from another host whose heartbeat is
  fresh (renewed within STALE_S) means that host's run holds the folder: refused, naming it. A
  stale one is a run that died: taken over with a warning. `force=True` (`--force-unlock`) takes
  over a fresh one too, for when you know that run is gone (its host's clock is wrong, say).
Heartbeats compare wall clocks of different hosts: keep them in sync (NTP); STALE_S is generous.
A file system that refuses locks (ENOLCK) is a clear error, or, with `force`, the record alone.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".valle-prep.lock"
HEARTBEAT_S = 15.0
STALE_S = 120.0  # a heartbeat older than this is a run that died

log = logging.getLogger(__name__)


class OutputLocked(RuntimeError):
    """Another run holds the output folder."""


@contextmanager
def exclusive(out: Path, force: bool = False, heartbeat_s: float = HEARTBEAT_S):
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _take_flock(fd, out, force)
        _check_record(_record(fd), out, force)
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        stop = threading.Event()
        _write(fd, me)
        beat = threading.Thread(target=_beat, args=(fd, me, stop, heartbeat_s), name="out-lock-heartbeat", daemon=True)
        beat.start()
        try:
            yield me
        finally:
            stop.set()
            beat.join()
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock


def _take_flock(fd: int, out: Path, force: bool) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise OutputLocked(
                f"{out} is in use by another valle-prep run ({_describe(_record(fd))}); wait for "
                f"it to finish or stop it, or write to another --out"
            ) from None
        if err.errno != errno.ENOLCK:
            raise
        if not force:
            raise OutputLocked(
                f"{out}: its file system refuses locks (ENOLCK: NFS mounted with nolock, or no lock "
                "daemon), so two runs on this folder cannot be told apart. Mount it with locking, or pass "
                "--force-unlock to rely on the heartbeat record alone"
            ) from None
        log.warning("%s: the file system refuses locks (ENOLCK); --force-unlock: going on with the record", out)


def _check_record(holder: dict | None, out: Path, force: bool) -> None:
    """Refuse a fresh heartbeat of another host; take over a stale one (or any, with force)."""
    if not holder or holder.get("host") == socket.gethostname():
        return  # free, or left on this host by a run the flock shows is gone
    age = time.time() - float(holder.get("heartbeat", 0))
    if age > STALE_S:
        log.warning(
            "%s: taking over from a run that stopped renewing its heartbeat %.0f s ago (%s)",
            out,
            age,
            _describe(holder),
        )
        return
    if force:
        log.warning(
            "%s: --force-unlock: taking over from %s, whose heartbeat is %.0f s old", out, _describe(holder), age
        )
        return
    raise OutputLocked(
        f"{out} is in use by a valle-prep run on another host ({_describe(holder)}, heartbeat {age:.0f} s ago; "
        f"this file system's locks do not reach across hosts). Wait for it to finish, or, if that run is gone, "
        f"wait {STALE_S:.0f} s for its heartbeat to go stale or pass --force-unlock"
    )


def _beat(fd: int, me: dict, stop: threading.Event, every_s: float) -> None:
    while not stop.wait(every_s):
        try:
            _write(fd, me)
        except OSError as err:  # a full or unreachable disk: the run's own writes will say so
            log.warning("output lock: cannot renew the heartbeat: %s", err)


def _write(fd: int, me: dict) -> None:
    data = (json.dumps({**me, "heartbeat": time.time()}) + "\n").encode()
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))


def _record(fd: int) -> dict | None:
    try:
        record = json.loads(os.pread(fd, 4096, 0) or b"null")
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _describe(holder: dict | None) -> str:
    try:
        return f"host {holder['host']}, pid {holder['pid']}, started {holder['started']}"
    except (KeyError, TypeError):
        return "holder unknown: it is starting"
