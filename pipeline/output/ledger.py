"""Ledger: one JSON entry per unit, written atomically and last, saying what is committed.

`OUT/ledger/<unit>.json` = {"unit", "subset", "codes": {...}, "shards": {...}}. A stage's files
count as done only when the entry names them with a fingerprint matching the current settings;
files without an entry are leftovers of an interrupted run and are removed before the unit is
redone. Entries are keyed by unit (a deterministic slice of the input), not by worker, so a run
resumes on any number of machines.
"""

from __future__ import annotations

from pathlib import Path

from storage.files import read_json, write_json_atomic


def entry_path(out: Path, unit: str) -> Path:
    return out / "ledger" / f"{unit}.json"


def read_entry(out: Path, unit: str) -> dict:
    """The unit's entry, or {} when there is none (an unreadable entry counts as none)."""
    return read_json(entry_path(out, unit)) or {}


def write_entry(out: Path, unit: str, entry: dict) -> None:
    write_json_atomic(entry_path(out, unit), entry)


def files_present(out: Path, files: list[dict]) -> bool:
    """Cheap check that committed files are still there with their recorded sizes."""
    for f in files:
        path = out / f["path"]
        if not path.is_file() or path.stat().st_size != f["bytes"]:
            return False
    return True
