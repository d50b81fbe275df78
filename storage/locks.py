"""Locks that one process holds at a time, on one host or across hosts whose flock does not reach
each other; used for an output folder (pipeline.output.lock) and for each file of a shared
download folder (pipeline.fetch.transfers).

In: a lock path P. Out, while `take(P)`'s `HeldLock` is held:
- P is flocked: another process on this host is refused at once, and the kernel drops the lock
  when its holder ends, kill -9 included. P itself stays empty and is never replaced, so every
  process locks the same file.
- `P.json` is the holder's record {host, pid, token, gen, started, heartbeat}, renewed every
  `heartbeat_s` by a thread, because flock is node-local on some cluster file systems (NFS with
  `local_lock`, BeeGFS, Lustre with `localflock`): there, another host's record whose heartbeat
  is fresh (renewed within `stale_s`) refuses the lock; an older one is a holder that died,
  taken over with a warning (`force`: taken over when fresh too). A record of this host is
  judged by the flock, or where there is none (ENOLCK) by whether its pid is alive.
- Taking over is atomic: the contender creates `P.claim-<gen>` (O_EXCL, atomic on NFS too), so
  of two that judged the same record only one goes on; it checks the record is still the one it
  judged, renames its own record (fsynced) into place and reads it back.
- Before renewing, the heartbeat reads the record: a holder that finds another's token there
  (it was taken over while paused, or cut off past `stale_s`) writes nothing more, sets `lost`
  and calls `on_lost`. `check()` raises `LockLost` then, and `guard`, a picklable copy of the
  check, lets other processes (a run's workers) check the record before they commit.
- On release the record is marked released, only if it is still ours.
Heartbeats compare the wall clocks of different hosts: keep them in sync (NTP).
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
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from storage.files import fsync_dir, read_json, write_json_atomic

HEARTBEAT_S = 15.0
STALE_S = 120.0  # a heartbeat older than this is a holder that died

log = logging.getLogger(__name__)


class LockBusy(Exception):
    """Another process holds the lock. `reason`: "flock" (a process of this host holds the
    flock), "fresh" (another host's heartbeat is fresh), "alive" (this host's record, its pid
    alive, where there is no flock) or "claimed" (another process is taking it at this moment).
    `holder`: its record, None when unknown; `age_s`: its heartbeat's age, for "fresh"."""

    def __init__(self, path: Path, reason: str, holder: dict | None, age_s: float | None = None):
        super().__init__(f"{path}: held by {describe(holder)} ({reason})")
        self.path, self.reason, self.holder, self.age_s = path, reason, holder, age_s


class LockLost(RuntimeError):
    """This process's lock was taken over by another: it must commit nothing more."""


def record_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def claim_path(path: Path, gen: int) -> Path:
    return path.with_name(f"{path.name}.claim-{gen}")


def read_record(path: Path) -> dict | None:
    """The holder's record of lock `path`; None when there is none (or it is unreadable)."""
    record = read_json(record_path(path))
    return record if isinstance(record, dict) else None


def describe(record: dict | None) -> str:
    try:
        return f"host {record['host']}, pid {record['pid']}, started {record['started']}"
    except (KeyError, TypeError):
        return "holder unknown: it is starting"


@dataclass(frozen=True)
class LockGuard:
    """What a process checks before it commits on behalf of a holder (picklable: a Ray task)."""

    path: Path
    token: str

    def check(self) -> None:
        now = read_record(self.path)
        if not now or now.get("token") != self.token or now.get("released"):
            raise lost_error(self.path, now)


def lost_error(path: Path, now: dict | None) -> LockLost:
    who = describe(now) if now else "nobody (its record was deleted)"
    return LockLost(
        f"{path} was taken over by {who}: this holder's heartbeat had stopped for longer than the "
        f"stale time (was the process paused, or cut off from the file system?). It stopped before "
        f"committing anything more; the holder now named in {record_path(path).name} goes on"
    )


