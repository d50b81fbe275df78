"""Evaluation sets from corpora of every source kind: the bundled lhotse sample (recordings +
supervisions, a stereo file, a multi-utterance recording, an mp3) and an Emilia look-alike (mp3
members of tars). The ground truth is the window the codec encoded (the file and channel the
manifest names), the references are the corpus's texts, held-out speakers are string ids."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from pipeline.dag import load_dag
from pipeline.encode.segment import segment_recording
from pipeline.evalsets.from_corpus import EvalSetError, build_from_corpus
from pipeline.evalsets.selection import Selection
from pipeline.executors.local import LocalExecutor
from pipeline.runner import run
from sample.emilia import write_emilia
from schemas.evalset import EvalSet
from tests.conftest import REPO
from tokens.audio import codec_input
from tokens.text import normalize_text

ALL = Selection(0.0, 20.0)
TEXT_REFERENCE = {"field": "text", "fallbacks": 0}
LSB = 1.5 / 32768  # the set's wavs are 16-bit


def expected_audio(cut: dict, read_bytes) -> np.ndarray:
    """What the run encoded for `cut` (its file, channel and window), decoded as the run does."""
    segments, rejects = segment_recording([cut], read_bytes, 0.0, 1e9)
    assert not rejects, rejects
    return codec_input(segments[0].audio, segments[0].rate, 24000)


def check_set(folder: Path, truth: dict[str, dict], read_bytes) -> EvalSet:
    """The set holds exactly `truth`'s cuts (id -> compact-cut-like dict with text and speaker):
    its text as the reference, its speaker, its audio, and a prompt of the same speaker."""
    s = EvalSet(folder)
    assert {u.id for u in s.utterances} == set(truth)
    assert s.reference == s.meta["source"]["reference"] == TEXT_REFERENCE
    for u in s.utterances:
        cut = truth[u.id]
        assert u.speaker == cut["speaker"] and u.text == u.reference == normalize_text(cut["text"])
        assert np.allclose(s.audio(u), expected_audio(cut, read_bytes), atol=LSB)
        if u.prompt_id is not None:
            assert s.by_id[u.prompt_id].speaker == u.speaker
    assert s.meta["speakers"] == len({c["speaker"] for c in truth.values()})
    return s


def lhotse_part(part: str) -> dict[str, dict]:
    """The bundled lhotse sample's supervisions of `part`, joined with their recordings by hand."""
    folder = REPO / "sample" / "lhotse" / "manifests"

    def lines(what):
        return [
            json.loads(line)
            for line in gzip.decompress((folder / f"lookalike_{what}_{part}.jsonl.gz").read_bytes()).splitlines()
        ]

    recordings = {r["id"]: r for r in lines("recordings")}
    cuts = {}
    for sup in lines("supervisions"):
        source = recordings[sup["recording_id"]]["sources"][0]
        cuts[sup["id"]] = {
            "id": sup["id"],
            "audio": str(REPO / "sample" / "lhotse" / source["source"]),
            "channel": source["channels"].index(sup["channel"]),
            "start": sup["start"],
            "duration": sup["duration"],
            "speaker": sup["speaker"],
            "text": sup["text"],
        }
    return cuts


@pytest.fixture(scope="module")
def lhotse_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("lhotse") / "out"
    # Parquet alone: a set reads all its metadata columns, not the trainer's three
    overrides = ["codec.weights=random", "output.formats=[parquet]", "plan.unit_hours=0.01"]
    dag = load_dag(REPO / "dags" / "sample-lhotse.yaml", overrides, out=str(out))
    run(dag, progress=False, executor=LocalExecutor(threads=2))
    return dag


def test_a_lhotse_corpus_makes_held_out_and_training_sets(lhotse_corpus, tmp_path):
    def read(path):
        return Path(path).read_bytes()

    summary = build_from_corpus(lhotse_corpus, "test", tmp_path / "test", ALL, progress=False)
    s = check_set(tmp_path / "test", lhotse_part("test"), read)
    assert summary == {"utterances": 3, "speakers": 1, "skipped": {}, "warning": None}
    # the corpus's text is supervision.text ("Saint Anne's"), not custom.orig_text ("St. Anne's")
    assert s.by_id["6829_0002"].reference == "Saint Anne's bells rang nine times."
    assert [s.by_id[f"6829_000{n}"].prompt_id for n in (1, 2, 3)] == ["6829_0003", "6829_0001", "6829_0002"]
    assert s.meta["source"] | {"corpus": None} == {
        "kind": "corpus", "corpus": None, "subset": "test", "reference": TEXT_REFERENCE,
        "trained_on": False, "training_speakers": 0,
    }  # fmt: skip
    # dev's speakers all speak in train: found by their (string) ids
    build_from_corpus(lhotse_corpus, "dev", tmp_path / "dev", ALL, progress=False)
    dev = EvalSet(tmp_path / "dev").meta["source"]
    assert dev["training_speakers"] == 3 and "(1580, 2961, 4446)" in dev["warning"]
    # train: the stereo file's channel 1, the three windows of one long recording, the mp3
    summary = build_from_corpus(lhotse_corpus, "train", tmp_path / "train", ALL, progress=False)
    train = lhotse_part("train")
    del train["1580_0004"]  # its file does not exist: a reject of the run, so in no set
    s = check_set(tmp_path / "train", train, read)
    assert {"2961_0003", "4446_0100_1", "1580_0003"} <= set(s.by_id) and s.meta["source"]["trained_on"] is True
    stereo = train["2961_0003"]
    wrong = expected_audio({**stereo, "channel": 0}, read)
    assert not np.allclose(s.audio(s.by_id["2961_0003"]), wrong, atol=100 * LSB)  # channel 0 is near silence


