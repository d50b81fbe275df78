"""Schema v2 codes on a pipeline-built corpus: stock readers (the snippets of docs/formats.md, run as
written: webdataset, pyarrow, pandas, Hugging Face datasets) get (8, frames) arrays equal to what
the trainer reads; v1 corpora stay readable by the trainer and verify, and a re-run rewrites
them as v2 from their committed codes without encoding audio again."""

from __future__ import annotations

import json
import re
import shutil
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest

import schemas
from pipeline.dag import load_dag
from pipeline.inspect.verify import verify
from pipeline.runner import run
from sample.corpora import write_parquet_v1, write_webdataset_v1
from schemas.reading import read_shard
from schemas.sample import Sample
from storage.hashing import sha256_file
from tests.conftest import REPO, write_dag
from trainer.corpus import open_corpus


@pytest.fixture(scope="module")
def corpus(built_corpus):
    return built_corpus[0].out


def trainer_codes(location, fmt: str) -> dict[str, np.ndarray]:
    """{sample id: codes} as the trainer reads them, every subset."""
    c = open_corpus(str(location), roles=("train", "dev", "test"), fmt=fmt, allow_random_codec=True)
    return {meta["id"]: codes for shard in c.shards for _, meta, codes in read_shard(shard)}


def readme_snippets() -> list[str]:
    """The python blocks of docs/formats.md's 'Reading a corpus without this project' section."""
    text = (REPO / "docs" / "formats.md").read_text()
    section = text.split("## Reading a corpus without this project", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_snippets_run_and_give_what_the_trainer_reads(corpus, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sample").symlink_to(corpus)
    monkeypatch.chdir(tmp_path)
    snippets = readme_snippets()
    # WebDataset, pyarrow + pandas, Hugging Face datasets; then lhotse Shar (tests/test_shar.py)
    assert len(snippets) == 4
    want = trainer_codes(corpus, "webdataset")
    assert len(want) > 10

    scope: dict = {}
    exec(compile(snippets[0], "README.md (WebDataset)", "exec"), scope)
    assert scope["codes"].dtype == np.uint16 and scope["codes"].shape[0] == 8
    assert np.array_equal(scope["codes"], want[scope["meta"]["id"]])  # the last sample of the loop

    exec(compile(snippets[1], "README.md (pyarrow, pandas)", "exec"), scope)
    first = scope["table"].column("id")[0].as_py()
    assert np.array_equal(scope["codes"], want[first])
    assert np.array_equal(scope["codes_pd"], want[first])

    exec(compile(snippets[2], "README.md (datasets)", "exec"), scope)
    ds = scope["ds"]
    assert set(ds) == {"train", "dev"}
    assert ds["train"].num_rows + ds["dev"].num_rows == len(want)
    row = scope["row"]
    assert isinstance(row["codes"], np.ndarray) and row["codes"].shape == want[row["id"]].shape
    assert np.array_equal(row["codes"], want[row["id"]])
    for split in ds.values():  # every row, as an (8, frames) array
        for r in split:
            assert r["codes"].shape == want[r["id"]].shape and np.array_equal(r["codes"], want[r["id"]])


def test_datasets_features_are_the_schema_columns(corpus, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    index = json.loads((corpus / "index.json").read_text())
    files = [str(corpus / s["path"]) for s in index["shards"] if s["format"] == "parquet"]
    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path))
    features = ds.features
    assert list(features) == [c["name"] for c in schemas.load_schema("parquet.v2")["columns"]]
    assert features["codes"].feature.feature.dtype == "uint16"  # list of codebooks of frames
    assert features["text_tokens"].feature.dtype == "uint16"
    assert {features[k].dtype for k in ("id", "speaker", "subset", "text", "recording_id")} == {"string"}
    assert {features[k].dtype for k in ("duration", "start")} == {"float64"}
    row = ds[0]  # plain Python rows too
    assert len(row["codes"]) == 8 and len(row["codes"][0]) == pytest.approx(row["duration"] * 75, abs=1)
    assert row["text"] and row["text_tokens"] and row["speaker"]
    torch_row = ds.with_format("torch")[0]
    assert tuple(torch_row["codes"].shape) == (8, len(row["codes"][0]))


def downgrade_to_v1(out) -> None:
    """Rewrite a v2 corpus's shards and index as schema v1, as valle-corpus wrote them before."""
    index = json.loads((out / "index.json").read_text())
    fields = list(schemas.load_schema("sample.v2")["properties"])
    shutil.rmtree(out / "lhotse_shar", ignore_errors=True)  # v1 had no Shar output
    index["shards"] = [s for s in index["shards"] if s["format"] != "lhotse_shar"]
    for shard in index["shards"]:
        path = out / shard["path"]
        if shard["format"] == "parquet":
            table = pq.read_table(path)
            samples = [
                Sample(**{k: r[k] for k in fields}, codes=c)
                for r, c in zip(
                    table.drop_columns(["codes"]).to_pylist(), schemas.codes_from_arrow(table.column("codes"))
                )
            ]
            write_parquet_v1(samples, path)
        else:
            with tarfile.open(path) as tar:
                members = {m.name: tar.extractfile(m).read() for m in tar}
            keys = sorted({name.partition(".")[0] for name in members})
            samples = [
                Sample(**json.loads(members[f"{k}.json"]), codes=schemas.codes_from_npy(members[f"{k}.codes.npy"]))
                for k in keys
            ]
            write_webdataset_v1(samples, path, shard["unit"], 0)
        shard["bytes"] = path.stat().st_size
        shard["sha256"] = sha256_file(path)
    index["version"], index["codes"]["format"] = 1, schemas.CODES_FORMAT_V1
    index["provenance"].pop("filter", None)  # v1 indexes predate the transcript filter
    index["provenance"]["codec"].pop("stacks", None)  # and the compute stacks
    index["provenance"].pop("source", None)  # and source kinds
    (out / "index.json").write_text(json.dumps(index))


def test_v1_corpora_stay_readable_and_verifiable(corpus, tmp_path):
    copy = tmp_path / "v1"
    shutil.copytree(corpus, copy)
    downgrade_to_v1(copy)
    with tarfile.open(next((copy / "webdataset").rglob("*.tar"))) as tar:
        assert {m.name.partition(".")[2] for m in tar} == {"json", "codes"}  # really v1
    assert pq.read_schema(next((copy / "parquet").rglob("*.parquet"))).field("codes").type == "binary"
    assert verify(copy) == []
    for fmt in ("webdataset", "parquet"):
        got, want = trainer_codes(copy, fmt), trainer_codes(corpus, fmt)
        assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)


