"""End to end on Ray: the tiny corpus through download, plan, BPE, codec, shards and index;
then the re-run behaviours: nothing to do, BPE-only change, codec change."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from pipeline.dag import load_dag
from pipeline.inspect.verify import verify
from pipeline.output.lock import LOCK_NAME
from pipeline.runner import SettingsChanged, run
from tests.conftest import write_dag


@pytest.fixture(scope="module")
def built(built_corpus):
    return built_corpus


def test_full_run_writes_a_verified_corpus(built, tiny_corpus):
    dag, summary = built
    out = dag.out
    assert verify(out) == []
    index = summary.index
    clean = {cid for cid, t in tiny_corpus.cuts.items() if t.defect is None}
    # Every clean cut became exactly one sample, in each format.
    wds_ids = [
        json.loads(s["json"])["id"]
        for shard in index["shards"]
        if shard["format"] == "webdataset"
        for s in wds.WebDataset(str(out / shard["path"]), shardshuffle=False)
    ]
    pq_ids = [
        i
        for shard in index["shards"]
        if shard["format"] == "parquet"
        for i in pq.read_table(out / shard["path"]).column("id").to_pylist()
    ]
    assert sorted(wds_ids) == sorted(pq_ids)
    # The past-end cut is clamped, not dropped; every other defect is a counted reject.
    kept = clean | {cid for cid, t in tiny_corpus.cuts.items() if t.defect == "past_end"}
    assert sorted(wds_ids) == sorted(kept)
    assert index["rejects"]["by_reason"] == {
        "bad_manifest_line": 1,
        "empty_text": 1,
        "missing_audio": 1,
        "too_short": 1,
        "text_mismatch": 1,
    }
    assert summary.encoded == summary.units and summary.skipped == 0
    assert index["provenance"]["codec"]["weights"] == "random"
    assert set(index["subsets"]) == {"small", "dev"}


def test_plain_readers_decode_codes_and_durations(built, tiny_corpus):
    dag, summary = built
    shard = next(s for s in summary.index["shards"] if s["format"] == "webdataset")
    for sample in wds.WebDataset(str(dag.out / shard["path"]), shardshuffle=False).decode():
        meta, codes = sample["json"], sample["codes.npy"]
        assert codes.shape[0] == 8 and codes.max() < 1024
        truth = tiny_corpus.cuts[meta["id"]]
        assert meta["duration"] == pytest.approx(truth.available_samples / 16000, abs=1e-3)
        assert (
            codes.shape[1] == int(np.ceil(meta["duration"] * 24000 / 320))
            or abs(codes.shape[1] - meta["duration"] * 75) <= 1
        )
        assert meta["text"] == truth.text
    table = pq.read_table(dag.out / summary.index["shards"][1]["path"])
    row = table.slice(0, 1).to_pylist()[0]
    codes = np.array(row["codes"], dtype=np.uint16)
    assert codes.shape[0] == 8 and abs(codes.shape[1] - row["duration"] * 75) <= 1


def corpus_files(out) -> dict:
    """Every file but the downloads and the output lock's (which names the run holding it)."""
    return {
        p: p.read_bytes()
        for p in out.rglob("*")
        if p.is_file() and "downloads" not in p.parts and not p.name.startswith(LOCK_NAME)
    }


def test_rerun_does_no_work(built):
    dag, first = built
    before = corpus_files(dag.out)
    again = run(dag, progress=False)
    assert (again.skipped, again.encoded, again.reshard) == (again.units, 0, 0)
    assert again.codec_forward_passes == 0
    assert corpus_files(dag.out) == before


def test_bpe_change_retokenizes_without_encoding(tmp_path, tiny_corpus, ray_address):
    dag_path = write_dag(tmp_path / "tiny.yaml", tiny_corpus)
    first = run(load_dag(dag_path), progress=False)
    assert first.codec_forward_passes > 0
    codes_before = {p.name: p.read_bytes() for p in (tmp_path / "out/work/codes").iterdir()}

    changed = run(load_dag(dag_path, ["text.bpe.vocab_size=48"]), progress=False)
    assert changed.codec_forward_passes == 0
    assert (changed.encoded, changed.reshard) == (0, changed.units)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out/work/codes").iterdir()} == codes_before
    assert changed.index["provenance"]["bpe"]["vocab_size"] <= 48
    assert changed.index["provenance"]["bpe"]["sha256"] != first.index["provenance"]["bpe"]["sha256"]
    assert verify(tmp_path / "out") == []


def test_a_shared_bpe_model_is_used_as_is_so_corpora_can_be_mixed(tmp_path, built, tiny_corpus, monkeypatch):
    import pipeline.runner
    from pipeline.dag import DagError
    from trainer.corpus import check_compatible, open_corpus

    first_dag, first = built
    monkeypatch.setattr(pipeline.runner, "train_bpe", lambda *a: pytest.fail("a given model is never trained"))
    dag_path = write_dag(tmp_path / "tiny.yaml", tiny_corpus)
    shared = load_dag(dag_path, [f"text.bpe.model={first_dag.out}", "text.bpe.vocab_size=48"])
    second = run(shared, progress=False)
    bpe = second.index["provenance"]["bpe"]
    assert bpe == first.index["provenance"]["bpe"]  # sha256, vocab_size and model_type of the given model
    assert (tmp_path / "out/text/bpe.model").read_bytes() == (first_dag.out / "text/bpe.model").read_bytes()
    corpora = [open_corpus(str(o), allow_random_codec=True) for o in (first_dag.out, tmp_path / "out")]
    check_compatible(corpora)  # same codec, same BPE: one training set
    assert run(shared, progress=False).skipped == second.units  # nothing redone

    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(DagError, match="text.bpe.model: .*junk.model is not a SentencePiece model"):
        load_dag(dag_path, [f"text.bpe.model={tmp_path / 'junk.model'}"])
    with pytest.raises(DagError, match="text.bpe.model: .* is not a file"):
        load_dag(dag_path, [f"text.bpe.model={tmp_path / 'nowhere'}"])


def test_codec_change_is_refused_then_rebuilt(tmp_path, tiny_corpus, ray_address):
    dag_path = write_dag(tmp_path / "tiny.yaml", tiny_corpus, codec={"bandwidth": 6.0})
    run(load_dag(dag_path), progress=False)
    with pytest.raises(SettingsChanged, match=r"codec\.bandwidth: 6\.0 -> 3\.0"):
        run(load_dag(dag_path, ["codec.bandwidth=3.0"]), progress=False)
    rebuilt = run(load_dag(dag_path, ["codec.bandwidth=3.0"]), rebuild_audio=True, progress=False)
    assert rebuilt.encoded == rebuilt.units and rebuilt.codec_forward_passes > 0
    assert rebuilt.index["codes"]["codebooks"] == 4
    assert verify(tmp_path / "out") == []
    # No sample anywhere still carries 8-codebook codes.
    for shard in rebuilt.index["shards"]:
        if shard["format"] == "parquet":
            assert {len(c) for c in pq.read_table(tmp_path / "out" / shard["path"]).column("codes").to_pylist()} == {4}
