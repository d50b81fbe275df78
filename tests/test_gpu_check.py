"""bench/gpu_check.py runs end to end on CPU at tiny sizes, so it is ready the day a GPU is."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_the_gpu_check_runs_and_reports_every_figure(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "bench"))
    import gpu_check

    report = gpu_check.main(["--tiny", "--json", str(tmp_path / "check.json"), "--compile-backend", "eager"])
    assert json.loads((tmp_path / "check.json").read_text()) == json.loads(json.dumps(report))
    assert 0.99 <= report["exactness"]["identical_share"] <= 1.0  # float32 kernels by shape: near-ties may flip
    assert [r["batch"] for r in report["codec"] if r["precision"] == "exact"] == [1, 4]
    assert len(report["agreement"]["bf16"]) == 8 and all(0 <= x <= 1 for x in report["agreement"]["bf16"])
    assert report["pipeline"]["audio_s"] > 0 and report["pipeline"]["x_real_time"] > 0
    assert "math" in report["sdpa_backends"]
    assert [(t["model"], t["compile"]) for t in report["training"]] == [
        ("ar-tiny G=1", "off"),
        ("ar-tiny G=2", "off"),
        ("nar-tiny", "off"),
        ("ar-tiny G=1", "eager"),
    ]
    assert all(t["positions_per_s"] > 0 and t["mfu"] is None for t in report["training"])  # no peak on CPU
    table = capsys.readouterr().out
    assert "| EnCodec batched = one by one (exact) |" in table and "x real time" in table
