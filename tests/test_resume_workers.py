"""Exact resume with DataLoader workers: the same batch sequence from every resume point of an
epoch, for any number of workers, and worker plans balanced (no worker idles while another works)."""

from __future__ import annotations

import numpy as np
import pytest

from sample.corpora import speaker_blocks, write_corpus
from tests.conftest import REPO
from trainer.batching import BatchingConfig, plan_epoch
from trainer.corpus import open_corpus
from trainer.loader import make_loader


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """7 shards of uneven sizes (so greedy shard balance leaves workers uneven), 16-frame cuts."""
    blocks = speaker_blocks(7, 2, 10)
    blocks = [shard[: 8 + 4 * k] for k, shard in enumerate(blocks)]
    return open_corpus(str(write_corpus(tmp_path_factory.mktemp("workers"), blocks)), allow_random_codec=True)


def epoch_plan(corpus, workers: int):
    s = corpus.samples
    cost = (s.frames + s.text_tokens).astype(np.int64)
    cfg = BatchingConfig(max_frames=5 * 20, buckets=1, shuffle_buffer=6, interleave=2)
    return plan_epoch(cost, np.ones(len(cost), bool), s.offsets, 0, 1, workers, cfg)


def sequence(corpus, plan, workers: int, skip=None) -> list[tuple]:
    loader = make_loader(corpus.samples, plan.ranks[0], skip, workers)
    return [(b["worker"], b["index"], tuple(b["ids"])) for b in loader]


@pytest.mark.parametrize("workers", [2, 3])
def test_every_resume_point_continues_the_same_sequence(corpus, workers):
    plan = epoch_plan(corpus, workers)
    counts = [w.batches for w in plan.ranks[0]]
    assert max(counts) - min(counts) <= 1, counts  # balanced: no worker idles
    whole = sequence(corpus, plan, workers)
    assert len(whole) == sum(counts) >= 8
    for point in range(1, len(whole)):
        delivered = [sum(1 for w, _, _ in whole[:point] if w == k) for k in range(workers)]
        assert sequence(corpus, plan, workers, delivered) == whole[point:], f"resumed after {point} batches"


def test_workers_get_as_many_batches_as_each_other(tmp_path):
    """Three shards of 60, 10 and 10 cuts on two workers: one worker reads the big shard. Its
    batches are not fewer for that: the other worker's batches are split until both have as many."""
    blocks = speaker_blocks(3, 1, 60)
    blocks = [blocks[0], blocks[1][:10], blocks[2][:10]]
    c = open_corpus(str(write_corpus(tmp_path / "c", blocks)), allow_random_codec=True)
    for workers in (2, 3):
        plans = epoch_plan(c, workers).ranks[0]
        most = max(w.batches for w in plans)
        # as many as each other, or one batch per sample when a worker has no more to split
        assert all(w.batches >= most - 1 or w.batches == len(w.samples) for w in plans), [w.batches for w in plans]


@pytest.mark.slow
def test_kill_9_after_a_checkpoint_then_resume_gives_the_uninterrupted_weights(built_corpus, tmp_path):
    """ar-tiny on the test corpus with 2 DataLoader workers: killed right after checkpoint 5,
    resumed to step 15, every weight equals a run that was never stopped."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch

    from tests.conftest import REPO

    def command(out, *extra):
        return [
            sys.executable,
            "-m",
            "trainer.train",
            str(REPO / "trainer/configs/ar-tiny.yaml"),
            "--data",
            str(built_corpus[0].out),
            "--allow-random-codec",
            f"run.out={out}",
            "run.max_steps=15",
            "run.checkpoint_every=5",
            "run.eval_every=1000",
            "data.workers=2",
            "data.max_frames=700",
            *extra,
        ]

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    subprocess.run(command(tmp_path / "straight"), check=True, capture_output=True, env=env, timeout=300)
    killed = subprocess.Popen(
        command(tmp_path / "killed"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not (tmp_path / "killed" / "checkpoint-5.pt").exists() and killed.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "checkpoint-15.pt").exists(), "the run ended before it was killed"
    subprocess.run(command(tmp_path / "killed", "--resume"), check=True, capture_output=True, env=env, timeout=300)
    a = torch.load(tmp_path / "straight" / "checkpoint-15.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "checkpoint-15.pt", weights_only=True)
    assert a["loader"] == b["loader"]
    assert [name for name, t in a["model"].items() if not torch.equal(t, b["model"][name])] == []


@pytest.mark.parametrize("old, new", [((1, 2), (2, 3)), ((2, 3), (1, 1)), ((1, 1), (3, 2))])
def test_another_layout_replans_what_the_epoch_has_not_consumed(corpus, old, new):
    """Resumed on other GPUs or workers: the samples delivered before, plus the re-planned rest
    of the epoch, are every kept sample exactly once."""
    from trainer.batching import consumed_samples

    s = corpus.samples
    cost = (s.frames + s.text_tokens).astype(np.int64)
    keep = np.ones(len(cost), bool)
    keep[::13] = False  # samples the model cannot take are in neither
    cfg = BatchingConfig(max_frames=5 * 20, buckets=2, shuffle_buffer=6, interleave=2)
    before = plan_epoch(cost, keep, s.offsets, 3, *old, cfg)
    delivered = [[w.batches // 2 for w in plans] for plans in before.ranks]  # stopped mid-epoch
    consumed = consumed_samples(before, delivered)
    rest = keep.copy()
    rest[consumed] = False
    after = plan_epoch(cost, rest, s.offsets, 3, *new, cfg)
    planned = np.concatenate([w.samples for plans in after.ranks for w in plans])
    both = np.concatenate([consumed, planned])
    assert len(both) == len(np.unique(both)) == keep.sum() and set(both.tolist()) == set(np.flatnonzero(keep).tolist())


@pytest.mark.slow
def test_a_resume_with_more_workers_goes_on_and_says_so(built_corpus, tmp_path):
    import torch

    from trainer.config import load_config
    from trainer.train import train

    def cfg(*extra):
        return load_config(
            REPO / "trainer/configs/ar-tiny.yaml",
            [f"run.out={tmp_path}", "run.checkpoint_every=3", "run.eval_every=1000", "data.max_frames=700", *extra],
        )

    corpus = [str(built_corpus[0].out)]
    train(cfg("run.max_steps=3", "data.workers=0"), corpus, allow_random_codec=True)
    train(cfg("run.max_steps=6", "data.workers=2"), corpus, resume=True, allow_random_codec=True)
    import json

    first, resumed = [r for r in map(json.loads, (tmp_path / "log.jsonl").open()) if "epoch" in r][:2]
    assert resumed["epoch"] == first["epoch"] == 0 and resumed["replanned_from"] == {"world": 1, "workers": 1}
    assert 0 < resumed["plan_samples"] < first["plan_samples"]  # the 3 batches delivered are not planned again
    saved = torch.load(tmp_path / "checkpoint-6.pt", weights_only=True)
    assert saved["layout"] == {"world": 1, "workers": 2} and saved["loader"][0]["replanned"]["workers"] == 1
