"""The emilia source kind: Emilia-shaped tars (sample/emilia.py) served by a local HTTP server that
requires a bearer token, as the gated Hugging Face repository does; planned into units of whole
tars with counted rejects, built end to end with a random-init codec, resumed, and the token
written nowhere."""

from __future__ import annotations

import json
import tarfile
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest
import webdataset as wds
import yaml

from pipeline.dag import DagError, load_dag
from pipeline.executors.local import LocalExecutor
from pipeline.fetch import audio_store
from pipeline.fetch.audio_store import NamedTarStore
from pipeline.fetch.transfer_pools import ThreadTasks
from pipeline.plan.subsets import plan_subsets, read_unit_cuts
from pipeline.sources import emilia
from pipeline.sources.emilia import EmiliaLines, tar_lines
from sample.emilia import LOW_DNSMOS, write_emilia
from sample.http_mirror import HttpMirror
from storage.download import DownloadError
from storage.http import _SameHostAuth

REPO = Path(__file__).resolve().parents[1]
TOKEN = "hf_TestTokenDoNotLeak1234567890"
DEFECT_REJECTS = {"bad_manifest_line": 1, "low_dnsmos": 1, "missing_audio": 1, "missing_json": 1}


@pytest.fixture(scope="module")
def lookalike(tmp_path_factory):
    return write_emilia(tmp_path_factory.mktemp("emilia") / "site", tars=3)


@pytest.fixture
def site(lookalike):
    with HttpMirror(lookalike.folder, bearer=TOKEN) as mirror:
        yield mirror


def emilia_dag(folder: Path, source: dict, **sections) -> Path:
    dag = {
        "name": "emilia-tiny",
        "source": {
            "kind": "emilia",
            "archives": {"train": ["EN-B{000000..000001}.tar"], "dev": ["EN-B000002.tar"]},
            **source,
        },
        "plan": {"unit_hours": 0.0001},  # shorter than any utterance: only whole tars hold a unit together
        "segment": {"min_duration": 0.5, "max_duration": 20.0},
        "text": {"bpe": {"vocab_size": 40}},
        "filter": {"min_dnsmos": 3.0},
        "codec": {"weights": "random"},
        "output": {"dir": str(folder / "out"), "formats": ["webdataset", "parquet"], "target_shard_mb": 0.02},
        **sections,
    }
    path = folder / "emilia.yaml"
    path.write_text(yaml.safe_dump(dag, sort_keys=False))
    return path


def plan(dag):
    with emilia.open_source(dag, dag.out, False, ThreadTasks()) as source:
        return plan_subsets(source.manifests(), dag.subsets.roles(), dag.out, dag.plan.unit_hours, progress=False)


