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
from pathlib import Path

import schemas
from pipeline import __version__
from pipeline.output import ledger
from pipeline.plan.subsets import SubsetPlan
from schemas.lengths import LengthsWriter
from storage.files import replacing, write_json_atomic
from storage.hashing import sha256_file

INDEX_NAME = "index.json"
REJECTS_NAME = "rejects.jsonl"
LENGTHS_NAME = "lengths.parquet"


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


def build_index(
    out: Path, plans: list[SubsetPlan], dag_name: str, dag_fingerprint: str, provenance: dict, codebooks: int
) -> dict:
    """Write rejects.jsonl, lengths.parquet and index.json (validated against the schema);
    returns the index. Memory is O(shards), not O(samples): the ledger entries are read one at
    a time, in plan order for the shards and the rejects (unreadable manifest lines of a subset
    first, then unit by unit), then by unit name for the lengths."""
    shards, subsets, names, by_reason, stacks = [], {}, None, Counter(), {}
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
                stack = (entry.get("codes") or {}).get("stack")  # None: encoded before stacks were recorded
                if stack:
                    stacks.setdefault(json.dumps(stack, sort_keys=True), {**stack, "units": 0})["units"] += 1
                for stage in ("shards", "codes"):
                    for r in (entry.get(stage) or {}).get("rejects", []):
                        rejects.write(_reject_line({"subset": plan.subset, "unit": unit.name, **r}, by_reason))
            subsets[plan.subset] = {"role": plan.role, "samples": samples, "hours": round(hours, 6)}

    # Shard ids are "{unit}-{k:03d}": units by name, then their rows by id, give the ids in order.
    units = sorted((u for plan in plans for u in plan.units), key=lambda u: u.name)
    with LengthsWriter(out / LENGTHS_NAME, names or set()) as writer:
        for _, entry in _entries(out, units):
            for row in sorted(entry["shards"]["lengths"], key=lambda r: r["shard"]):
                writer.add(row)
    codec_frame_rate = provenance["codec"]["frame_rate"]
    index = {
        "format": "valle-corpus-index",
        "version": schemas.INDEX_VERSION,
        "pipeline_version": __version__,
        "dag": {"name": dag_name, "fingerprint": dag_fingerprint},
        "provenance": {**provenance, "codec": {**provenance["codec"], "stacks": list(stacks.values())}},
        # The codes' frame rate is the codec's (provenance.codec, from tokens.codecs.SPECS).
        "codes": {"format": schemas.CODES_FORMAT, "codebooks": codebooks, "frame_rate": codec_frame_rate},
        "subsets": subsets,
        "shards": shards,
        "lengths": {
            "path": LENGTHS_NAME,
            "bytes": (out / LENGTHS_NAME).stat().st_size,
            "sha256": sha256_file(out / LENGTHS_NAME),
        },
        "rejects": {
            "path": REJECTS_NAME,
            "total": sum(by_reason.values()),
            "by_reason": dict(sorted(by_reason.items())),
        },
    }
    schemas.validate(f"index.v{schemas.INDEX_VERSION}", index, where=str(out / INDEX_NAME))
    write_json_atomic(out / INDEX_NAME, index)
    return index
