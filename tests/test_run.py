"""A run that lasts 800k steps on many GPUs, checked on CPU: gradient accumulation that never
spans epochs and all-reduces once per step, resumes that refuse a changed data plan, checkpoint
retention and atomic writes, ranks that cannot share run.out fail at startup, too-long samples
filtered and counted, a frame budget that means the same compute for every group size, and
training windows that do not count evaluation time."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

import trainer.train as train_module
from sample.corpora import Cut, speaker_blocks, write_corpus
from tests.conftest import REPO
from trainer import checkpoint
from trainer.batching import BatchingConfig, plan_epoch
from trainer.config import load_config
from trainer.corpus import open_corpus
from trainer.distributed import agree_on_checkpoint, check_shared_folder
from trainer.metrics import Window
from trainer.train import LossModule, TrainingData, accumulate_gradients, build_model, main, train


def random_lengths(shards: list) -> list:
    """The cuts of `shards` with 30-50 frames and 4-12 text tokens each (seeded)."""
    rng = np.random.default_rng(0)
    return [
        [Cut(c.speaker, c.recording, int(rng.integers(30, 50)), int(rng.integers(4, 12))) for c in shard]
        for shard in shards
    ]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """12 shards of 12 cuts of 30-50 frames; a dev split of 6."""
    shards = random_lengths(speaker_blocks(12, 2, 6))
    return str(write_corpus(tmp_path_factory.mktemp("run"), shards, dev=speaker_blocks(1, 2, 3)))


def config(out: Path, *overrides: str):
    return load_config(
        REPO / "trainer/configs/ar-tiny.yaml",
        [
            f"run.out={out}",
            "run.log_every=1",
            "run.eval_every=1000",
            "run.checkpoint_every=1000",
            "data.workers=0",
            "data.max_frames=400",
            *overrides,
        ],
    )


def test_an_optimizer_step_never_takes_micro_batches_from_two_epochs(corpus, tmp_path, monkeypatch):
    samples = open_corpus(corpus, allow_random_codec=True)
    model = build_model(config(tmp_path), samples.vocab_size, 8)
    data = TrainingData([samples], model)
    cfg = config(tmp_path, "optim.accumulate=2")
    natural = data.plan(cfg, 0, 1, 1, multiple_of=1).batches_per_rank
    budget = 400
    while natural % 2 == 0:  # a frame budget whose epoch has an odd number of batches
        budget += 37
        cfg = config(tmp_path, "optim.accumulate=2", f"data.max_frames={budget}")
        natural = data.plan(cfg, 0, 1, 1, multiple_of=1).batches_per_rank
    counts, backward = [], [0]
    real_build, real_step = train_module.build_model, torch.optim.AdamW.step

    def counting_build(*args):
        built = real_build(*args)
        built.transformer.norm.norm.weight.register_hook(lambda g: backward.__setitem__(0, backward[0] + 1))
        return built

    def counting_step(self, *args, **kwargs):
        counts.append(backward[0])
        backward[0] = 0
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(train_module, "build_model", counting_build)
    monkeypatch.setattr(torch.optim.AdamW, "step", counting_step)
    steps = natural  # two epochs and more: accumulate=2 over an odd epoch would carry one over
    train(
        load_config(
            REPO / "trainer/configs/ar-tiny.yaml",
            [
                f"run.out={tmp_path}",
                f"run.max_steps={steps}",
                "run.log_every=1000",
                "run.eval_every=1000",
                "run.checkpoint_every=1000",
                "data.workers=0",
                "optim.accumulate=2",
                f"data.max_frames={budget}",
            ],
        ),
        [corpus],
        allow_random_codec=True,
    )
    assert counts == [2] * steps


def test_ddp_all_reduces_once_per_optimizer_step(corpus, tmp_path):
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        samples = open_corpus(corpus, allow_random_codec=True)
        cfg = config(tmp_path)
        model = build_model(cfg, samples.vocab_size, 8)
        data = TrainingData([samples], model)
        batches = list(data.loader(data.plan(cfg, 0, 1, 1, 1), 0, 0))[:3]
        ddp = torch.nn.parallel.DistributedDataParallel(LossModule(model, takes_generator=False))
        reduces = []

        def hook(state, bucket):
            reduces.append(bucket.index())
            future = torch.futures.Future()
            future.set_result(bucket.buffer())
            return future

        ddp.register_comm_hook(None, hook)

        class Once:  # the loop's Run, as much of it as accumulate_gradients uses
            device = torch.device("cpu")

        accumulate_gradients(ddp, batches, Once(), None, Window(Once.device, model.histogram_shape), model)
        buckets = len(set(reduces))
        assert len(reduces) == buckets  # three micro-batches, one all-reduce of each bucket
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    "changed", ["data.max_frames=600", "data.interleave=3", "data.shuffle_buffer=17", "run.seed=5", "data.buckets=3"]
)
def test_resume_refuses_a_changed_data_plan(corpus, tmp_path, capsys, changed):
    args = [
        str(REPO / "trainer/configs/ar-tiny.yaml"),
        "--data",
        corpus,
        "--allow-random-codec",
        f"run.out={tmp_path}",
        "run.max_steps=2",
        "run.checkpoint_every=2",
        "data.workers=0",
        "data.max_frames=400",
    ]
    assert main(args) == 0
    assert main([*args, "run.max_steps=4", changed, "--resume"]) == 2
    key = changed.split("=")[0]
    assert f"{key} was" in capsys.readouterr().err
    assert main([*args, "run.max_steps=4", "--resume"]) == 0  # unchanged: resumes


def test_checkpoints_keep_the_last_n_and_every_mth(corpus, tmp_path):
    train(
        config(tmp_path, "run.max_steps=10", "run.checkpoint_every=1", "run.keep_last=2", "run.keep_every=4"),
        [corpus],
        allow_random_codec=True,
    )
    assert sorted(checkpoint.step_of(p) for p in checkpoint.checkpoints(tmp_path)) == [4, 8, 9, 10]
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_failed_checkpoint_write_leaves_no_torn_file(tmp_path, monkeypatch):
    checkpoint.save(tmp_path, {"step": 1}, 1, keep_last=3, keep_every=0)

    def crash(payload, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(tmp_path, {"step": 2}, 2, keep_last=3, keep_every=0)
    assert [p.name for p in checkpoint.checkpoints(tmp_path)] == ["checkpoint-1.pt"]
    assert torch.load(tmp_path / "checkpoint-1.pt", weights_only=True) == {"step": 1}


class ThreadRank:
    """One of `world` ranks in threads of this process, with all_gather over a shared barrier."""

    def __init__(self, rank: int, world: int, shared: dict):
        self.rank, self.world, self.shared = rank, world, shared

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_gather(self, obj):
        s = self.shared
        s["barrier"].wait()
        s["slots"][self.rank] = obj
        s["barrier"].wait()
        out = list(s["slots"])
        s["barrier"].wait()
        return out


def run_ranks(world: int, target) -> list:
    shared = {"barrier": threading.Barrier(world), "slots": [None] * world}
    results = [None] * world

    def body(rank):
        try:
            results[rank] = target(ThreadRank(rank, world, shared))
        except Exception as err:  # noqa: BLE001 (the test inspects it)
            results[rank] = err

    threads = [threading.Thread(target=body, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_ranks_that_do_not_share_run_out_fail_at_startup(tmp_path):
    shared = run_ranks(2, lambda run: check_shared_folder(run, tmp_path / "same"))
    assert shared == [None, None]
    # two nodes, each with its own local folder called run.out
    apart = run_ranks(2, lambda run: check_shared_folder(run, tmp_path / f"node{run.rank}", wait_s=0.2))
    assert all(isinstance(r, RuntimeError) and "rank 1 on" in str(r) for r in apart), apart
    assert "run.out must be a folder every node mounts" in str(apart[0])


def test_every_rank_must_find_the_checkpoint_rank_0_resumes_from(tmp_path):
    for node in ("node0", "node1"):
        (tmp_path / node).mkdir()
    (tmp_path / "node0" / "checkpoint-8.pt").write_bytes(b"x")

    def resume(run):
        out = tmp_path / f"node{run.rank}"
        found = checkpoint.checkpoints(out)
        return agree_on_checkpoint(run, out, found[-1] if found else None)

    results = run_ranks(2, resume)
    assert all(isinstance(r, RuntimeError) and "checkpoint-8.pt" in str(r) for r in results), results


def test_too_long_samples_are_filtered_and_counted(tmp_path):
    shards = speaker_blocks(3, 1, 4, frames=40)
    shards[1][1] = Cut("x", "large/x/b/c", 3001, 6)  # past the position table (3000 frames)
    shards[2][0] = Cut("y", "large/y/b/c", 40, 513)  # past the text table (512 tokens)
    root = write_corpus(tmp_path / "corpus", shards)
    last = train(
        config(tmp_path / "run", "run.max_steps=6", "data.max_frames=4000"), [str(root)], allow_random_codec=True
    )
    assert last["step"] == 6
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").open()]
    assert log[0]["too_long_filtered"] == 2
    assert all(r["plan_samples"] == 10 for r in log if "plan_samples" in r)


def test_the_frame_budget_means_the_same_compute_for_every_group_size(corpus, tmp_path):
    samples = open_corpus(corpus, allow_random_codec=True)
    rng = np.random.default_rng(0)
    frames, text = rng.integers(30, 900, 20_000), rng.integers(5, 60, 20_000)  # 100 shards of 200
    offsets = np.arange(0, 20_001, 200)
    per_batch = {}
    for kind, G in (("ar", 1), ("ar", 2), ("ar", 8), ("nar", 1)):
        cfg = config(tmp_path, f"model.kind={kind}", f"model.group_size={G}", "data.max_frames=20000")
        model = build_model(cfg, samples.vocab_size, 8)
        data = TrainingData([samples], model)  # the planner's cost is what the model computes
        assert np.array_equal(
            data.cost,
            model.positions(
                torch.from_numpy(data.samples.text_tokens.astype(np.int64)),
                torch.from_numpy(data.samples.frames.astype(np.int64)),
            ).numpy(),
        )
        cost = model.positions(text, frames)
        plan = plan_epoch(cost, np.ones(len(cost), bool), offsets, 0, 1, 1, BatchingConfig(max_frames=20_000))
        batches = [w.batch(b) for w in plan.ranks[0] for b in range(w.batches)]
        assert all(len(b) * cost[b].max() <= 20_000 for b in batches)  # count x longest, in positions
        per_batch[(kind, G)] = cost.sum() / len(batches)  # positions computed per batch
    for key, positions in per_batch.items():
        assert positions == pytest.approx(per_batch[("ar", 1)], rel=0.1), per_batch


def test_training_windows_do_not_count_evaluation_time(corpus, tmp_path, monkeypatch):
    real = train_module.evaluate

    def slow_evaluate(*args):
        time.sleep(2.0)
        return real(*args)

    monkeypatch.setattr(train_module, "evaluate", slow_evaluate)
    start = time.perf_counter()
    train(config(tmp_path, "run.max_steps=4", "run.log_every=4", "run.eval_every=1"), [corpus], allow_random_codec=True)
    wall = time.perf_counter() - start
    window = [json.loads(line) for line in (tmp_path / "log.jsonl").open() if '"loss"' in line][0]
    # four evaluations slept 8 s; three of them fell inside this window, and none may count
    assert window["seconds"] <= wall - 8.0, (window, wall)
    assert window["tokens_per_s"] * window["seconds"] > 0


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H100 NVL", 835e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA H200 NVL", 835e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA B200", 2250e12),
        ("NVIDIA GB200", 2500e12),
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_mfu_divides_by_the_exact_parts_peak(name, peak):
    from trainer.metrics import peak_for

    assert peak_for(name) == peak


def test_a_rank_that_cannot_read_stops_every_rank_at_the_same_step(tmp_path):
    """Rank 1's reads failed for data.retry_minutes: rank 0, whose batch arrived, stops at the
    same step instead of waiting in a collective for rank 1 until NCCL's timeout, and says why."""
    from storage.remote import StorageError
    from trainer.train import DataUnavailable, agreed_steps

    class TwoRanks:
        world, rank = 2, 0

        def __init__(self, failing_rank):
            self.failing_rank, self.calls = failing_rank, 0

        def control_sum(self, flags):
            self.calls += 1
            return [1.0 if r == self.failing_rank and self.calls == 3 else flags[r] for r in range(2)]

        def control_gather(self, reason):
            return [reason, "s3://b/shard.tar: still failing after 40 attempts (600.0 s) at byte 0"]

    steps = agreed_steps(iter([["a"], ["b"], ["c"], ["d"]]), TwoRanks(failing_rank=1), tmp_path, step=7)
    assert next(steps) == ["a"] and next(steps) == ["b"]
    with pytest.raises(
        DataUnavailable,
        match=r"rank 1 cannot read its data \(s3://b/shard\.tar: still failing after 40 attempts \(600\.0 s\) at "
        r"byte 0\); every rank stopped at step 9\. No checkpoint was written yet",
    ):
        next(steps)

    def failing():
        yield ["a"]
        raise StorageError("s3://b/shard.tar: still failing after 40 attempts (600.0 s) at byte 0")

    alone = agreed_steps(failing(), TwoRanks(failing_rank=None), tmp_path, step=0)
    assert next(alone) == ["a"]
    with pytest.raises(DataUnavailable, match=r"rank 0 cannot read its data \(s3://b/shard\.tar: still failing"):
        next(alone)