def files_holding(folder: Path, text: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


def test_plans_units_of_whole_tars_over_http_with_the_token(tmp_path, site, lookalike, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    dag = load_dag(emilia_dag(tmp_path, {"base_url": site.base_url}))
    assert dag.subsets.train == ["train"] and dag.subsets.dev == ["dev"]  # filled from source.archives
    plans = {p.subset: p for p in plan(dag)}
    assert {r.status for r in site.requests} <= {200, 206}  # the server refuses any request without the token
    rejects = defaultdict(int)
    for r in plans["train"].rejects:
        rejects[r["reason"]] += 1
    assert dict(rejects) == DEFECT_REJECTS
    low = next(r for r in plans["train"].rejects if r["reason"] == "low_dnsmos")
    assert lookalike.utterances[low["cut_id"]].meta["dnsmos"] == LOW_DNSMOS
    units_of_tar, planned = defaultdict(set), {}
    for p in plans.values():
        for unit in p.units:
            for cut in read_unit_cuts(tmp_path / "out", unit):
                units_of_tar[cut["group"]].add(unit.name)
                planned[cut["id"]] = cut
    assert {tar: len(units) for tar, units in units_of_tar.items()} == dict.fromkeys(lookalike.tars, 1)
    assert set(planned) == set(lookalike.kept())
    for uid, cut in planned.items():
        meta = lookalike.utterances[uid].meta
        assert cut["audio"] == f"{lookalike.utterances[uid].tar}/{uid}.mp3"
        assert (cut["speaker"], cut["texts"], cut["duration"]) == (
            meta["speaker"],
            {"text": meta["text"]},
            meta["duration"],
        )
    assert files_holding(tmp_path, TOKEN) == []


@pytest.mark.parametrize("token", [None, "hf_wrong"])
def test_a_refused_token_stops_saying_to_set_hf_token(tmp_path, site, monkeypatch, token):
    if token is None:
        monkeypatch.delenv("HF_TOKEN", raising=False)
    else:
        monkeypatch.setenv("HF_TOKEN", token)
    dag = load_dag(emilia_dag(tmp_path, {"base_url": site.base_url}))
    with pytest.raises(DownloadError) as err:
        plan(dag)
    message = str(err.value)
    assert "HTTP 401" in message and "HF_TOKEN" in message and "accept its terms" in message
    assert ("is not set" if token is None else "was refused") in message
    assert not (tmp_path / "out" / "plan" / "dev.json").exists()
    if token:
        assert files_holding(tmp_path, token) == []


def test_same_host_redirects_keep_the_token_others_drop_it():
    handler = _SameHostAuth()
    request = urllib.request.Request("https://huggingface.co/datasets/x/resolve/main/a.tar")
    request.add_unredirected_header("Authorization", "Bearer t")

    def follow(url):
        new = handler.redirect_request(request, None, 302, "Found", {}, url)
        return new.unredirected_hdrs.get("Authorization")

    assert follow("https://huggingface.co/api/resolve-cache/a.tar") == "Bearer t"
    assert follow("https://cas-bridge.xethub.hf.co/signed?x=1") is None


def test_same_host_redirect_downloads_with_the_token(tmp_path, site, lookalike, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    dag = load_dag(emilia_dag(tmp_path, {"base_url": site.base_url + "/redirect/"}))
    plans = plan(dag)
    assert sum(p.cuts_in for p in plans) == len(lookalike.utterances)
    assert any(r.path.startswith("/redirect/") for r in site.requests)


def test_min_dnsmos_null_keeps_the_low_scored_utterance(lookalike):
    lines = list(tar_lines(lookalike.tars["EN-B000000.tar"]))
    kept = {c["id"] for raw in lines for c in EmiliaLines(None)(raw) if isinstance(c, dict)}
    strict = {c["id"] for raw in lines for c in EmiliaLines(3.0)(raw) if isinstance(c, dict)}
    low = next(uid for uid, t in lookalike.utterances.items() if t.defect == "low_dnsmos")
    assert kept - strict == {low}


def test_audio_dir_reads_tars_in_place_writing_nothing_there(tmp_path, lookalike):
    before = sorted(p.name for p in lookalike.folder.iterdir())
    dag = load_dag(emilia_dag(tmp_path, {"audio_dir": str(lookalike.folder)}))
    plans = plan(dag)
    assert sum(len(p.units) for p in plans) == 3
    assert sorted(p.name for p in lookalike.folder.iterdir()) == before


def test_audio_dir_missing_a_tar_stops_before_anything(tmp_path, lookalike):
    dag = load_dag(emilia_dag(tmp_path, {"audio_dir": str(lookalike.folder)}))
    dag.source.archives["dev"].append("EN-B000009.tar")
    with pytest.raises(DagError, match="lacks 1 tar.*EN-B000009.tar"):
        plan(dag)


def test_named_tar_store_keeps_a_few_indexes(tmp_path, lookalike, monkeypatch):
    monkeypatch.setattr(audio_store, "MAX_TAR_INDEXES", 2)
    store = NamedTarStore(list(lookalike.tars.values()))
    for uid, truth in lookalike.kept().items():
        with tarfile.open(lookalike.tars[truth.tar]) as tar:
            assert store.read_bytes(f"{truth.tar}/{uid}.mp3") == tar.extractfile(f"{uid}.mp3").read()
    assert len(audio_store._TAR_INDEXES) <= 2
    with pytest.raises(audio_store.MissingAudio, match="no such member"):
        store.read_bytes("EN-B000000.tar/nothing.mp3")


def test_end_to_end_shards_match_the_json_and_a_rerun_does_nothing(tmp_path, site, lookalike, monkeypatch):
    from pipeline.runner import run

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    dag = load_dag(emilia_dag(tmp_path, {"base_url": site.base_url}))
    first = run(dag, progress=False, executor=LocalExecutor())
    out = tmp_path / "out"
    assert first.index["rejects"]["by_reason"] == DEFECT_REJECTS
    assert first.index["provenance"]["source"]["kind"] == "emilia"
    assert set(first.index["provenance"]["source"]["manifests"]) == {"emilia_train.jsonl", "emilia_dev.jsonl"}
    samples = {}
    for shard in first.index["shards"]:
        if shard["format"] == "webdataset":
            for s in wds.WebDataset(str(out / shard["path"]), shardshuffle=False):
                meta = json.loads(s["json"])
                samples[meta["id"]] = meta
    kept = lookalike.kept()
    assert set(samples) == set(kept)
    for uid, meta in samples.items():
        truth = kept[uid].meta
        assert (meta["text"], meta["speaker"]) == (truth["text"], truth["speaker"])
        assert meta["duration"] == pytest.approx(truth["duration"], abs=1e-3)
    assert files_holding(tmp_path, TOKEN) == []

    manifest = out / "emilia" / "emilia_train.jsonl"
    made = manifest.stat().st_mtime_ns
    index_bytes = (out / "index.json").read_bytes()
    again = run(dag, progress=False, executor=LocalExecutor())
    assert (again.skipped, again.encoded, again.reshard) == (again.units, 0, 0)
    assert manifest.stat().st_mtime_ns == made  # reused: the tars are the same
    assert (out / "index.json").read_bytes() == index_bytes


def test_libriheavy_fingerprint_is_unchanged_and_refuses_min_dnsmos():
    urls = ["source.manifest_base_url=https://example.org/m/", "source.audio_base_url=https://example.org/a/"]
    dag = load_dag(REPO / "dags" / "sample.yaml", urls)
    # Computed on the code before filter.min_dnsmos existed.
    assert dag.fingerprint() == "d38a12863dfee84dca84368db677a8213a0cb6a85f2c41bbc35244d4c39130a0"
    with pytest.raises(DagError, match="min_dnsmos: a libriheavy source has no DNSMOS"):
        load_dag(REPO / "dags" / "sample.yaml", [*urls, "filter.min_dnsmos=3.0"])


def test_emilia_dag_checks_its_archives(tmp_path):
    path = emilia_dag(tmp_path, {})
    with pytest.raises(DagError, match="EN-B000002.tar is in subsets train and dev"):
        load_dag(path, ['source.archives.train=["EN-B{000000..000002}.tar"]'])
    with pytest.raises(DagError, match="must be 'text'"):
        load_dag(path, ["text.field=book"])
    with pytest.raises(DagError, match="names subsets"):
        load_dag(path, ["subsets.train=[train, extra]"])
