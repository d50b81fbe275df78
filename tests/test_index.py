"""The index step streams ledger entries: lengths.parquet in shard order a row group at a time,
rejects.jsonl in plan order, and nothing left half-written when it stops."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from pipeline.output import ledger
from pipeline.output.index import build_index
from pipeline.plan.subsets import SubsetPlan, UnitPlan
from sample.corpora import PROVENANCE
from schemas.lengths import LENGTHS_ROW_GROUP, LengthsWriter


def commit_unit(out, subset: str, n: int, shards: int, old: bool = False) -> UnitPlan:
    name = f"{subset}-{n:06d}"
    lengths, files = [], []
    for k in reversed(range(shards)):  # a ledger's order is not the file's
        row = {"shard": f"{name}-{k:03d}", "frames": [100 + n, 200 + k], "text_tokens": [5, 6]}
        if not old:
            row |= {"speaker": ["s1", "s2"], "recording_id": ["r/a", "r/b"], "text_cer": [0.0, None]}
        lengths.append(row)
        files.append(
            {
                "id": row["shard"],
                "format": "webdataset",
                "path": f"webdataset/{subset}/{row['shard']}.tar",
                "subset": subset,
                "unit": name,
                "samples": 2,
                "hours": 0.001,
                "bytes": 10,
                "sha256": "1" * 64,
            }
        )
    rejects = [{"id": f"{name}/cut", "reason": "too_short"}]
    ledger.write_entry(
        out, name, {"shards": {"files": files, "lengths": lengths, "samples": 2 * shards, "rejects": rejects}}
    )
    return UnitPlan(name=name, subset=subset, recordings=1, cuts=2 * shards + 1, seconds=3.6, sha256="0" * 64)


def plan(subset: str, role: str, units: list[UnitPlan], rejects=()) -> SubsetPlan:
    return SubsetPlan(subset=subset, role=role, fingerprint="0" * 64, cuts_in=0, units=units, rejects=list(rejects))


def test_lengths_are_in_shard_order_in_row_groups_and_rejects_in_plan_order(tmp_path):
    # train is planned after test, but "small-" sorts after "dev-": the file is by shard id.
    test = plan(
        "test",
        "test",
        [commit_unit(tmp_path, "test", i, 3) for i in range(2)],
        rejects=[{"line": 7, "reason": "malformed_line"}],
    )
    train = plan("small", "train", [commit_unit(tmp_path, "small", i, 40) for i in (1, 0, 2)])
    index = build_index(tmp_path, [test, train], "t", "0" * 64, PROVENANCE, 8)

    lengths = pq.ParquetFile(tmp_path / "lengths.parquet")
    ids = lengths.read(columns=["shard"]).column("shard").to_pylist()
    assert ids == sorted(ids) and len(ids) == 2 * 3 + 3 * 40
    groups = [lengths.metadata.row_group(g).num_rows for g in range(lengths.num_row_groups)]
    assert groups == [LENGTHS_ROW_GROUP, len(ids) - LENGTHS_ROW_GROUP]
    assert sorted(ids) == sorted(s["id"] for s in index["shards"])
    assert set(lengths.schema_arrow.names) >= {"speaker", "recording_id", "text_cer"}

    rejects = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [r.get("unit") for r in rejects] == [
        None,
        "test-000000",
        "test-000001",
        "small-000001",
        "small-000000",
        "small-000002",
    ]
    assert index["rejects"] == {"path": "rejects.jsonl", "total": 6, "by_reason": {"malformed_line": 1, "too_short": 5}}
    assert index["subsets"]["small"] == {"role": "train", "samples": 240, "hours": 0.12}


def test_an_older_entry_without_the_optional_columns_leaves_them_out(tmp_path):
    units = [commit_unit(tmp_path, "small", 0, 2), commit_unit(tmp_path, "small", 1, 2, old=True)]
    build_index(tmp_path, [plan("small", "train", units)], "t", "0" * 64, PROVENANCE, 8)
    assert pq.ParquetFile(tmp_path / "lengths.parquet").schema_arrow.names == ["shard", "frames", "text_tokens"]


def test_a_unit_without_shards_stops_the_index_and_leaves_no_file(tmp_path):
    units = [
        commit_unit(tmp_path, "small", 0, 2),
        UnitPlan(name="small-000001", subset="small", recordings=1, cuts=1, seconds=1.0, sha256="0" * 64),
    ]
    with pytest.raises(RuntimeError, match="small-000001 has no committed shards"):
        build_index(tmp_path, [plan("small", "train", units)], "t", "0" * 64, PROVENANCE, 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger"]


def test_rows_out_of_order_are_a_bug_not_a_file(tmp_path):
    path = tmp_path / "lengths.parquet"
    with pytest.raises(RuntimeError, match="out of order"):
        with LengthsWriter(path, set()) as writer:
            writer.add({"shard": "b-000", "frames": [1], "text_tokens": [1]})
            writer.add({"shard": "a-000", "frames": [1], "text_tokens": [1]})
    assert list(tmp_path.iterdir()) == []
