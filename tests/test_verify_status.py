"""`valle-prep verify` names every kind of damage; `status` reports progress from the ledger."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from pipeline.cli import main
from pipeline.inspect.status import corpus_status
from pipeline.inspect.verify import verify


@pytest.fixture(scope="module")
def corpus(built_corpus):
    return built_corpus[0].out


@pytest.fixture
def copy(corpus, tmp_path):
    target = tmp_path / "corpus"
    shutil.copytree(corpus, target)
    return target


def first_shard(out, fmt):
    index = json.loads((out / "index.json").read_text())
    return next(s for s in index["shards"] if s["format"] == fmt)


def test_cli_verify_and_status_on_a_good_corpus(corpus, capsys):
    assert main(["verify", str(corpus), "--jobs", "2"]) == 0
    assert capsys.readouterr().out.strip().endswith("OK")
    assert main(["status", str(corpus), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["complete"]
    assert all(r["codes_done"] == r["shards_done"] == r["units"] for r in status["subsets"].values())
    assert status["rejects"] == {
        "bad_manifest_line": 1,
        "empty_text": 1,
        "missing_audio": 1,
        "too_short": 1,
        "text_mismatch": 1,
    }
    assert main(["status", str(corpus)]) == 0
    assert "complete" in capsys.readouterr().out


def test_an_emilia_corpus_verifies_shows_its_status_and_reports(emilia_sample, tmp_path, capsys):
    """verify, status and report read a corpus of another source kind as any other; an Emilia
    recording is one utterance, no LibriLight chapter, so the report counts no books."""
    from tests.test_source_emilia import DEFECT_REJECTS

    out, lookalike = emilia_sample
    assert main(["verify", str(out)]) == 0
    assert capsys.readouterr().out.strip().endswith("OK")
    assert main(["status", str(out), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["complete"] and set(status["subsets"]) == {"train", "dev"}
    assert all(r["codes_done"] == r["shards_done"] == r["units"] for r in status["subsets"].values())
    assert status["rejects"] == DEFECT_REJECTS
    assert main(["report", str(out), "--to", str(tmp_path / "report"), "--no-progress"]) == 0
    report = json.loads((tmp_path / "report/report.json").read_text())
    speakers = {t.meta["speaker"] for t in lookalike.kept().values() if t.tar != "EN-B000002.tar"}
    assert report["speakers"]["per_subset"]["train"] == {"speakers": len(speakers), "books": None}
    assert report["speakers"]["leakage"]["dev"] == {"speakers": [], "books": None}
    assert " books" not in capsys.readouterr().out  # the summary counts speakers only
    assert "LibriLight book folder" not in (tmp_path / "report/index.html").read_text()


def test_flipped_byte_in_a_tar_is_named(copy, capsys):
    shard = first_shard(copy, "webdataset")
    path = copy / shard["path"]
    data = bytearray(path.read_bytes())
    data[700] ^= 0xFF  # inside the first member's payload
    path.write_bytes(bytes(data))
    assert main(["verify", str(copy)]) == 1
    assert f"{shard['path']}: sha256 differs from the index" in capsys.readouterr().out


def test_missing_parquet_and_edited_index_are_named(copy):
    shard = first_shard(copy, "parquet")
    (copy / shard["path"]).unlink()
    assert f"{shard['path']}: missing" in verify(copy)
    index = json.loads((copy / "index.json").read_text())
    index["shards"][0]["samples"] += 1
    (copy / "index.json").write_text(json.dumps(index))
    assert any("samples, index says" in p for p in verify(copy))


def _replace_shard(out, shard, data: bytes) -> None:
    """Write `data` as the shard, with its size and checksum 'fixed' in the index."""
    import hashlib

    (out / shard["path"]).write_bytes(data)
    index = json.loads((out / "index.json").read_text())
    for s in index["shards"]:
        if s["path"] == shard["path"]:
            s["bytes"], s["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (out / "index.json").write_text(json.dumps(index))


def test_sample_that_breaks_the_schema_is_named(copy):
    """A rewritten tar whose checksum was 'fixed' in the index still fails on content: the first
    sample's JSON has a field sample.v2 lacks, every other sample a code past the codebook."""
    import io
    import tarfile

    import numpy as np

    shard = first_shard(copy, "webdataset")
    with tarfile.open(copy / shard["path"]) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    first_key = members[0][0].name.partition(".")[0]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            if info.name == f"{first_key}.json":
                data = json.dumps({**json.loads(data), "codes_shape": [8, 1]}).encode()  # a v1 field
            elif info.name.endswith(".npy") and not info.name.startswith(first_key):
                codes = np.load(io.BytesIO(data), allow_pickle=False)
                codes[0, 0] = 1024
                out = io.BytesIO()
                np.save(out, codes)
                data = out.getvalue()
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    _replace_shard(copy, shard, buf.getvalue())
    problems = verify(copy)
    assert problems and all(shard["path"] in p for p in problems)
    assert sum("Additional properties are not allowed ('codes_shape'" in p for p in problems) == 1
    assert sum("values must lie in [0, 1024)" in p for p in problems) == shard["samples"] - 1