class HeldLock:
    """A lock taken by `take`: its record, `lost` (set once it was taken over), `check()`."""

    def __init__(self, path: Path, fd: int, record: dict, flocked: bool, heartbeat_s: float, on_lost):
        self.path, self.record, self.flocked = path, record, flocked
        self.guard = LockGuard(path, record["token"])
        self.lost = threading.Event()
        self._fd, self._on_lost, self._taken_by = fd, on_lost, None
        self._stop = threading.Event()
        self._beat = threading.Thread(
            target=self._renew, args=(heartbeat_s,), name=f"heartbeat {path.name}", daemon=True
        )
        self._beat.start()

    def check(self) -> None:
        """Raise `LockLost` if another process took the lock over (reads the record)."""
        if self.lost.is_set():
            raise self.lost_error()
        try:
            self.guard.check()
        except LockLost:
            self._lose(read_record(self.path), notify=False)  # the caller stops: no need to interrupt it
            raise

    def lost_error(self) -> LockLost:
        return lost_error(self.path, self._taken_by)

    def release(self) -> None:
        """Stop the heartbeat; mark the record released if it is still ours; drop the flock."""
        self._stop.set()
        self._beat.join()
        try:
            if not self.lost.is_set() and self._ours(read_record(self.path)):
                write_json_atomic(record_path(self.path), {**self.record, "released": True, "heartbeat": time.time()})
        except OSError as err:  # left unreleased: other hosts wait for it to go stale
            log.warning("%s: cannot mark the record released: %s", self.path, err)
        finally:
            os.close(self._fd)

    def _ours(self, now: dict | None) -> bool:
        return bool(now) and now.get("token") == self.record["token"] and not now.get("released")

    def _renew(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            try:
                now = read_record(self.path)
                if not self._ours(now):
                    self._lose(now)
                    return
                self.record = {**self.record, "heartbeat": time.time()}
                write_json_atomic(record_path(self.path), self.record)
            except OSError as err:  # a full or unreachable disk: the holder's own writes will say so
                log.warning("%s: cannot renew the heartbeat: %s", self.path, err)

    def _lose(self, now: dict | None, notify: bool = True) -> None:
        if self.lost.is_set():
            return
        self._taken_by = now
        self.lost.set()
        log.error("%s", lost_error(self.path, now))
        if notify and self._on_lost is not None and not self._stop.is_set():  # not once it is released
            self._on_lost()


def take(
    path: Path,
    *,
    force: bool = False,
    require_flock: bool = True,
    host: str | None = None,
    heartbeat_s: float = HEARTBEAT_S,
    stale_s: float = STALE_S,
    on_lost: Callable[[], None] | None = None,
) -> HeldLock:
    """Take lock `path` or raise `LockBusy`. `require_flock`: a file system that refuses locks
    (ENOLCK) raises that OSError; else the record alone decides. `host`: this holder's name
    (default: the machine's). `on_lost`: called from the heartbeat thread if the lock is taken
    over."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        flocked = _flock(fd, path, require_flock)
        me = _take_record(path, host or socket.gethostname(), flocked, force, stale_s)
    except BaseException:
        os.close(fd)
        raise
    return HeldLock(path, fd, me, flocked, heartbeat_s, on_lost)


def _flock(fd: int, path: Path, require: bool) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise LockBusy(path, "flock", read_record(path)) from None
        if err.errno != errno.ENOLCK or require:
            raise
        return False  # the file system refuses locks (ENOLCK): the record alone decides
    return True


def _take_record(path: Path, host: str, flocked: bool, force: bool, stale_s: float) -> dict:
    """Judge the record, claim its next generation, put ours in its place and read it back."""
    seen = read_record(path)
    _judge(path, seen, host, flocked, force, stale_s)
    me = {"host": host, "pid": os.getpid(), "token": uuid.uuid4().hex, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    before = int((seen or {}).get("gen", 0))
    me["gen"] = _claim(path, before + 1, me, stale_s)
    if read_record(path) != seen:  # another contender went on since we judged the record
        claim_path(path, me["gen"]).unlink(missing_ok=True)
        raise LockBusy(path, "claimed", read_record(path))
    me["heartbeat"] = time.time()
    write_json_atomic(record_path(path), me)
    if (read_record(path) or {}).get("token") != me["token"]:
        raise LockBusy(path, "claimed", read_record(path))
    for gen in range(before, me["gen"]):  # the claims this one supersedes
        claim_path(path, gen).unlink(missing_ok=True)
    return me


def _judge(path: Path, holder: dict | None, host: str, flocked: bool, force: bool, stale_s: float) -> None:
    """Refuse a live holder; take over a released, dead or stale one (or a fresh one, with force)."""
    if not holder or holder.get("released"):
        return
    if holder.get("host") == host:
        if flocked:
            return  # its process holds no flock on this host: it is gone
        if _pid_alive(int(holder.get("pid", 0))):
            raise LockBusy(path, "alive", holder)
        log.warning("%s: taking over from a process of this host that is gone (%s)", path, describe(holder))
        return
    age = time.time() - float(holder.get("heartbeat", 0))
    if age > stale_s:
        log.warning(
            "%s: taking over from a holder that stopped renewing its heartbeat %.0f s ago (%s)",
            path,
            age,
            describe(holder),
        )
        return
    if not force:
        raise LockBusy(path, "fresh", holder, age)
    log.warning("%s: forced: taking over from %s, whose heartbeat is %.0f s old", path, describe(holder), age)


def _claim(path: Path, gen: int, me: dict, stale_s: float) -> int:
    """Create the claim of generation `gen` (or of a later one, past claims whose contender died
    before writing its record); `LockBusy` when another contender holds it."""
    while True:
        claim = claim_path(path, gen)
        try:
            fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                age = time.time() - claim.stat().st_mtime
            except FileNotFoundError:
                continue  # superseded just now: try again
            if age <= stale_s:
                raise LockBusy(path, "claimed", read_json(claim)) from None
            gen += 1
            continue
        try:
            os.write(fd, json.dumps(me).encode())  # who claims it, for the others' messages
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(path.parent)
        return gen


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
