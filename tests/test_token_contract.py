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


def test_each_codec_spec_is_its_models_own_numbers():
    """tokens.codecs.SPECS (what index.json records and the trainer sizes models by) against the
    architectures the libraries build, not copies of the numbers."""
    from tokens.codec_settings import num_codebooks
    from tokens.codec_weights import new_model
    from tokens.codecs import SPECS, dac, mimi

    encodec = new_model()
    spec = SPECS["encodec_24khz"]
    assert (encodec.sample_rate, encodec.frame_rate, encodec.quantizer.bins) == (
        spec.sample_rate,
        spec.frame_rate,
        spec.codebook_size,
    )
    assert len(encodec.quantizer.vq.layers) == spec.max_codebooks and num_codebooks(6.0) == spec.default_codebooks
    spec, config = SPECS["dac_24khz"], dac.CONFIG
    assert (config.sampling_rate, config.hop_length, config.codebook_size, config.n_codebooks) == (
        spec.sample_rate,
        spec.hop,
        spec.codebook_size,
        spec.max_codebooks,
    )
    spec, config = SPECS["mimi"], mimi.CONFIG
    assert (config.sampling_rate, config.frame_rate, config.codebook_size, config.num_quantizers) == (
        spec.sample_rate,
        spec.frame_rate,
        spec.codebook_size,
        spec.max_codebooks,
    )
    assert spec.kbps(8) == 1.1 and SPECS["dac_24khz"].kbps(8) == SPECS["encodec_24khz"].kbps(8) == 6.0