def test_a_v1_corpus_is_rewritten_as_v2_without_encoding(corpus, tmp_path, tiny_corpus, ray_address):
    """A v1 corpus's ledger holds shards fingerprints of layout 3; any mismatch re-writes the
    shards from the committed codes (tested here by marking them stale, as the bump does)."""
    out = tmp_path / "out"
    shutil.copytree(corpus, out)
    downgrade_to_v1(out)
    for entry_path in (out / "ledger").glob("*.json"):
        entry = json.loads(entry_path.read_text())
        entry["shards"]["fingerprint"] = "written by layout 3"
        entry_path.write_text(json.dumps(entry))
    codes_before = {p.name: p.read_bytes() for p in (out / "work" / "codes").iterdir()}
    summary = run(load_dag(write_dag(tmp_path / "tiny.yaml", tiny_corpus)), progress=False)
    assert (summary.reshard, summary.encoded, summary.codec_forward_passes) == (summary.units, 0, 0)
    assert summary.index["version"] == 2 and summary.index["codes"]["format"] == "uint16"
    assert verify(out) == []
    assert {p.name: p.read_bytes() for p in (out / "work" / "codes").iterdir()} == codes_before
    assert [(s["path"], s["sha256"]) for s in summary.index["shards"]] == [
        (s["path"], s["sha256"]) for s in json.loads((corpus / "index.json").read_text())["shards"]
    ]


def test_an_index_from_a_newer_version_is_refused_by_name(corpus, tmp_path):
    from trainer.corpus import CorpusError

    copy = tmp_path / "v9"
    shutil.copytree(corpus, copy)
    index = json.loads((copy / "index.json").read_text())
    index["version"] = 9
    (copy / "index.json").write_text(json.dumps(index))
    with pytest.raises(CorpusError, match="index version 9; this valle-corpus reads versions"):
        open_corpus(str(copy), allow_random_codec=True)
    assert "index version 9" in verify(copy)[0]
