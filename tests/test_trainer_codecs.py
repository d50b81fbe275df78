"""The trainer, valle-synth and valle-eval follow the corpus's codec: on the bundled sample coded by
Mimi (random weights, built once here) the tiny AR and NAR learn as they do on EnCodec, their
checkpoints record Mimi's 2,048 codes at 12.5 frames/s, and valle-synth decodes with Mimi (1,920
samples a frame at 24 kHz). Corpora, evaluation sets and checkpoints of two codecs are refused
together with one error naming both; a model config saved before codecs were recorded is EnCodec's."""

from __future__ import annotations

import re

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.conftest import REPO
from tests.test_train import majority_share
from trainer.config import load_config
from trainer.corpus import CorpusError, open_corpus
from trainer.models import ARModel, NARModel, tiny
from trainer.sampling import LengthGuard
from trainer.synth import load_checkpoint
from trainer.synth import main as synth_main
from trainer.train import build_model, train
from trainer.train import main as train_main

pytestmark = pytest.mark.slow

MIMI_HOP = 1920  # 24,000 Hz / 12.5 frames/s


@pytest.fixture(scope="module")
def mimi_sample(codec_samples):
    """dags/sample.yaml coded by Mimi (random-init weights): its folder."""
    return str(codec_samples[0]["mimi"])


@pytest.fixture(scope="module")
def mimi_trained(mimi_sample, tmp_path_factory):
    """{kind: (last log record, its checkpoint)}: the tiny AR and NAR trained on the Mimi sample."""
    root, done = tmp_path_factory.mktemp("mimi-runs"), {}
    for kind, steps, budget in (("ar", 200, 1500), ("nar", 100, 1000)):  # small batches learn fastest here
        out = root / kind
        cfg = load_config(
            REPO / f"trainer/configs/{kind}-tiny.yaml",
            [f"run.out={out}", f"run.max_steps={steps}", f"run.checkpoint_every={steps}", "run.eval_every=1000"]
            + ["run.log_every=50", f"data.max_frames={budget}", "data.workers=0"],
        )
        done[kind] = (train(cfg, [mimi_sample], allow_random_codec=True), out / f"checkpoint-{steps}.pt")
    return done


@pytest.mark.parametrize("kind", ["ar", "nar"])
def test_tiny_models_learn_mimi_codes_and_record_the_codec(mimi_sample, mimi_trained, kind):
    last, checkpoint = mimi_trained[kind]
    baseline = majority_share(mimi_sample, range(1) if kind == "ar" else range(1, 8))
    assert last["accuracy"] >= max(last["majority"], baseline) + 0.15, (last, baseline)
    config = torch.load(checkpoint, map_location="cpu", weights_only=True)["model_config"]
    assert config["codebook_size"] == 2048 and config["frame_rate"] == 12.5
    assert config["max_audio_frames"] == 500  # 40 s at 12.5 frames/s
    assert torch.load(checkpoint, weights_only=True)["provenance"]["codec"]["model"] == "mimi"


def synth(mimi_sample, mimi_trained, out, *extra: str) -> int:
    prompt = out.parent / "prompt.wav"
    t = np.arange(int(2.0 * 16000)) / 16000  # 2 s at 16 kHz: resampled to 24 kHz, 25 Mimi frames
    sf.write(prompt, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    return synth_main(
        [
            *["--ar", str(mimi_trained["ar"][1]), "--nar", str(mimi_trained["nar"][1]), "--data", mimi_sample],
            *["--text", "the quick brown fox", "--prompt-audio", str(prompt), "--prompt-text", "a prompt"],
            *["--out", str(out), "--codec-weights", "random", "--max-seconds", "3", "--seed", "0", *extra],
        ]
    )


def test_synth_decodes_with_mimi(mimi_sample, mimi_trained, tmp_path, capsys):
    assert synth(mimi_sample, mimi_trained, tmp_path / "a.wav") == 0
    said = capsys.readouterr().out
    frames = int(re.search(r"(\d+) frames", said).group(1))
    assert 1 <= frames <= 38 and "at 24000 Hz" in said  # --max-seconds 3 at 12.5 frames/s
    wave, rate = sf.read(tmp_path / "a.wav", dtype="float32", always_2d=True)
    assert rate == 24000 and wave.shape == (frames * MIMI_HOP, 1)
    assert np.isfinite(wave).all() and np.abs(wave).max() > 0


def test_corpora_of_two_codecs_are_refused_together(mimi_sample, built_corpus, tmp_path, capsys):
    encodec = str(built_corpus[0].out)
    config = str(REPO / "trainer/configs/ar-tiny.yaml")
    argv = [config, "--data", encodec, "--data", mimi_sample, "--allow-random-codec", f"run.out={tmp_path}"]
    assert train_main(argv) == 2
    err = capsys.readouterr().err
    assert f"corpora of two codecs: {encodec} is encodec_24khz, {mimi_sample} is mimi" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "log.jsonl").exists()


