"""valle-train on the tiny corpus, on CPU: the models learn (teacher-forced accuracy far above the
majority-code baseline), a stopped run resumes exactly, and DDP runs under torchrun (gloo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from schemas.reading import read_shard
from tests.conftest import REPO
from trainer.config import load_config
from trainer.corpus import CorpusError, open_corpus
from trainer.train import main, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus_dir(built_corpus):
    return str(built_corpus[0].out)


def config(kind: str, out: Path, *overrides: str):
    return load_config(
        REPO / f"trainer/configs/{kind}-tiny.yaml",
        [
            f"run.out={out}",
            "run.log_every=10",
            "run.eval_every=1000",
            "run.checkpoint_every=1000",
            "data.workers=0",
            *overrides,
        ],
    )


def majority_share(corpus_dir: str, codebooks: range) -> float:
    """Accuracy of always predicting each codebook's most frequent code (the baseline to beat)."""
    counts = {k: Counter() for k in codebooks}
    for shard in open_corpus(corpus_dir, allow_random_codec=True).shards:
        for _, _, codes in read_shard(shard):
            for k in codebooks:
                counts[k].update(codes[k].tolist())
    return max(c.most_common(1)[0][1] / sum(c.values()) for c in counts.values())


def learned(record: dict) -> bool:
    """Clear learning: accuracy well above always guessing the most frequent code, and a loss
    well below the best context-free predictor's (both measured on the same targets)."""
    return record["accuracy"] > max(0.8, record["majority"] + 0.2) and record["loss"] < 0.5 * record["unigram_loss"]


@pytest.mark.parametrize("kind, group, steps", [("ar", 1, 200), ("ar", 2, 200), ("nar", 1, 200)])
def test_tiny_models_learn_their_training_samples(corpus_dir, tmp_path, kind, group, steps):
    overrides = [f"run.max_steps={steps}"] + ([f"model.group_size={group}"] if kind == "ar" else [])
    last = train(config(kind, tmp_path, *overrides), [corpus_dir], allow_random_codec=True)
    assert learned(last), last
    # the logged baseline is what counting the corpus's codes gives (the AR's also has EOS targets)
    baseline = majority_share(corpus_dir, range(1) if kind == "ar" else range(1, 8))
    assert last["majority"] <= baseline + 0.05 if kind == "nar" else abs(last["majority"] - baseline) < 0.1
    log = [r for r in map(json.loads, (tmp_path / "log.jsonl").open()) if "loss" in r]
    assert log[-1]["loss"] < log[0]["loss"] / 3
    assert all(0 <= r["padding"] < 1 and r["tokens_per_s"] > 0 for r in log)


def test_the_learning_check_fails_without_learning(corpus_dir, tmp_path):
    last = train(config("ar", tmp_path, "run.max_steps=20", "optim.lr=0.0"), [corpus_dir], allow_random_codec=True)
    assert not learned(last), last  # the same check, on a model that cannot learn
    assert last["accuracy"] < last["majority"] + 0.05


def test_stop_and_resume_matches_an_uninterrupted_run(corpus_dir, tmp_path):
    straight = tmp_path / "straight"
    train(config("ar", straight, "run.max_steps=24", "run.checkpoint_every=12"), [corpus_dir], allow_random_codec=True)
    stopped = tmp_path / "stopped"
    train(config("ar", stopped, "run.max_steps=12", "run.checkpoint_every=12"), [corpus_dir], allow_random_codec=True)
    # The same command with a larger step budget, resumed from step 12 (the schedule is that of
    # a 24-step run in both: it is keyed to run.max_steps, identical here).
    train(
        config("ar", stopped, "run.max_steps=24", "run.checkpoint_every=12"),
        [corpus_dir],
        resume=True,
        allow_random_codec=True,
    )
    a = torch.load(straight / "checkpoint-24.pt", weights_only=True)
    b = torch.load(stopped / "checkpoint-24.pt", weights_only=True)
    assert a["loader"] == b["loader"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    losses = lambda d: [r["loss"] for r in map(json.loads, (d / "log.jsonl").open()) if "loss" in r]  # noqa: E731
    assert losses(straight)[-1] == losses(stopped)[-1]


def test_random_codec_corpus_needs_the_flag(corpus_dir, tmp_path, capsys):
    assert main([str(REPO / "trainer/configs/ar-tiny.yaml"), "--data", corpus_dir, f"run.out={tmp_path}"]) == 2
    assert "RANDOM-INIT" in capsys.readouterr().err
    with pytest.raises(CorpusError):
        open_corpus(corpus_dir)


def torchrun(corpus_dir: str, out: Path, *overrides: str) -> subprocess.CompletedProcess:
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        port,
        "-m",
        "trainer.train",
        str(REPO / "trainer/configs/ar-tiny.yaml"),
        "--data",
        corpus_dir,
        "--allow-random-codec",
        f"run.out={out}",
        "run.log_every=3",
        "run.eval_every=6",
        "run.checkpoint_every=3",
        "data.workers=1",
        "data.max_frames=1500",
        *overrides,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_torchrun_two_processes_resume_exactly(corpus_dir, tmp_path):
    torchrun(corpus_dir, tmp_path / "straight", "run.max_steps=6")
    saved = torch.load(tmp_path / "straight" / "checkpoint-6.pt", weights_only=True)
    assert saved["world"] == 2 and len(saved["loader"]) == 2
    # Both ranks took the same number of batches (DDP would hang otherwise).
    assert sum(saved["loader"][0]["delivered"]) == sum(saved["loader"][1]["delivered"])
    assert any("dev_loss" in line for line in (tmp_path / "straight" / "log.jsonl").open())
    # Stopped at 3 and resumed under torchrun: every rank loads step 3 before the DDP wrap.
    torchrun(corpus_dir, tmp_path / "resumed", "run.max_steps=3")
    torchrun(corpus_dir, tmp_path / "resumed", "run.max_steps=6", "--resume")
    again = torch.load(tmp_path / "resumed" / "checkpoint-6.pt", weights_only=True)
    assert again["loader"] == saved["loader"]
    for name, tensor in saved["model"].items():
        assert torch.equal(tensor, again["model"][name]), name


def test_accumulation_takes_that_many_batches_per_step(corpus_dir, tmp_path):
    # Small batches, so the 6 batches of 3 steps all come from epoch 0.
    train(
        config(
            "ar", tmp_path, "run.max_steps=3", "run.checkpoint_every=3", "optim.accumulate=2", "data.max_frames=300"
        ),
        [corpus_dir],
        allow_random_codec=True,
    )
    saved = torch.load(tmp_path / "checkpoint-3.pt", weights_only=True)
    assert saved["step"] == 3
    assert saved["loader"][0] == {"epoch": 0, "delivered": [6]}


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    from trainer.checkpoint import rng_state, set_rng_state

    generator = torch.Generator().manual_seed(3)
    np.random.seed(1)
    np.random.standard_normal(3)  # leaves a cached Gaussian and a mid-block position
    torch.save(rng_state(generator), tmp_path / "rng.pt")
    expected = (np.random.standard_normal(5), random.random(), torch.rand(3), torch.rand(2, generator=generator))
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True), generator)
    got = (np.random.standard_normal(5), random.random(), torch.rand(3), torch.rand(2, generator=generator))
    assert np.array_equal(expected[0], got[0]) and expected[1] == got[1]
    assert torch.equal(expected[2], got[2]) and torch.equal(expected[3], got[3])
