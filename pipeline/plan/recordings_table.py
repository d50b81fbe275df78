"""A lhotse recordings manifest as an on-disk table: recording id -> its recording, for the join
of a supervisions manifest with its recordings without a dict of them all in memory.

Per-utterance corpora have as many recordings as supervisions (12 M is the scale to plan for):
as Python objects that is gigabytes; as a sqlite table (stdlib) it is a file read through a
small page cache, ~10 us a lookup. Built once per recordings file: its name carries the file's
sha256, so a resumed run (or another subset sharing the file) reuses it; written under a
temporary name and renamed, so a killed build leaves nothing that looks finished.

A row keeps the recording line as lhotse wrote it (re-decoded on lookup, ~2 us), or, for a line
lhotse would refuse, why: the supervisions that name it are refused with that reason.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path

from pipeline.plan.lhotse_lines import RECORDING, Recording, decode
from pipeline.plan.manifest import BadLine, read_blocks

TABLE_FORMAT = 1
BATCH_ROWS = 20_000


def table_path(folder: Path, recordings_sha256: str) -> Path:
    return folder / f"recordings-{recordings_sha256[:32]}-v{TABLE_FORMAT}.sqlite"


def build_table(recordings: Path, target: Path) -> Path:
    """Stream `recordings` (JSON lines, gzip by its .gz name) into `target` unless it exists."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    db = sqlite3.connect(partial)
    try:
        # The file is thrown away if the build fails: no journal, no syncs until the end.
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.execute("CREATE TABLE recordings (id TEXT PRIMARY KEY, line BLOB, problem TEXT) WITHOUT ROWID")
        rows = []
        for first, block in read_blocks(recordings):
            for line_no, raw in enumerate(block.split(b"\n"), start=first):
                if raw.strip():
                    rows.append(_row(raw, line_no, recordings.name))
                if len(rows) >= BATCH_ROWS:
                    _insert(db, rows)
            _insert(db, rows)
        db.commit()
    finally:
        db.close()
    with open(partial, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(partial, target)
    return target


def _row(raw: bytes, line_no: int, name: str) -> tuple[str | None, bytes | None, str | None]:
    try:
        rec = decode(RECORDING, raw, "Recording")
    except BadLine as err:
        # The id, when the line has one, lets its supervisions say why they are refused.
        try:
            rec_id = json.loads(raw).get("id")
        except (ValueError, AttributeError):
            rec_id = None
        return (rec_id if isinstance(rec_id, str) else None), None, f"{name} line {line_no}: {err}"
    return rec.id, raw, None


def _insert(db: sqlite3.Connection, rows: list) -> None:
    # The first line of an id wins, as the first of two equal keys does in the plan.
    db.executemany("INSERT OR IGNORE INTO recordings VALUES (?, ?, ?)", [r for r in rows if r[0] is not None])
    rows.clear()


_CONNECTIONS: dict[tuple[int, int, str], sqlite3.Connection] = {}
_LOCK = threading.Lock()


def _connection(table: str) -> sqlite3.Connection:
    # One read-only connection per process and thread: sqlite connections cross neither.
    key = (os.getpid(), threading.get_ident(), table)
    db = _CONNECTIONS.get(key)
    if db is None:
        with _LOCK:
            db = _CONNECTIONS[key] = sqlite3.connect(f"{Path(table).as_uri()}?mode=ro", uri=True)
    return db


def lookup(table: str, recording_id: str) -> Recording:
    """The recording `recording_id`, or BadLine: missing from the manifest, or refused in it."""
    row = _connection(table).execute("SELECT line, problem FROM recordings WHERE id = ?", (recording_id,)).fetchone()
    if row is None:
        raise BadLine(f"recording {recording_id} is not in the recordings manifest", "missing_recording")
    line, problem = row
    if problem is not None:
        raise BadLine(f"recording {recording_id} is refused: {problem}")
    return RECORDING.decode(line)
