"""bench/gpu_check.py runs end to end on CPU at tiny sizes, so it is ready the day a GPU is; a
failing step costs only its own figures, and no step's CUDA kernel settings reach the next."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def kernel_settings() -> tuple:
    """The process-wide settings that choose CUDA float kernels (the codec sets them)."""
    cudnn = torch.backends.cudnn
    return cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, torch.get_float32_matmul_precision()


def test_the_gpu_check_reports_every_figure_step_by_step(tmp_path, capsys, monkeypatch):
    sys.path.insert(0, str(REPO / "bench"))
    import gpu_check

    out = tmp_path / "check.json"
    defaults = kernel_settings()
    real_exactness, real_training = gpu_check.exactness, gpu_check.training

    def exactness_that_leaks(device, state):
        # What the codec did to the process on a GPU before it scoped its settings to its calls.
        torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32 = True, False
        torch.backends.cuda.matmul.allow_tf32 = True
        return real_exactness(device, state)

    def no_attention(device):
        raise RuntimeError("no attention kernel today")

    on_disk, settings_seen = [], []

    def training(*args):
        if not on_disk:
            on_disk.append(json.loads(out.read_text()))  # what a crash here would leave
        settings_seen.append(kernel_settings())
        return real_training(*args)

    monkeypatch.setattr(gpu_check, "exactness", exactness_that_leaks)
    monkeypatch.setattr(gpu_check, "sdpa_backends", no_attention)
    monkeypatch.setattr(gpu_check, "training", training)
    report = gpu_check.main(["--tiny", "--json", str(out), "--compile-backend", "eager"])

    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert set(on_disk[0]) >= {"exactness", "codec", "agreement", "oom_split", "broken_device", "pipeline"}
    assert on_disk[0]["errors"] == report["errors"] == {"attention backends": "RuntimeError: no attention kernel today"}
    assert settings_seen == [defaults] * 4 and kernel_settings() == defaults  # restored before the next step
    assert report["settings_left"] == {
        "codec exactness": {"cudnn.deterministic": True, "cudnn.allow_tf32": False, "float32_matmul_precision": "high"}
    }

    assert 0.99 <= report["exactness"]["identical_share"] <= 1.0  # float32 kernels by shape: near-ties may flip
    assert [r["batch"] for r in report["codec"] if r["precision"] == "exact"] == [1, 4]
    assert [(r["codec"], r["batch_seconds"]) for r in report["codecs"]] == [
        (name, seconds) for name in ("dac_24khz", "encodec_24khz", "mimi") for seconds in (1.0, 2.0)
    ]
    assert all(r["audio_s"] >= 2 and r["audio_s_per_s"] > 0 for r in report["codecs"])
    assert len(report["agreement"]["bf16"]) == 8 and all(0 <= x <= 1 for x in report["agreement"]["bf16"])
    oom = report["oom_split"]  # 4 -> 2 + 2; on CPU, splits above one utterance change no code
    assert (oom["splits"], oom["failed_attempts"], oom["alive_mib_at_retries"], oom["identical_share"]) == (1, 1, 0, 1)
    assert report["broken_device"]["exited"] and report["broken_device"]["exit_code"] == 1
    assert "illegal memory access" in report["broken_device"]["said"]
    assert report["pipeline"]["audio_s"] > 0 and report["pipeline"]["x_real_time"] > 0
    assert "sdpa_backends" not in report
    assert [(t["model"], t["compile"]) for t in report["training"]] == [
        ("ar-tiny G=1", "off"),
        ("ar-tiny G=2", "off"),
        ("nar-tiny", "off"),
        ("ar-tiny G=1", "eager"),
    ]
    assert all(t["positions_per_s"] > 0 and t["mfu"] is None for t in report["training"])  # no peak on CPU
    table = capsys.readouterr().out
    assert table.strip() == out.with_suffix(".md").read_text().strip()
    assert "| EnCodec batched = one by one (exact) |" in table and "x real time" in table
    assert "| mimi exact, batch 2 s |" in table
    assert "| step attention backends FAILED | RuntimeError: no attention kernel today |" in table