@pytest.fixture(scope="module")
def emilia_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("emilia")
    lookalike = write_emilia(root / "tars", tars=3)
    dag = {
        "name": "emilia-tiny",
        "source": {
            "kind": "emilia",
            "audio_dir": str(lookalike.folder),
            "archives": {"train": ["EN-B{000000..000001}.tar"], "dev": ["EN-B000002.tar"]},
        },
        "plan": {"unit_hours": 0.001},
        "segment": {"min_duration": 0.5, "max_duration": 20.0},
        "text": {"bpe": {"vocab_size": 40}},
        "filter": {"min_dnsmos": 3.0},
        "codec": {"weights": "random"},
        "output": {"dir": str(root / "out"), "formats": ["webdataset"], "target_shard_mb": 0.05},
    }
    (root / "emilia.yaml").write_text(yaml.safe_dump(dag))
    dag = load_dag(root / "emilia.yaml")
    run(dag, progress=False, executor=LocalExecutor(threads=2))
    return dag, lookalike


def test_an_emilia_corpus_makes_sets_from_its_tars(emilia_corpus, tmp_path):
    dag, lookalike = emilia_corpus

    def read(audio):  # <tar>/<member>, read with tarfile: not the store under test
        name, member = audio.split("/")
        with tarfile.open(lookalike.tars[name]) as tar:
            return tar.extractfile(member).read()

    def truth(tars):
        return {
            uid: {"id": uid, "audio": f"{t.tar}/{uid}.mp3", "channel": 0, "start": 0.0, **t.meta}
            for uid, t in lookalike.kept().items()
            if t.tar in tars
        }

    summary = build_from_corpus(dag, "dev", tmp_path / "dev", ALL, progress=False)
    dev = truth({"EN-B000002.tar"})
    s = check_set(tmp_path / "dev", dev, read)
    assert summary["utterances"] == len(dev) == 4 and summary["speakers"] == 2 and summary["warning"] is None
    assert s.meta["source"]["trained_on"] is False and s.meta["source"]["training_speakers"] == 0
    assert all(u.prompt_id is not None for u in s.utterances)  # two utterances a speaker
    build_from_corpus(dag, "train", tmp_path / "train", ALL, progress=False)
    check_set(tmp_path / "train", truth({"EN-B000000.tar", "EN-B000001.tar"}), read)
    assert EvalSet(tmp_path / "train").meta["source"]["trained_on"] is True
    # a tar the run read is gone: a clear error, nothing fetched
    (dag.out / "emilia" / "tars" / "EN-B000002.tar").rename(tmp_path / "away.tar")
    try:
        with pytest.raises(EvalSetError, match="EN-B000002.tar.*not there; run `valle-prep run`"):
            build_from_corpus(dag, "dev", tmp_path / "again", ALL, progress=False)
    finally:
        (tmp_path / "away.tar").rename(dag.out / "emilia" / "tars" / "EN-B000002.tar")


def test_the_mp3_window_is_read_as_the_run_decoded_it():
    """A window inside an mp3 (not at its start) is the same samples segment_recording cuts."""
    from pipeline.evalsets.from_corpus import window
    from sample.emilia import mp3_bytes, tone

    data = mp3_bytes(tone(2.0, seed=3))

    class Store:
        def read_bytes(self, audio):
            return data

    cut = {"id": "x", "audio": "x.mp3", "channel": 0, "start": 0.7, "duration": 0.9}
    got = window(Store(), cut, {"start": 0.7, "duration": 0.9}, 24000)
    assert np.array_equal(got, expected_audio(cut, lambda _: data))
    assert sf.info(io.BytesIO(data)).format == "MP3"  # not a format libsndfile seeks exactly
