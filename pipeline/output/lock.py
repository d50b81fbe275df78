"""Output lock: one `valle-prep run` at a time on an output folder.

In: the output folder. Out: while held, `OUT/.valle-prep.lock` is locked (flock, exclusive) and
holds the holder's host, pid and start time; a second run stops at once with `OutputLocked`
naming them. The kernel drops the lock when its process ends, however it ends (kill -9
included), so a lock left by a killed run never blocks the next one: the file's content alone
means nothing. When the run ends the file is emptied, not deleted (deleting it would let two
runs lock two different files of the same name).

flock works across NFS v4 clients on Linux; on a shared file system without working locks,
run one driver per output folder by hand.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".valle-prep.lock"


class OutputLocked(RuntimeError):
    """Another run holds the output folder."""


@contextmanager
def exclusive(out: Path):
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise OutputLocked(
                f"{out} is in use by another valle-prep run ({_holder(fd)}); wait for "
                f"it to finish or stop it, or write to another --out"
            ) from None
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        try:
            yield me
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock


def _holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"host {holder['host']}, pid {holder['pid']}, started {holder['started']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown: it is starting"
