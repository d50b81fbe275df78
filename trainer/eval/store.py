"""valle-eval's durable record of finished trials, OUT/rows.jsonl, so that a run survives a crash.

The file's first line says what the run is (set, checkpoints, settings, back-ends, decoder, device
kind: `identity`, written atomically before any trial); each further line is one finished trial,
{"run": r, "task": t, "row": {...}}, appended, flushed and fsynced as soon as it is made (its page
audio saved before). The same command again keeps the rows already made and makes the rest; a
kill can only tear the last line, which is dropped. Another run's file is refused, never mixed in:
`restart` starts over. Trials a back-end failed on are not stored: the next run tries them again.
"""

from __future__ import annotations

import json
from pathlib import Path

from storage.files import append_durably, finished_lines, write_bytes_atomic

ROWS_FILE = "rows.jsonl"
FORMAT = 1


class OtherRun(ValueError):
    """OUT holds the rows of a run with other inputs or settings."""


class RowStore:
    """Finished rows by (run, task, utterance id); in memory only when `path` is None."""

    def __init__(self, path: Path | None, identity: dict, restart: bool = False):
        self.path = path
        self.identity = json.loads(json.dumps(identity))  # as it reads back (tuples become lists)
        self.rows: dict[tuple[int, str, str], dict] = {}
        if path is None:
            return
        if restart:
            path.unlink(missing_ok=True)
        lines = finished_lines(path) if path.exists() else []
        if not lines:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(path, _line({"valle_eval_rows": FORMAT, "identity": self.identity}))
            return
        head, *rows = (_parse(path, n, line) for n, line in enumerate(lines, 1))
        if head.get("identity") != self.identity:
            differ = ", ".join(_differences(head.get("identity"), self.identity)[:4])
            raise OtherRun(
                f"{path} holds the rows of another run ({differ} differ); "
                "use another --out, or pass --restart to start over"
            )
        for line in rows:
            self.rows[(line["run"], line["task"], line["row"]["id"])] = line["row"]

    def get(self, run: int, task: str, id: str) -> dict | None:
        return self.rows.get((run, task, id))

    def add(self, run: int, task: str, row: dict) -> None:
        """Keep a finished row; on disk before this returns."""
        if self.path is not None:
            append_durably(self.path, _line({"run": run, "task": task, "row": row}))
        self.rows[(run, task, row["id"])] = row


def _line(obj: dict) -> bytes:
    return (json.dumps(obj, sort_keys=True) + "\n").encode("utf-8")  # ASCII escapes: one line, always


def _parse(path: Path, n: int, line: bytes) -> dict:
    try:
        obj = json.loads(line)
        ours = "identity" in obj if n == 1 else isinstance(obj["run"], int) and "id" in obj["row"]
        if ours:
            return obj
    except (ValueError, KeyError, TypeError):
        pass
    raise OtherRun(f"{path}:{n} is not a line valle-eval writes; use another --out, or pass --restart to start over")


def _differences(old, new, where: str = "") -> list[str]:
    """Dotted names of what differs between two identities."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in _differences(old.get(k), new.get(k), f"{where}.{k}" if where else k)]
    return [] if old == new else [where or "everything"]
