"""The bundled lhotse sample (sample/lhotse/, dags/sample-lhotse.yaml as shipped) end to end: every
good supervision becomes one sample with what lhotse's own classes read from the manifests, the
bad path is the one counted reject, parts are subsets with roles by name, index.json names the
source and its manifests' digests; verify, status and report read it; a re-run does nothing;
--prune drops a part the DAG no longer has; valle-train trains on it."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from pipeline.cli import main
from pipeline.dag import load_dag
from pipeline.executors.local import LocalExecutor
from pipeline.inspect.verify import verify
from pipeline.output.lock import LOCK_NAME
from pipeline.runner import run
from storage.hashing import sha256_file
from tests.conftest import REPO

lhotse = pytest.importorskip("lhotse")

SAMPLE = REPO / "sample/lhotse"
PARTS = ("train", "dev", "test")


@pytest.fixture(scope="module")
def built(lhotse_sample):
    return lhotse_sample


@pytest.fixture(scope="module")
def truth() -> dict[str, dict]:
    """Supervision id -> what lhotse reads from the sample's manifests (its part, text, speaker,
    duration, and whether its audio file exists)."""
    found = {}
    manifests = SAMPLE / "manifests"
    for part in PARTS:
        recordings = lhotse.RecordingSet.from_file(manifests / f"lookalike_recordings_{part}.jsonl.gz")
        recordings = {r.id: r for r in recordings}  # lazy sets are not indexed by id
        for sup in lhotse.SupervisionSet.from_file(manifests / f"lookalike_supervisions_{part}.jsonl.gz"):
            source = recordings[sup.recording_id].sources[0].source
            found[sup.id] = {
                "subset": part,
                "text": sup.text,
                "speaker": sup.speaker,
                "duration": sup.duration,
                "recording_id": sup.recording_id,
                "exists": (SAMPLE / source).is_file(),
            }
    return found


def samples(out, index, fmt: str) -> dict[str, dict]:
    rows = {}
    for shard in index["shards"]:
        if shard["format"] != fmt:
            continue
        if fmt == "parquet":
            table = pq.read_table(out / shard["path"], columns=["id", "subset", "text", "speaker", "duration"])
            rows.update((row["id"], row) for row in table.to_pylist())
        else:
            for s in wds.WebDataset(str(out / shard["path"]), shardshuffle=False):
                meta = json.loads(s["json"])
                rows[meta["id"]] = meta
    return rows


def test_every_good_supervision_is_one_sample_as_lhotse_reads_it(built, truth):
    dag, summary = built
    good = {sid: t for sid, t in truth.items() if t["exists"]}
    assert len(good) == 16 and set(truth) - set(good) == {"1580_0004"}
    rows = samples(dag.out, summary.index, "parquet")
    assert set(rows) == set(good)
    assert set(samples(dag.out, summary.index, "webdataset")) == set(good)
    for sid, row in rows.items():
        t = good[sid]
        assert (row["subset"], row["text"], row["speaker"]) == (t["subset"], t["text"], t["speaker"]), sid
        assert row["duration"] == pytest.approx(t["duration"], abs=1e-3), sid
    assert sum(t["recording_id"] == "4446_0100" for t in good.values()) == 3


def test_the_bad_path_is_the_one_reject(built):
    dag, summary = built
    assert summary.index["rejects"]["by_reason"] == {"missing_audio": 1}
    [reject] = [json.loads(line) for line in (dag.out / "rejects.jsonl").read_text().splitlines()]
    assert (reject["cut_id"], reject["reason"]) == ("1580_0004", "missing_audio")


def test_parts_are_subsets_with_roles_and_provenance_names_every_manifest(built, truth):
    dag, summary = built
    index = summary.index
    counts = {part: sum(t["subset"] == part and t["exists"] for t in truth.values()) for part in PARTS}
    assert {name: (s["role"], s["samples"]) for name, s in index["subsets"].items()} == {
        "train": ("train", counts["train"]),
        "dev": ("dev", counts["dev"]),
        "test": ("test", counts["test"]),
    }
    manifests = sorted((SAMPLE / "manifests").glob("*.jsonl.gz"))
    assert len(manifests) == 6
    assert index["provenance"]["source"] == {"kind": "lhotse", "manifests": {p.name: sha256_file(p) for p in manifests}}
    assert index["provenance"]["codec"]["weights"] == "random"
    assert summary.encoded == summary.units >= 4  # tiny units: several per part


def test_verify_status_and_report_read_it(built, tmp_path, capsys):
    dag, summary = built
    assert verify(dag.out) == []
    assert main(["verify", str(dag.out)]) == 0
    assert main(["status", str(dag.out)]) == 0
    status = capsys.readouterr().out
    assert "complete" in status and all(part in status for part in PARTS)
    assert main(["report", str(dag.out), "--to", str(tmp_path / "report"), "--no-progress"]) == 0
    stats = json.loads((tmp_path / "report/report.json").read_text())
    per = stats["speakers"]["per_subset"]
    assert {s: p["speakers"] for s, p in per.items()} == {"train": 3, "dev": 3, "test": 1}
    # a lhotse recording is no LibriLight chapter: no "books", and no book leakage claimed
    assert all(p["books"] is None for p in per.values())
    assert stats["speakers"]["leakage"]["dev"] == {"speakers": ["1580", "2961", "4446"], "books": None}
    assert stats["speakers"]["leakage"]["test"] == {"speakers": [], "books": None}
    assert not any("books" in w for w in stats["warnings"])
    page = (tmp_path / "report/index.html").read_text()
    assert "LibriLight book folder" not in page and "test: no speaker also in training data" in page
    assert stats["rejects"]["by_reason"] == {"missing_audio": 1}


def corpus_files(out) -> dict:
    return {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and not p.name.startswith(LOCK_NAME)}


def test_a_rerun_does_nothing(built):
    dag, _ = built
    before = corpus_files(dag.out)
    again = run(dag, progress=False, executor=LocalExecutor(threads=2))
    assert (again.skipped, again.encoded, again.reshard) == (again.units, 0, 0)
    assert again.codec_forward_passes == 0 and corpus_files(dag.out) == before


def test_prune_removes_the_units_of_a_part_the_dag_dropped(built, tmp_path):
    dag, summary = built
    out = tmp_path / "out"
    shutil.copytree(dag.out, out)
    dev_units = {p.stem for p in (out / "ledger").glob("dev-*.json")}
    assert dev_units
    subsets = ["subsets.train=[train]", "subsets.dev=[]", "subsets.test=[test]", "codec.weights=random"]
    smaller = load_dag(REPO / "dags/sample-lhotse.yaml", subsets, out=str(out))
    kept = run(smaller, progress=False, executor=LocalExecutor(threads=2))
    assert set(kept.orphans) == dev_units and not kept.pruned
    assert (out / "ledger" / f"{min(dev_units)}.json").exists()
    pruned = run(smaller, progress=False, executor=LocalExecutor(threads=2), prune=True)
    assert pruned.pruned and set(pruned.orphans) == dev_units and pruned.encoded == 0
    assert not list((out / "ledger").glob("dev-*.json"))
    for folder in ("webdataset/dev", "parquet/dev", "lhotse_shar/dev", "work/codes"):  # the plan stays, as a cache
        assert not [p for p in (out / folder).rglob("*") if p.is_file() and "dev-" in p.name], folder
    assert set(pruned.index["subsets"]) == {"train", "test"}
    assert verify(out) == []
    again = run(smaller, progress=False, executor=LocalExecutor(threads=2))
    assert again.orphans == [] and again.encoded == 0


def test_valle_train_trains_on_it(built, tmp_path):
    from trainer.train import main as train_main

    dag, _ = built
    overrides = ["run.max_steps=2", "run.eval_every=2", "run.log_every=1", "run.checkpoint_every=2", "data.workers=0"]
    config = str(REPO / "trainer/configs/ar-tiny.yaml")
    assert train_main([config, "--data", str(dag.out), "--allow-random-codec", f"run.out={tmp_path}", *overrides]) == 0
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2]
    assert any("dev_loss" in r for r in log)  # the dev part is the dev set
    assert (tmp_path / "checkpoint-2.pt").is_file()
