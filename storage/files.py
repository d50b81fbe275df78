"""Local files written so that a crash never leaves a torn one.

In: paths and bytes or JSON-serialisable objects. Out: files written atomically (a reader sees
either the old file or the complete new one: temp file in the same folder, fsync, rename, fsync
the folder), and deterministic JSON (sorted keys, indent=1, UTF-8, trailing newline), so the
same object always gives the same bytes and ledgers, markers and indexes can be compared or
hashed.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def fsync_dir(folder: Path) -> None:
    """Make a rename/creation inside `folder` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on directories; the rename itself already happened
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush a file's data to disk before it is renamed into place."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def json_bytes(obj: Any) -> bytes:
    """The deterministic serialisation used for every JSON file the project writes."""
    return (json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def read_json(path: Path) -> Any:
    """A JSON file's content, or None when it is missing or unreadable (e.g. torn by a crash)."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, ValueError):
        return None


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temp path in `path`'s folder to write; when the block ends normally it is fsynced and
    renamed onto `path` (atomic: readers see the old file or the whole new one), else removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder, so os.replace is a rename on one file system (atomic), never a copy.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        fsync_file(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fsync_dir(path.parent)


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write `data` to `path` via a temp file in the same folder, fsync, os.replace, fsync folder."""
    with replacing(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json_atomic(path: Path, obj: Any) -> Path:
    """Atomically write `obj` as deterministic JSON to `path`; returns `path`."""
    return write_bytes_atomic(path, json_bytes(obj))


def write_durably(path: Path, write) -> None:
    """`write(file)` into a new file at `path`, then flush it to disk before anyone renames it."""
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def append_durably(path: Path, data: bytes) -> None:
    """Append `data` (whole lines) to `path` and flush it to disk before returning: a crash later
    loses nothing appended; a crash during the call can leave only a torn last line."""
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def finished_lines(path: Path) -> list[bytes]:
    """The lines of an append-only file that end in a newline; a torn last line (a crash during
    `append_durably`) is cut from the file so the next append starts on a line of its own."""
    with open(path, "rb+") as f:
        data = f.read()
        whole = data[: data.rfind(b"\n") + 1]
        if len(whole) < len(data):
            f.truncate(len(whole))
            f.flush()
            os.fsync(f.fileno())
    return whole.splitlines()
