"""Output lock: one `valle-prep run` at a time on an output folder, on one machine or many.

In: the output folder. Out: while held, `OUT/.valle-prep.lock` is flocked and
`OUT/.valle-prep.lock.json` names the run holding it (host, pid, start, a heartbeat renewed
every HEARTBEAT_S seconds): storage.locks, the same lock each file of a download folder has.
- A second run on the same host stops at once with `OutputLocked` naming the holder (flock,
  dropped by the kernel when its process ends, kill -9 included).
- Where flock is node-local (NFS with `local_lock`, BeeGFS, Lustre with `localflock`) the
  record decides: a fresh heartbeat of another host refuses the run; one older than STALE_S is a
  run that died, taken over with a warning; `force` (`--force-unlock`) takes over a fresh one
  too, for when you know that run is gone. Two runs starting at once: one wins.
- A file system that refuses locks (ENOLCK) is a clear error, or, with `force`, the record
  alone decides (a record of this host then counts while its pid is alive).
- A run that finds its record replaced (it was paused or cut off past STALE_S, and another run
  took over) stops at once: the heartbeat thread interrupts the main thread (SIGUSR1, handled for
  the block's duration, so it works whatever SIGINT's disposition: a background job of a script
  ignores SIGINT), the block raises `LockLost`, and the `guard` its units check before they
  commit (pipeline.encode.unit) fails too, so it commits nothing more. `valle-prep run` exits 4 then.
"""

from __future__ import annotations

import errno
import logging
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

from storage.locks import HEARTBEAT_S, STALE_S, HeldLock, LockBusy, LockLost, describe, take

LOCK_NAME = ".valle-prep.lock"
WAKE = signal.SIGUSR1  # the heartbeat thread's own signal: SIGINT may be ignored (a script's `cmd &`)

__all__ = ["LOCK_NAME", "LockLost", "OutputLocked", "exclusive"]

log = logging.getLogger(__name__)


class OutputLocked(RuntimeError):
    """Another run holds the output folder."""


@contextmanager
def exclusive(
    out: Path,
    force: bool = False,
    *,
    heartbeat_s: float = HEARTBEAT_S,
    stale_s: float = STALE_S,
    host: str | None = None,
):
    """Hold `out` for the block; yields the `HeldLock` (`check()`, `guard` for the units)."""
    out.mkdir(parents=True, exist_ok=True)
    with _wakeable_main_thread() as wake:
        held = _take(out, force, heartbeat_s, stale_s, host, wake)
        try:
            yield held
        except KeyboardInterrupt:
            if not held.lost.is_set():
                raise
            raise held.lost_error() from None  # the heartbeat thread's interrupt
        finally:
            held.release()


def _take(out: Path, force: bool, heartbeat_s: float, stale_s: float, host: str | None, on_lost) -> HeldLock:
    try:
        held = take(
            out / LOCK_NAME,
            force=force,
            require_flock=not force,
            host=host,
            heartbeat_s=heartbeat_s,
            stale_s=stale_s,
            on_lost=on_lost,
        )
    except LockBusy as busy:
        raise OutputLocked(_refusal(out, busy, stale_s)) from None
    except OSError as err:
        if err.errno != errno.ENOLCK:
            raise
        raise OutputLocked(
            f"{out}: its file system refuses locks (ENOLCK: NFS mounted with nolock, or no lock daemon), so two "
            "runs on this folder cannot be told apart. Mount it with locking, or pass --force-unlock to rely on "
            "the heartbeat record alone"
        ) from None
    if not held.flocked:
        log.warning("%s: the file system refuses locks (ENOLCK); --force-unlock: going on with the record", out)
    return held


@contextmanager
def _wakeable_main_thread():
    """How the heartbeat thread stops a run whose lock was taken over: WAKE to the main thread
    (it wakes from any blocking wait, unlike a flag), raising KeyboardInterrupt there, which
    `exclusive` turns into `LockLost`. The handler is installed for the block and the previous
    one restored after the lock is released (no heartbeat signals after that). Yields None where
    the lock is not taken in the main thread: the checks before each commit stop the run there."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    previous = signal.signal(WAKE, signal.default_int_handler)
    main = threading.main_thread().ident
    try:
        yield lambda: signal.pthread_kill(main, WAKE)
    finally:
        signal.signal(WAKE, previous if previous is not None else signal.SIG_DFL)


def _refusal(out: Path, busy: LockBusy, stale_s: float) -> str:
    holder = describe(busy.holder)
    if busy.reason == "flock":
        return (
            f"{out} is in use by another valle-prep run ({holder}); wait for it to finish or stop it, or write "
            "to another --out"
        )
    if busy.reason == "alive":
        return (
            f"{out} is in use by a valle-prep run on this host ({holder}: that process is alive; this file system "
            f"refuses locks, so its record says so). Wait for it to finish or stop it, or write to another --out"
        )
    if busy.reason == "claimed":
        return (
            f"{out}: another valle-prep run is taking it over at this moment ({holder}); let that one run, or "
            "write to another --out"
        )
    return (
        f"{out} is in use by a valle-prep run on another host ({holder}, heartbeat {busy.age_s:.0f} s ago; "
        f"this file system's locks do not reach across hosts). Wait for it to finish, or, if that run is gone, "
        f"wait {stale_s:.0f} s for its heartbeat to go stale or pass --force-unlock"
    )
