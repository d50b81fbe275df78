"""Shards: deterministic bytes, safe keys, readable by plain webdataset and pyarrow."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import webdataset as wds

import schemas
from pipeline.output.shards import split_by_size, write_parquet, write_unit_shards
from sample.corpora import pack_codes
from schemas.sample import Sample
from tests.test_unit_commit import encoder, unit_setup  # noqa: F401 (fixtures)


def samples(n=5, seed=0):
    rng = np.random.default_rng(seed)
    ids = ["small/1/b.c d/ch 1_0", "small/1/b.c d/ch 1_1.wav", "small/1/x/y_2", "a", "z.z.z"]
    return [
        Sample(
            id=ids[i % len(ids)] + ("" if i < len(ids) else f"#{i}"),
            speaker="1",
            subset="small",
            duration=1.0 + i,
            text=f"Text “{i}”, ok.",
            text_tokens=[1, 2, 3 + i],
            codes=rng.integers(0, 1024, (8, 75 + 75 * i)).astype(np.uint16),
            recording_id="small/1/b.c d/ch 1",
            start=float(i),
        )
        for i in range(n)
    ]


def test_bytes_are_deterministic_and_readers_need_no_project_code(tmp_path):
    a, lengths = write_unit_shards(samples(), tmp_path / "a", "small", "small-000003", ["webdataset", "parquet"], 4000)
    b, _ = write_unit_shards(samples(), tmp_path / "b", "small", "small-000003", ["webdataset", "parquet"], 4000)
    assert [r.id for _, r in a][:2] == ["small-000003-000"] * 2
    assert [f for row in lengths for f in row["frames"]] == [s.codes.shape[1] for s in samples()]
    assert [n for row in lengths for n in row["text_tokens"]] == [3] * 5
    assert [r.sha256 for _, r in a] == [r.sha256 for _, r in b]
    assert len(a) > 2  # split by target size, shard k in both formats
    assert {r.path for _, r in a} >= {"webdataset/small/small-000003-000.tar", "parquet/small/small-000003-000.parquet"}

    got = []
    for tmp, rec in a:
        if rec.format == "webdataset":
            for s in wds.WebDataset(str(tmp), shardshuffle=False).decode():  # stock decoders only
                assert "." not in s["__key__"] and "/" not in s["__key__"]
                assert s["codes.npy"].dtype == np.uint16
                got.append((s["json"]["id"], s["codes.npy"]))
                schemas.validate("sample.v2", s["json"])
    want = samples()
    assert [g[0] for g in got] == [s.id for s in want]
    assert all(np.array_equal(g[1], s.codes) for g, s in zip(got, want))

    rows = [r for tmp, rec in a if rec.format == "parquet" for r in pq.read_table(tmp).to_pylist()]
    assert [r["id"] for r in rows] == [s.id for s in want]
    assert rows[1]["text_tokens"] == [1, 2, 4]
    assert all(np.array_equal(np.array(r["codes"], dtype=np.uint16), s.codes) for r, s in zip(rows, want))
    assert pq.read_schema(a[1][0]).equals(schemas.arrow_schema(), check_metadata=False)


def test_split_keeps_order_and_everything():
    groups = split_by_size(samples(9), 5000)
    assert [s.id for g in groups for s in g] == [s.id for s in samples(9)]
    assert all(groups)


def test_v1_packing_takes_10_bits_and_round_trips():
    s = samples(1)[0]
    packed = pack_codes(s.codes)
    assert len(packed) == s.codes.shape[1] * 10  # 750 B per second at 75 Hz
    assert np.array_equal(schemas.unpack_codes(packed, *s.codes.shape), s.codes)


def test_parquet_codes_take_at_most_10_bits_each(tmp_path):
    """Uniformly random codes (every one of the 1,024 values, the worst case for compression):
    the dictionary-encoded column stays under 800 B per audio second (1,200 as plain uint16)."""
    rng = np.random.default_rng(1)
    many = [
        Sample(
            id=str(i),
            speaker="1",
            subset="small",
            duration=n / 75,
            text="t",
            text_tokens=[1],
            codes=rng.integers(0, 1024, (8, n)).astype(np.uint16),
            recording_id="r",
            start=0.0,
        )
        for i, n in enumerate(rng.integers(75, 1500, 300).tolist())
    ]
    write_parquet(many, tmp_path / "x.parquet")
    meta = pq.ParquetFile(tmp_path / "x.parquet").metadata
    codes_bytes = sum(
        meta.row_group(g).column(c).total_compressed_size
        for g in range(meta.num_row_groups)
        for c in range(meta.num_columns)
        if meta.row_group(g).column(c).path_in_schema.startswith("codes.")
    )
    assert codes_bytes / sum(s.duration for s in many) < 800


def test_parquet_row_groups_bound_what_a_reader_holds(tmp_path, monkeypatch):
    import schemas.parquet

    monkeypatch.setattr(schemas.parquet, "PARQUET_ROW_GROUP", 2)
    write_parquet(samples(5), tmp_path / "x.parquet")
    file = pq.ParquetFile(tmp_path / "x.parquet")
    assert [file.metadata.row_group(g).num_rows for g in range(file.num_row_groups)] == [2, 2, 1]
    codes = schemas.codes_from_arrow(file.read().column("codes"))
    assert all(np.array_equal(c, s.codes) for c, s in zip(codes, samples(5)))


def test_bad_codes_are_refused_by_name():
    import pytest

    with pytest.raises(schemas.SchemaError, match="values must lie in"):
        schemas.codes_to_npy(np.full((8, 3), 1024))
    with pytest.raises(schemas.SchemaError, match="2-D"):
        schemas.codes_to_arrow([np.zeros(3, np.uint16)])
    with pytest.raises(schemas.SchemaError, match="expected uint16"):
        schemas.codes_from_npy(schemas.codes_to_npy(np.zeros((8, 3), np.uint16)).replace(b"<u2", b"<i2"))
    with pytest.raises(schemas.SchemaError, match="not a readable .npy"):
        schemas.codes_from_npy(b"not an array")
    with pytest.raises(schemas.SchemaError, match="codebooks of different lengths"):
        import pyarrow as pa

        schemas.codes_from_arrow(pa.array([[[1, 2], [3]]], schemas.codes_arrow_type()))


def _record_fsyncs_and_renames(monkeypatch) -> list[tuple]:
    """Events ("fsync", path, size) and ("replace", src) in order, from the real calls."""
    import os

    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        events.append(("fsync", path, os.fstat(fd).st_size))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def test_every_shard_is_fsynced_whole_before_it_is_returned(tmp_path, monkeypatch):
    events = _record_fsyncs_and_renames(monkeypatch)
    written, _ = write_unit_shards(samples(9), tmp_path, "small", "small-000003", ["webdataset", "parquet"], 4000)
    synced = {(path, size) for kind, path, size in (e for e in events if e[0] == "fsync")}
    assert len(written) > 2
    for tmp, record in written:
        assert (str(tmp), record.bytes) in synced  # its final size: nothing written after


def test_a_unit_renames_no_shard_before_it_is_on_disk(tmp_path, unit_setup, encoder, monkeypatch):
    from pipeline.encode.unit import run_unit
    from tests.test_unit_commit import fresh_out, local_encode, make_job

    out = fresh_out(tmp_path, "out", unit_setup)
    events = _record_fsyncs_and_renames(monkeypatch)
    run_unit(make_job(out, unit_setup), local_encode(encoder))
    renamed = [
        (i, e[1]) for i, e in enumerate(events) if e[0] == "replace" and ("/parquet/" in e[1] or "/webdataset/" in e[1])
    ]
    assert len(renamed) >= 2
    for i, src in renamed:
        assert any(e[0] == "fsync" and e[1] == src for e in events[:i]), src
