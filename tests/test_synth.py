"""valle-synth on CPU: tiny AR/NAR checkpoints trained for a few steps on the tiny corpus (random-init
codec) turn a text and a synthetic prompt into a 24 kHz wav of 320 samples per generated frame,
reproducibly per seed; mismatched codec weights, provenance or BPE are refused with a clear message."""

from __future__ import annotations

import math
import re

import numpy as np
import soundfile as sf
import torch

from trainer.synth import main


def synth(trained, out, *extra: str, ar=None, nar=None) -> int:
    corpus, ar_ckpt, nar_ckpt, prompt = trained
    return main(
        [
            "--ar",
            str(ar or ar_ckpt),
            "--nar",
            str(nar or nar_ckpt),
            "--data",
            corpus,
            "--text",
            "the quick brown fox",
            "--prompt-audio",
            str(prompt),
            "--prompt-text",
            "a prompt  transcript",
            "--out",
            str(out),
            "--codec-weights",
            "random",
            "--max-seconds",
            "2",
            "--seed",
            "0",
            *extra,
        ]
    )


def test_synthesizes_reproducibly(trained, tmp_path, capsys):
    assert synth(trained, tmp_path / "a.wav") == 0
    frames = int(re.search(r"(\d+) frames", capsys.readouterr().out).group(1))
    assert 1 <= frames <= 150  # --max-seconds 2 at 75 frames/s
    wave, sr = sf.read(tmp_path / "a.wav", dtype="float32", always_2d=True)
    assert sr == 24000 and wave.shape == (320 * frames, 1)
    assert np.isfinite(wave).all() and np.abs(wave).max() > 0
    assert synth(trained, tmp_path / "b.wav") == 0
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()


def test_refuses_other_codec_weights(trained, tmp_path, capsys):
    from tokens.codec_weights import EncodecModel

    other = tmp_path / "encodec.pt"  # encodec's own random init: not the corpus's weights
    torch.save(EncodecModel.encodec_model_24khz(pretrained=False).state_dict(), other)
    assert synth(trained, tmp_path / "x.wav", "--codec-weights", str(other)) == 2
    err = capsys.readouterr().err
    assert "encodec_24khz weights with sha256" in err and "encoded with weights sha256" in err
    assert not (tmp_path / "x.wav").exists()


def test_refuses_mismatched_checkpoints(trained, tmp_path, capsys):
    saved = torch.load(trained[2], map_location="cpu", weights_only=True)
    saved["provenance"]["bpe_sha256"] = "0" * 64
    nar = tmp_path / "nar.pt"
    torch.save(saved, nar)
    assert synth(trained, tmp_path / "x.wav", nar=nar) == 2
    assert "different codec/BPE provenance" in capsys.readouterr().err
    assert synth(trained, tmp_path / "x.wav", ar=trained[2]) == 2  # a NAR given as the AR
    assert "holds a NARModel, expected a ARModel" in capsys.readouterr().err


def test_refuses_other_bpe(trained, tmp_path, capsys):
    corpus, ar, nar, prompt = trained
    bpe = tmp_path / "bpe.model"
    bpe.write_bytes(b"not the corpus's model")
    code = main(
        [
            "--ar",
            str(ar),
            "--nar",
            str(nar),
            "--bpe",
            str(bpe),
            "--text",
            "hi",
            "--prompt-audio",
            str(prompt),
            "--prompt-text",
            "x",
            "--out",
            str(tmp_path / "x.wav"),
            "--codec-weights",
            "random",
        ]
    )
    assert code == 2 and "but the checkpoints were trained with" in capsys.readouterr().err


def test_warns_when_the_prompt_is_outside_the_trained_range(trained, tmp_path, capsys):
    saved = torch.load(trained[2], map_location="cpu", weights_only=True)
    assert saved["model_config"]["prompt_seconds"] == [1.5, 10.0]  # the NAR records its range
    assert synth(trained, tmp_path / "a.wav") == 0  # a 1.5 s prompt: inside
    assert "warning" not in capsys.readouterr().err
    saved["model_config"]["prompt_seconds"] = [3.0, 10.0]
    nar = tmp_path / "nar.pt"
    torch.save(saved, nar)
    assert synth(trained, tmp_path / "b.wav", nar=nar) == 0  # still synthesizes, but says so
    err = capsys.readouterr().err
    assert "warning: the prompt is 1.5" in err and "trained on 3-10 s prompts" in err


def test_length_guard_gives_the_sentence_its_minimum_length(trained, tmp_path, capsys):
    """The issue's case: a 10-word sentence must not end after a few frames."""
    from trainer.sampling import LengthGuard
    from trainer.synth import load_bpe

    sentence = "The lantern swung twice before the ferry touched the pier."
    out = tmp_path / "guarded.wav"
    code = main(
        [
            *["--ar", str(trained[1]), "--nar", str(trained[2]), "--data", trained[0]],
            *["--text", sentence, "--prompt-audio", str(trained[3]), "--prompt-text", "a prompt"],
            *["--out", str(out), "--codec-weights", "random", "--seed", "0"],
        ]
    )
    assert code == 0
    frames = int(re.search(r"(\d+) frames", capsys.readouterr().out).group(1))
    provenance = torch.load(trained[1], weights_only=True)["provenance"]
    tokens = len(load_bpe(None, trained[0], provenance).encode(sentence))
    low, high = LengthGuard().bounds(tokens, 75)  # EnCodec's frame rate: 4/75 s a token is 4 frames
    assert low == math.ceil(4 * tokens) and low <= frames <= high
    # Without the guard the same seed may stop anywhere; with min 0 / max 1 it is cut to one frame.
    assert (
        main(
            [
                *["--ar", str(trained[1]), "--nar", str(trained[2]), "--data", trained[0]],
                *["--text", sentence, "--prompt-audio", str(trained[3]), "--prompt-text", "a prompt"],
                *["--out", str(out), "--codec-weights", "random", "--min-seconds-per-token", "0"],
                *["--max-seconds-per-token", str(1 / tokens / 75)],
            ]
        )
        == 0
    )
    assert " 1 frames" in capsys.readouterr().out
