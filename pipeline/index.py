"""Index: build `OUT/index.json` and `OUT/rejects.jsonl` from the plans and the ledger.

In: the subset plans, every unit's ledger entry, the provenance of the codes and tokens.
Out: the index (schemas/index.v2.json: every shard with format, path, samples, hours, bytes,
sha256; totals per subset; provenance) and one rejects line per dropped cut, both in plan order
and without timestamps, so an interrupted and resumed run writes the same bytes as a clean one.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from pipeline import __version__, ledger
from pipeline.fsutil import sha256_file, write_bytes_atomic, write_json_atomic
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
    (schemas/lengths.v1.json), atomically. The optional columns are written only when every
    row has them (ledger entries committed by an older version lack them)."""
    rows = sorted(rows, key=lambda r: r["shard"])
    names = set.intersection(*(set(r) for r in rows)) if rows else set()
    table = pa.Table.from_pylist(rows, schema=schemas.arrow_schema(f"lengths.v{schemas.LENGTHS_VERSION}", names))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=LENGTHS_ROW_GROUP)
    write_bytes_atomic(path, sink.getvalue().to_pybytes())


def collect_rejects(out: Path, plans: list[SubsetPlan]) -> list[dict]:
    """Every dropped cut: unreadable manifest lines first, then unit by unit."""
    rows = []
    for plan in plans:
        rows += plan.rejects
        for unit in plan.units:
            entry = ledger.read_entry(out, unit.name)
            for stage in ("shards", "codes"):
                for r in (entry.get(stage) or {}).get("rejects", []):
                    rows.append({"subset": plan.subset, "unit": unit.name, **r})
    return rows


def build_index(out: Path, plans: list[SubsetPlan], dag_name: str, dag_fingerprint: str,
                provenance: dict, codebooks: int) -> dict:
    """Write rejects.jsonl and index.json (validated against the schema); returns the index."""
    shards, subsets, lengths = [], {}, []
    for plan in plans:
        samples, hours = 0, 0.0
        for unit in plan.units:
            entry = ledger.read_entry(out, unit.name)
            if "shards" not in entry:
                raise RuntimeError(f"unit {unit.name} has no committed shards; run the DAG again")
            lengths += entry["shards"]["lengths"]
            for f in entry["shards"]["files"]:
                shards.append(f)
                # Count each shard once: in the first format, and for Shar by its cuts file.
                if f["format"] == entry["shards"]["files"][0]["format"] and f.get("field", "cuts") == "cuts":
                    samples += f["samples"]
                    hours += f["hours"]
        subsets[plan.subset] = {"role": plan.role, "samples": samples, "hours": round(hours, 6)}

    write_lengths(out / LENGTHS_NAME, lengths)
    rejects = collect_rejects(out, plans)
    write_bytes_atomic(out / REJECTS_NAME, "".join(
        json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rejects).encode())
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
        "rejects": {"path": REJECTS_NAME, "total": len(rejects),
                    "by_reason": dict(sorted(Counter(r["reason"] for r in rejects).items()))},
    }
    schemas.validate(f"index.v{schemas.INDEX_VERSION}", index, where=str(out / INDEX_NAME))
    write_json_atomic(out / INDEX_NAME, index)
    return index
