"""lhotse Shar: deterministic bytes that lhotse's own reader loads (codes, text, tokens, speaker),
a corpus whose Shar output holds exactly what its Parquet output holds, and verify's findings."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest

import schemas
from pipeline.dag import load_dag
from pipeline.inspect.verify import verify
from pipeline.output.shards import write_unit_shards
from pipeline.runner import run
from schemas import lhotse_shar as shar
from tests.conftest import write_dag
from tests.test_shards import samples
from tests.test_unit_commit import unit_setup  # noqa: F401 (a fixture)

lhotse = pytest.importorskip("lhotse")

LONG_ID = "large/10036/" + "ünïcode_book_" * 12 + "/chapter 01_64kb_7"  # > 100 bytes: PAX headers


def shar_samples():
    items = samples()
    items[2].id, items[2].source_texts = LONG_ID, ["Book Text.", "BOOK TEXT"]
    return items


def commit(written, out):
    for tmp, record in written:
        os.replace(tmp, out / record.path)
    return [r for _, r in written]


def test_bytes_are_deterministic_and_lhotse_reads_every_field(tmp_path):
    a = commit(
        write_unit_shards(shar_samples(), tmp_path / "a", "small", "small-000003", ["lhotse_shar"], 4000)[0],
        tmp_path / "a",
    )
    b = commit(
        write_unit_shards(shar_samples(), tmp_path / "b", "small", "small-000003", ["lhotse_shar"], 4000)[0],
        tmp_path / "b",
    )
    assert [r.sha256 for r in a] == [r.sha256 for r in b] and len(a) > 2
    assert [(r.path, r.field) for r in a[:2]] == [
        ("lhotse_shar/small/small-000003/cuts.000000.jsonl.gz", "cuts"),
        ("lhotse_shar/small/small-000003/codes.000000.tar", "codes"),
    ]
    assert gzip.open(tmp_path / "a" / a[0].path).read()  # a plain gzip stream

    want = shar_samples()
    unit_dir = tmp_path / "a/lhotse_shar/small/small-000003"
    by_dir = list(lhotse.CutSet.from_shar(in_dir=unit_dir))
    by_fields = list(
        lhotse.CutSet.from_shar(
            fields={
                "cuts": [str(tmp_path / "a" / r.path) for r in a if r.field == "cuts"],
                "codes": [str(tmp_path / "a" / r.path) for r in a if r.field == "codes"],
            }
        )
    )
    for cuts in (by_dir, by_fields):
        assert [c.id for c in cuts] == [s.id for s in want]
        for cut, s in zip(cuts, want):
            codes = cut.load_codes()
            assert codes.dtype == np.uint16 and np.array_equal(codes.T, s.codes)
            sup = cut.supervisions[0]
            assert (sup.text, sup.speaker, sup.recording_id) == (s.text, s.speaker, s.recording_id)
            assert cut.text_tokens == s.text_tokens and cut.subset == s.subset
            assert cut.duration == s.codes.shape[1] / 75 and cut.audio_duration == s.duration
            assert cut.source_start == s.start and not cut.has_recording
    assert by_dir[2].supervisions[0].custom == {"texts": ["Book Text.", "BOOK TEXT"]}

    # lhotse's batching tools work on them: bucketing by duration, collation padding time (axis 0).
    from lhotse.dataset import DynamicBucketingSampler
    from lhotse.dataset.collation import collate_custom_field

    batches = list(DynamicBucketingSampler(lhotse.CutSet.from_shar(in_dir=unit_dir), max_duration=6, num_buckets=2))
    assert sorted(c.id for b in batches for c in b) == sorted(s.id for s in want)
    assert all(sum(c.duration for c in b) <= 6 for b in batches)
    batch, lens = collate_custom_field(lhotse.CutSet(by_dir[:3]), "codes", pad_value=0)
    assert batch.shape == (3, 225, 8) and lens.tolist() == [75, 150, 225]
    assert np.array_equal(batch[1, :150].numpy().T, want[1].codes)
    # ... and reading part of a cut's time range reads those frames.
    assert np.array_equal(by_dir[1].codes.load(start=1.0, duration=0.5).T, want[1].codes[:, 75:113])


def test_our_reader_pairs_files_as_lhotse_does(tmp_path):
    records = commit(write_unit_shards(shar_samples(), tmp_path, "small", "u", ["lhotse_shar"], 1e9)[0], tmp_path)
    cuts_raw, codes_raw = ((tmp_path / r.path).read_bytes() for r in records)
    rows = list(shar.read_shard(cuts_raw, codes_raw))
    for (meta, codes), s in zip(rows, shar_samples()):
        assert np.array_equal(codes, s.codes)
        schemas.validate("sample.v2", meta)
        assert {k: meta[k] for k in ("id", "text", "text_tokens", "duration", "start")} == {
            "id": s.id,
            "text": s.text,
            "text_tokens": s.text_tokens,
            "duration": s.duration,
            "start": s.start,
        }

    lines = gzip.decompress(cuts_raw).splitlines()
    swapped = gzip.compress(b"\n".join([lines[1], lines[0], *lines[2:]]))
    with pytest.raises(ValueError, match="but its codes are"):
        list(shar.read_shard(swapped, codes_raw))
    short = json.loads(lines[0])
    short["duration"] = 0.5
    with pytest.raises(ValueError, match="frames / 75"):
        list(shar.read_shard(gzip.compress(json.dumps(short).encode()), codes_raw))
    odd = io.BytesIO()
    with tarfile.open(fileobj=odd, mode="w") as tar:
        info = tarfile.TarInfo("a//b.npy")
        tar.addfile(info, io.BytesIO())
        tar.addfile(tarfile.TarInfo("a//b.json"), io.BytesIO())
    with pytest.raises(ValueError, match="would read the cut id back as 'a/b'"):
        list(shar.read_shard(gzip.compress(b'{"id": "a//b"}'), odd.getvalue()))


def index_fields(out, subset):
    """What a user passes to CutSet.from_shar for one subset of a corpus (README)."""
    index = json.loads((out / "index.json").read_text())
    files = [s for s in index["shards"] if s["format"] == "lhotse_shar" and s["subset"] == subset]
    return {field: [str(out / s["path"]) for s in files if s["field"] == field] for field in ("cuts", "codes")}


def test_a_corpus_in_shar_holds_what_its_parquet_holds(built_corpus):
    dag, summary = built_corpus
    out, index = dag.out, summary.index
    assert verify(out) == []
    for subset in index["subsets"]:
        cuts = list(lhotse.CutSet.from_shar(fields=index_fields(out, subset)))
        rows = [
            r
            for s in index["shards"]
            if s["format"] == "parquet" and s["subset"] == subset
            for r in pq.read_table(out / s["path"]).to_pylist()
        ]
        assert [c.id for c in cuts] == [r["id"] for r in rows] and len(cuts) == index["subsets"][subset]["samples"]
        for cut, row in zip(cuts, rows):
            codes = np.array(row["codes"], np.uint16)
            assert np.array_equal(cut.load_codes().T, codes)
            assert cut.supervisions[0].text == row["text"] and cut.text_tokens == row["text_tokens"]
            assert cut.supervisions[0].speaker == row["speaker"] and cut.audio_duration == row["duration"]


def test_shar_alone_is_a_complete_corpus(tmp_path, tiny_corpus, built_corpus):
    """formats: [lhotse_shar] only, re-written from the built corpus's committed codes: counted
    once per shard in the index and verified; dropping the format later leaves no Shar folder."""
    out = tmp_path / "out"  # where write_dag points output.dir
    shutil.copytree(built_corpus[0].out, out)
    dag = load_dag(write_dag(tmp_path / "tiny.yaml", tiny_corpus, output={"formats": ["lhotse_shar"]}))
    summary = run(dag, progress=False)
    assert summary.codec_forward_passes == 0 and summary.reshard == summary.units
    index = summary.index
    assert {s["format"] for s in index["shards"]} == {"lhotse_shar"}
    assert index["subsets"] == built_corpus[1].index["subsets"]
    assert verify(out) == []
    assert len(lhotse.CutSet.from_shar(fields=index_fields(out, "small"))) == index["subsets"]["small"]["samples"]

    run(load_dag(write_dag(tmp_path / "tiny.yaml", tiny_corpus, output={"formats": ["parquet"]})), progress=False)
    assert all(p.parent == out / "lhotse_shar" for p in (out / "lhotse_shar").rglob("*"))  # no unit folder


def test_verify_names_a_damaged_or_missing_codes_file(built_corpus, tmp_path):
    out = tmp_path / "corpus"
    shutil.copytree(built_corpus[0].out, out)
    index = json.loads((out / "index.json").read_text())
    codes = next(s for s in index["shards"] if s.get("field") == "codes")
    (out / codes["path"]).unlink()
    problems = verify(out)
    assert f"{codes['path']}: missing" in problems
    assert any(
        p.startswith(codes["path"].replace("codes.", "cuts.").replace(".tar", ".jsonl.gz") + ": unreadable")
        for p in problems
    )


def test_ids_lhotse_would_misread_are_counted_rejects_with_shar(tmp_path, unit_setup):
    from pipeline.encode.unit import _select
    from tests.test_unit_commit import make_job

    cuts = [
        {"id": i, "texts": ["Some words.", "SOME WORDS"], "recording_id": "r", "start": 0.0}
        for i in ("small/1/b.c d/ch 1_0", "a//b", "./c", "d\0e", LONG_ID)
    ]
    kept, rejects, *_ = _select(make_job(tmp_path, unit_setup, formats=["lhotse_shar"]), cuts)
    assert [c["id"] for c in kept] == ["small/1/b.c d/ch 1_0", LONG_ID]
    assert [(r["cut_id"], r["reason"]) for r in rejects] == [(i, "bad_cut_id") for i in ("a//b", "./c", "d\0e")]
    assert "read the cut id back as 'a/b'" in rejects[0]["detail"]
    kept, rejects, *_ = _select(make_job(tmp_path, unit_setup, formats=["parquet"]), cuts)
    assert len(kept) == len(cuts) and not rejects