def test_parquet_codes_past_the_codebook_are_named(copy):
    import pyarrow as pa
    import pyarrow.parquet as pq

    import schemas

    shard = first_shard(copy, "parquet")
    table = pq.read_table(copy / shard["path"])
    codes = [c.tolist() for c in schemas.codes_from_arrow(table.column("codes"))]
    codes[0][-1][-1] = 4000
    table = table.set_column(
        table.schema.get_field_index("codes"), table.schema.field("codes"), pa.array(codes, schemas.codes_arrow_type())
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    _replace_shard(copy, shard, sink.getvalue().to_pybytes())
    problems = verify(copy)
    expected = (
        re.escape(f"{shard['path']}: unreadable: SchemaError: codes: values must lie in [0, 1024), got ")
        + r"\d+\.\.4000"
    )
    assert any(re.fullmatch(expected, p) for p in problems), problems


def test_incomplete_corpus(tmp_path, copy):
    (copy / "index.json").unlink()
    assert "missing (the run did not finish" in verify(copy)[0]
    assert not corpus_status(copy)["complete"]
    assert main(["status", str(tmp_path / "nothing")]) == 2


def test_lengths_file_matches_every_shard(corpus):
    import pyarrow.parquet as pq

    index = json.loads((corpus / "index.json").read_text())
    rows = {r["shard"]: r for r in pq.read_table(corpus / index["lengths"]["path"]).to_pylist()}
    for shard in index["shards"]:
        assert len(rows[shard["id"]]["frames"]) == shard["samples"]


@pytest.mark.parametrize("column", ["frames", "speaker"])
def test_edited_lengths_are_named(copy, column):
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    import schemas

    index = json.loads((copy / "index.json").read_text())
    path = copy / index["lengths"]["path"]
    rows = pq.read_table(path).to_pylist()
    rows[0][column][0] = rows[0][column][0] + 1 if column == "frames" else "somebody else"
    pq.write_table(pa.Table.from_pylist(rows, schema=schemas.arrow_schema("lengths.v1")), path)
    index["lengths"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    index["lengths"]["bytes"] = path.stat().st_size
    (copy / "index.json").write_text(json.dumps(index))
    problems = verify(copy)
    assert any(f"sample {column} differ from lengths.parquet row {rows[0]['shard']!r}" in p for p in problems), problems


def test_a_shard_whose_formats_disagree_is_named(copy):
    import pyarrow as pa
    import pyarrow.parquet as pq

    index = json.loads((copy / "index.json").read_text())
    first, other = [s for s in index["shards"] if s["format"] == "parquet"][:2]
    taken = pq.read_table(copy / other["path"], columns=["id"]).column("id")[0].as_py()
    table = pq.read_table(copy / first["path"])
    ids = table.column("id").to_pylist()
    table = table.set_column(
        table.schema.get_field_index("id"), table.schema.field("id"), pa.array([taken] + ids[1:], pa.string())
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    _replace_shard(copy, first, sink.getvalue().to_pybytes())
    formats = " and ".join(sorted({s["format"] for s in index["shards"]}))
    assert verify(copy) == [f"shard {first['id']!r}: its {formats} files hold different sample ids"]
    assert verify(copy, jobs=2) == verify(copy)  # processes check shards at once, findings in order


def test_an_id_in_two_shards_is_found_by_digest_and_named_from_the_shards(monkeypatch):
    """Shards agree across formats (checked above), so ids are checked in one format, as
    digests; only the shards whose digests meet are read again, to name the id."""
    import pipeline.inspect.verify
    from pipeline.inspect.verify import _SampleIds

    held = {"a": ["x", "y"], "b": ["z", "x"], "c": ["w"]}
    ids, read = _SampleIds(), []
    for name, shard_ids in held.items():
        ids.add({"id": name, "format": "webdataset"}, shard_ids)

    def read_ids(shard):
        read.append(shard["id"])
        return held[shard["id"]]

    assert ids.duplicates(read_ids) == ["webdataset: 1 duplicated sample ids, e.g. 'x'"]
    assert read == ["a", "b"]
    monkeypatch.setattr(pipeline.inspect.verify, "_digest", lambda sample_id: 7)
    del held["b"][1]
    every_digest_equal = _SampleIds()
    for name, shard_ids in held.items():
        every_digest_equal.add({"id": name, "format": "webdataset"}, shard_ids)
    assert every_digest_equal.duplicates(read_ids) == []


def test_ids_whose_digests_collide_are_not_duplicates(corpus, monkeypatch):
    import pipeline.inspect.verify

    monkeypatch.setattr(pipeline.inspect.verify, "_digest", lambda sample_id: 7)
    assert verify(corpus) == []


def test_a_corpus_over_http_verifies_and_a_damaged_file_there_is_named(corpus, tmp_path):
    """What an upload must be checked for: verify reads the corpus where the trainer will."""
    from sample.http_mirror import HttpMirror

    with HttpMirror(corpus) as mirror:
        assert verify(mirror.base_url) == []
    target = tmp_path / "corpus"
    shutil.copytree(corpus, target)
    shard = first_shard(target, "parquet")
    (target / shard["path"]).write_bytes((target / shard["path"]).read_bytes()[:-1])
    (target / "rejects.jsonl").unlink()
    with HttpMirror(target) as mirror:
        problems = verify(mirror.base_url)
    assert f"{shard['path']}: {shard['bytes'] - 1} bytes, index says {shard['bytes']}" in problems
    assert f"{mirror.base_url}/rejects.jsonl: missing" in problems
