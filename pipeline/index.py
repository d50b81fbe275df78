"""Index: build `OUT/index.json`, `OUT/lengths.parquet` and `OUT/rejects.jsonl` from the plans
and the ledger.

In: the subset plans, every unit's ledger entry, the provenance of the codes and tokens.
Out: the index (schemas/index.v2.json: every shard with format, path, samples, hours, bytes,
sha256; totals per subset; provenance), every sample's lengths by shard id, and one rejects line
per dropped cut (in plan order), all without timestamps, so an interrupted and resumed run writes
the same bytes as a clean one. Memory is O(shards), never O(samples) (bench/bench_index.py).
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from pipeline import __version__, ledger
from pipeline.fsutil import replacing, sha256_file, write_json_atomic
from pipeline.plan import SubsetPlan
from tokens.constants import FRAME_RATE

INDEX_NAME = "index.json"
REJECTS_NAME = "rejects.jsonl"
LENGTHS_NAME = "lengths.parquet"
# Shards per row group of lengths.parquet: a reader that streams it (the report, listen) holds
# one row group decoded, ~64 x 5,000 samples, instead of the whole corpus's lengths.
LENGTHS_ROW_GROUP = 64


def write_lengths(path: Path, rows: list[dict]) -> None:
    """Every sample's frames, text tokens, speaker, recording and transcript CER by shard id
    (schemas/lengths.v1.json), atomically: `rows` in any order, one per shard."""
    rows = sorted(rows, key=lambda r: r["shard"])
    names = set.intersection(*(set(r) for r in rows)) if rows else set()
    with _LengthsWriter(path, names) as writer:
        for row in rows:
            writer.add(row)


class _LengthsWriter:
    """Streams shard rows, given in shard-id order, into lengths.parquet a row group at a time,
    so writing it holds one row group of Python objects, never the corpus's lengths. The optional
    columns are written only when `names` has them (ledger entries committed by an older version
    lack them). The file appears whole, at the end, or not at all."""

    def __init__(self, path: Path, names: set[str]):
        self.path, self.rows, self.last = path, [], None
        self.schema = schemas.arrow_schema(f"lengths.v{schemas.LENGTHS_VERSION}", names)

    def __enter__(self) -> "_LengthsWriter":
        self._stack = ExitStack()  # closed in reverse: the writer, then the file moved into place
        tmp = self._stack.enter_context(replacing(self.path))
        self.writer = self._stack.enter_context(pq.ParquetWriter(tmp, self.schema, compression="zstd"))
        return self

    def add(self, row: dict) -> None:
        if self.last is not None and row["shard"] <= self.last:
            raise RuntimeError(f"lengths rows out of order: {row['shard']!r} after {self.last!r}")
        self.last = row["shard"]
        self.rows.append(row)
        if len(self.rows) == LENGTHS_ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self._flush()
        self._stack.__exit__(*exc)


def _entries(out: Path, units: list) -> Iterator[tuple]:
    """(unit, its committed shards record) for each unit; a unit without one stops the index."""
    for unit in units:
        entry = ledger.read_entry(out, unit.name)
        if "shards" not in entry:
            raise RuntimeError(f"unit {unit.name} has no committed shards; run the DAG again")
        yield unit, entry


def _reject_line(row: dict, by_reason: Counter) -> str:
    by_reason[row["reason"]] += 1
    return json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n"


def build_index(out: Path, plans: list[SubsetPlan], dag_name: str, dag_fingerprint: str,
                provenance: dict, codebooks: int) -> dict:
    """Write rejects.jsonl, lengths.parquet and index.json (validated against the schema);
    returns the index. Memory is O(shards), not O(samples): the ledger entries are read one at
    a time, in plan order for the shards and the rejects (unreadable manifest lines of a subset
    first, then unit by unit), then by unit name for the lengths."""
    shards, subsets, names, by_reason = [], {}, None, Counter()
    with replacing(out / REJECTS_NAME) as tmp, open(tmp, "w", encoding="utf-8") as rejects:
        for plan in plans:
            samples, hours = 0, 0.0
            rejects.writelines(_reject_line(r, by_reason) for r in plan.rejects)
            for unit, entry in _entries(out, plan.units):
                for row in entry["shards"]["lengths"]:
                    names = set(row) if names is None else names & set(row)
                for f in entry["shards"]["files"]:
                    shards.append(f)
                    # Count each shard once: in the first format, and for Shar by its cuts file.
                    if f["format"] == entry["shards"]["files"][0]["format"] and f.get("field", "cuts") == "cuts":
                        samples += f["samples"]
                        hours += f["hours"]
                for stage in ("shards", "codes"):
                    for r in (entry.get(stage) or {}).get("rejects", []):
                        rejects.write(_reject_line({"subset": plan.subset, "unit": unit.name, **r}, by_reason))
            subsets[plan.subset] = {"role": plan.role, "samples": samples, "hours": round(hours, 6)}

    # Shard ids are "{unit}-{k:03d}": units by name, then their rows by id, give the ids in order.
    units = sorted((u for plan in plans for u in plan.units), key=lambda u: u.name)
    with _LengthsWriter(out / LENGTHS_NAME, names or set()) as writer:
        for _, entry in _entries(out, units):
            for row in sorted(entry["shards"]["lengths"], key=lambda r: r["shard"]):
                writer.add(row)
    index = {
        "format": "valle-corpus-index",
        "version": schemas.INDEX_VERSION,
        "pipeline_version": __version__,
        "dag": {"name": dag_name, "fingerprint": dag_fingerprint},
        "provenance": provenance,
        "codes": {"format": schemas.CODES_FORMAT, "codebooks": codebooks, "frame_rate": FRAME_RATE},
        "subsets": subsets,
        "shards": shards,
        "lengths": {"path": LENGTHS_NAME, "bytes": (out / LENGTHS_NAME).stat().st_size,
                    "sha256": sha256_file(out / LENGTHS_NAME)},
        "rejects": {"path": REJECTS_NAME, "total": sum(by_reason.values()),
                    "by_reason": dict(sorted(by_reason.items()))},
    }
    schemas.validate(f"index.v{schemas.INDEX_VERSION}", index, where=str(out / INDEX_NAME))
    write_json_atomic(out / INDEX_NAME, index)
    return index