def test_a_mimi_checkpoint_refuses_encodec_codes(mimi_sample, mimi_trained, built_corpus, tmp_path, capsys):
    """valle-synth with an EnCodec corpus, valle-eval with an EnCodec evaluation set: one error each,
    naming both codecs, before any codec or scorer loads."""
    from pipeline.evalsets.from_corpus import build_from_corpus
    from pipeline.evalsets.selection import Selection
    from trainer.eval.cli import main as eval_main

    encodec = str(built_corpus[0].out)
    assert synth(encodec, mimi_trained, tmp_path / "x.wav") == 2
    err = capsys.readouterr().err
    assert f"two codecs: the checkpoints' corpus is mimi, {encodec} is encodec_24khz" in err, err
    assert not (tmp_path / "x.wav").exists()

    evalset = tmp_path / "set"
    build_from_corpus(built_corpus[0], "small", evalset, Selection(0.0, 20.0), progress=False)
    ar, nar = (str(mimi_trained[k][1]) for k in ("ar", "nar"))
    argv = ["--ar", ar, "--nar", nar, "--set", str(evalset), "--out", str(tmp_path / "eval")]
    assert eval_main(argv + ["--codec-weights", "random", "--no-dnsmos", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"two codecs: the checkpoints' corpus is mimi, {evalset} is encodec_24khz" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "eval").exists()


def test_model_sizes_come_from_the_corpus_codec(mimi_sample):
    corpus = open_corpus(mimi_sample, allow_random_codec=True)
    cfg = load_config(REPO / "trainer/configs/nar-tiny.yaml", [])
    model = build_model(cfg, corpus.vocab_size, corpus.codebooks, corpus.codec)
    assert (model.cfg.codebook_size, model.cfg.frame_rate, model.cfg.max_audio_frames) == (2048, 12.5, 500)
    assert model.audio_emb[0].num_embeddings == 2048 and model.heads.shape[1] == 2048
    # the NAR's prompt range (1.5-10 s) in Mimi frames: 19-125, capped at 3/4 of the utterance
    _, prompts = model.draw(torch.full((2000,), 400), torch.Generator().manual_seed(0))
    assert int(prompts.min()) == 19 and int(prompts.max()) == 125
    with pytest.raises(CorpusError, match="RANDOM-INIT mimi codec"):
        open_corpus(mimi_sample)


def test_a_model_config_saved_before_codecs_were_recorded_is_encodec(tmp_path):
    """A checkpoint's model_config without codebook_size and frame_rate loads as EnCodec's."""
    model = NARModel(tiny(64))
    old = {k: v for k, v in vars(model.cfg).items() if k not in ("codebook_size", "frame_rate")}
    old["prompt_seconds"] = list(old["prompt_seconds"])
    saved = {"model": model.state_dict(), "model_kind": "NARModel", "model_config": old, "provenance": {}}
    torch.save(saved, tmp_path / "old.pt")
    loaded, _ = load_checkpoint(str(tmp_path / "old.pt"), NARModel, torch.device("cpu"))
    assert (loaded.cfg.codebook_size, loaded.cfg.frame_rate, loaded.cfg.max_audio_frames) == (1024, 75, 3000)
    _, prompts = loaded.draw(torch.full((2000,), 1000), torch.Generator().manual_seed(0))
    assert int(prompts.min()) == 112 and int(prompts.max()) == 750  # 1.5-10 s at 75 frames/s
    assert ARModel(loaded.cfg).audio_emb.num_embeddings == 1026  # 1,024 codes + EOS + PAD, G = 1


def test_the_length_guard_is_per_second_of_speech():
    guard = LengthGuard()  # 4/75 to 40/75 s a token
    assert guard.bounds(30, 75) == (120, 1200)  # EnCodec: 4 and 40 frames a token, as before
    assert guard.bounds(30, 12.5) == (20, 200)  # Mimi: the same seconds, in its frames
    assert guard.bounds(30, 12.5, given=25, room=100) == (0, 100)
    assert guard.bounds(1, 12.5) == (1, 6)  # 0.67 and 6.7 frames: whole frames inside the bounds
