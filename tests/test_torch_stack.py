"""The torch stack: encodec without torchaudio, one clear line when torch is broken, pins in step."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tokens.stack import TESTED_TORCH

REPO = Path(__file__).resolve().parents[1]


def _python(code_or_args: list[str], fake_packages: Path | None = None, cwd: Path = REPO):
    """Run this interpreter in a subprocess, with `fake_packages` first on its import path."""
    env = dict(os.environ)
    path = [str(fake_packages)] if fake_packages else []
    env["PYTHONPATH"] = os.pathsep.join(path + [str(REPO)])
    return subprocess.run(
        [sys.executable, *code_or_args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120
    )


def _fake_package(root: Path, name: str, error: str) -> Path:
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text(f"raise RuntimeError({error!r})\n")
    return root


CUDA_MISMATCH = (
    "Detected that PyTorch and TorchAudio were compiled with different CUDA versions. "
    "PyTorch has CUDA version 13.2 whereas TorchAudio has CUDA version 13.0."
)


def test_codec_never_imports_torchaudio(tmp_path):
    """A torchaudio that cannot import (the CUDA mismatch of issue 6) does not stop encoding."""
    fake = _fake_package(tmp_path, "torchaudio", CUDA_MISMATCH)
    code = (
        "import sys, numpy as np; from tokens.codec import CodecConfig, CodecEncoder; "
        "enc = CodecEncoder(CodecConfig(weights='random', device='cpu')); "
        "codes = enc.encode([np.zeros(3200, np.float32)]); "
        "print(codes[0].shape, 'torchaudio' in sys.modules)"
    )
    done = _python(["-c", code], fake)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["(8,", "10)", "False"]


def test_real_torchaudio_importable_after_encodec(tmp_path):
    """The placeholder is gone once encodec is imported: other code gets the real module."""
    (tmp_path / "torchaudio").mkdir()
    (tmp_path / "torchaudio" / "__init__.py").write_text("REAL = 'yes'\n")
    code = (
        "import sys; from tokens.stack import encodec_model_class; encodec_model_class(); "
        "print('torchaudio' in sys.modules); import torchaudio; print(torchaudio.REAL)"
    )
    done = _python(["-c", code], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "yes"]


@pytest.mark.parametrize(
    "args",
    [
        ["-m", "pipeline.cli", "run", "dags/sample.yaml", "--out", "{tmp}/out"],
        ["-c", "import sys; from trainer.cli import train; sys.exit(train(['x.yaml', '--data', 'd']))"],
        ["-c", "import sys; from trainer.cli import synth; sys.exit(synth([]))"],
    ],
)
def test_broken_torch_is_one_clear_line(tmp_path, args):
    fake = _fake_package(tmp_path / "site", "torch", "CUDA driver mismatch (simulated)")
    done = _python([a.replace("{tmp}", str(tmp_path)) for a in args], fake)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "the torch stack does not import (RuntimeError: CUDA driver mismatch (simulated))" in lines[0]
    assert "Installed: torch " in lines[0] and f"pip install 'torch{TESTED_TORCH}'" in lines[0]
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_stack_check_command():
    done = _python(["-m", "tokens.stack"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("torch stack OK: torch ")


def test_pins_agree():
    """pyproject's torch range is TESTED_TORCH, and constraints.txt pins versions inside it."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = {Requirement(d).name: Requirement(d) for d in project["dependencies"]}
    assert str(deps["torch"].specifier) == str(Requirement(f"torch{TESTED_TORCH}").specifier)
    assert "torchaudio" not in deps  # never imported; encodec pulls it in
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[canonicalize_name(req.name)] = spec.version
    extras = project["optional-dependencies"]
    dev = [Requirement(d) for d in extras["dev"]]
    wanted = [r for r in dev if r.name != "valle-corpus"]  # dev names the eval extra: its deps instead
    wanted += [Requirement(d) for r in dev if r.name == "valle-corpus" for extra in r.extras for d in extras[extra]]
    for req in [*deps.values(), *wanted]:
        pinned = pins.get(canonicalize_name(req.name))
        assert pinned, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pinned, prereleases=True), (
            f"constraints.txt pins {req.name}=={pinned}, outside {req.specifier}"
        )
