"""The token contract: the trainer depends on `tokens/` and `schemas/`, never on the pipeline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("module", ["trainer.cli", "trainer.train", "trainer.synth", "trainer.corpus"])
def test_training_and_synthesis_load_no_pipeline_module(module):
    code = f"import sys, {module}; print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] == 'pipeline')))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"{module} loads pipeline modules: {out.stdout.strip()}"


def test_the_codec_and_the_models_agree_on_the_numbers():
    from tokens import codec, constants
    from trainer.models.config import tiny

    assert constants.SAMPLE_RATE == constants.FRAME_RATE * constants.HOP == 24000
    assert codec.num_codebooks(6.0) == tiny(text_vocab=100).n_codebooks == 8
    assert tiny(text_vocab=100).codebook_size == constants.CODEBOOK_SIZE == 1024
    # The encoder's own frame rate, not a copy of the number.
    assert codec.EncodecModel.encodec_model_24khz(pretrained=False).frame_rate == constants.FRAME_RATE
