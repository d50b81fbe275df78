"""Elastic resume: an epoch stopped on one layout (ranks x loader workers) and resumed on others,
at any step, growth near the epoch's end and several changes in one epoch included: every kept
sample is delivered exactly once, every rank takes as many optimizer steps, and re-planning
costs one plan per layout change. The plans and resumes are the trainer's own
(TrainingData.plan / resume_elsewhere, LoaderState as checkpoints save it); delivery follows
trainer.loader.PlanOrder; the loader reads empty batches through real shards; and one resume
onto two processes near the epoch's end runs under torchrun."""

from __future__ import annotations

import functools
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import trainer.train as train_module
from sample.corpora import speaker_blocks, write_corpus
from schemas.reading import read_shard
from tests.conftest import REPO
from tests.test_run import random_lengths
from trainer.batching import BatchingConfig, plan_epoch
from trainer.config import load_config
from trainer.corpus import open_corpus
from trainer.loader import LoaderState, PlanOrder, make_loader
from trainer.train import LossModule, TrainingData, accumulate_gradients, build_model


@functools.cache
def config(accumulate: int, max_frames: int = 400):
    overrides = [f"optim.accumulate={accumulate}", f"data.max_frames={max_frames}", "data.interleave=2"]
    return load_config(REPO / "trainer/configs/ar-tiny.yaml", [*overrides, "data.shuffle_buffer=8"])


def lengths_only(sizes: list[int], seed: int) -> TrainingData:
    """TrainingData over generated lengths, as a fresh process builds it (plans read nothing else):
    shards of `sizes` samples costing 20-200 positions, every 11th too long for the model."""
    rng = np.random.default_rng(seed)
    data = TrainingData.__new__(TrainingData)
    data.samples = SimpleNamespace(offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))
    data.cost = rng.integers(20, 200, int(sum(sizes))).astype(np.int64)
    data.keep = np.arange(int(sum(sizes))) % 11 != 5
    data.too_long, data._unconsumed = int((~data.keep).sum()), None
    return data


def deliver(plan, steps: int, accumulate: int) -> tuple[list[list[int]], list[int]]:
    """Each rank takes `steps` optimizer steps of its batches in PlanOrder's order: the batches
    each of its workers delivered, and the samples in them."""
    delivered, ids = [], []
    for plans in plan.ranks:
        counts = [0] * len(plans)
        for worker, index in PlanOrder(None, [w.batches for w in plans], [0] * len(plans)).order()[
            : steps * accumulate
        ]:
            counts[worker] += 1
            ids += plans[worker].batch(index).tolist()
        delivered.append(counts)
    return delivered, ids


def check_steps(plan, accumulate: int) -> None:
    """Every rank as many batches, a multiple of accumulate; every step holds a sample somewhere."""
    counts = {sum(w.batches for w in plans) for plans in plan.ranks}
    assert len(counts) == 1 and counts.pop() % accumulate == 0
    filled = plan.filled_per_step(accumulate)
    empty = sum(int((np.diff(w.bounds) == 0).sum()) for plans in plan.ranks for w in plans)
    assert (filled is None) == (empty == 0) and (empty == 0 or plan.spread)
    if filled is not None:
        assert filled.min() >= 1 and filled.sum() == len(plan.ranks) * plan.batches_per_rank - empty


layouts = st.tuples(st.integers(1, 8), st.integers(1, 3))  # (ranks, loader workers)
stops = st.one_of(st.floats(0, 1), st.integers(0, 3))  # a share of the layout's steps, or steps before its end


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 30), min_size=1, max_size=10),
    seed=st.integers(0, 2**16),
    accumulate=st.integers(1, 3),
    first=st.tuples(st.integers(1, 2), st.integers(1, 3)),
    changes=st.lists(st.tuples(stops, layouts), min_size=1, max_size=4),
)
@example(sizes=[30] * 10, seed=0, accumulate=1, first=(1, 1), changes=[(1, (6, 2)), (0, (1, 1))])
@example(sizes=[30] * 10, seed=1, accumulate=2, first=(2, 2), changes=[(0.97, (6, 3)), (0.5, (1, 1))])
@example(sizes=[8] * 6, seed=2, accumulate=3, first=(1, 1), changes=[(1, (6, 1)), (0.0, (3, 2)), (0.0, (5, 3))])
def test_any_layout_change_at_any_step_delivers_every_sample_once(sizes, seed, accumulate, first, changes):
    """An epoch begun on the `first` layout; at each change it stops (a float: that share of the
    layout's steps; an int n: n steps before its end, 0 when all are taken) and a fresh process
    resumes it on the change's layout, which the last runs to the epoch's end."""
    cfg, data, epoch = config(accumulate), lengths_only(sizes, seed), 0
    try:
        plan = data.plan(cfg, epoch, *first, accumulate)
    except ValueError as err:  # a fresh epoch on more ranks than its shards feed: refused, as before
        assert "cannot feed" in str(err) or "use fewer ranks" in str(err)
        return
    state, layout, seen = LoaderState(epoch, [0] * first[1]), first, []
    for stop, new in changes:
        check_steps(plan, accumulate)
        steps = plan.batches_per_rank // accumulate
        stopped = round(stop * steps) if isinstance(stop, float) else max(0, steps - stop)
        delivered, ids = deliver(plan, stopped, accumulate)
        seen += ids
        saved = {
            "loader": [LoaderState(epoch, d, state.replanned).to_dict() for d in delivered],
            "layout": {"world": layout[0], "workers": layout[1]},
        }
        fresh = lengths_only(sizes, seed)  # the resumed process plans from scratch
        state = fresh.resume_elsewhere(cfg, saved, {"world": new[0], "workers": new[1]})
        if state.epoch != epoch:  # nothing left: the next epoch begins
            assert state == LoaderState(epoch + 1, [0] * new[1]) and sorted(seen) == np.flatnonzero(data.keep).tolist()
            return
        plan, layout = fresh.plan(cfg, epoch, *new, accumulate, state.replanned), new
    check_steps(plan, accumulate)
    seen += deliver(plan, plan.batches_per_rank // accumulate, accumulate)[1]
    assert sorted(seen) == np.flatnonzero(data.keep).tolist()  # every kept sample, none twice


def test_a_layout_change_costs_one_plan(monkeypatch):
    """Seven layout changes in one epoch: the seventh resume (resume_elsewhere, then plan) plans
    each earlier layout once and its own: 8 plans, as many as the layouts."""
    calls = []
    real = train_module.plan_epoch
    monkeypatch.setattr(train_module, "plan_epoch", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg, sizes = config(1, max_frames=200), [30] * 40
    layouts = [(1, 1), (2, 2), (4, 1), (1, 2), (3, 2), (2, 1), (3, 3), (5, 2)]
    plan = lengths_only(sizes, 0).plan(cfg, 0, *layouts[0], 1)
    state, counts = LoaderState(0, [0]), []
    for old, new in zip(layouts, layouts[1:]):
        delivered, _ = deliver(plan, plan.batches_per_rank // 8, 1)
        saved = {"loader": [LoaderState(0, d, state.replanned).to_dict() for d in delivered]}
        saved["layout"] = {"world": old[0], "workers": old[1]}
        data, calls[:] = lengths_only(sizes, 0), []
        state = data.resume_elsewhere(cfg, saved, {"world": new[0], "workers": new[1]})
        plan = data.plan(cfg, 0, *new, 1, state.replanned)
        counts.append(len(calls))
    assert state.epoch == 0 and counts == [2, 3, 4, 5, 6, 7, 8]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """6 shards of 6 cuts of 30-50 frames, written for real (the loader and training read them)."""
    return str(write_corpus(tmp_path_factory.mktemp("elastic"), random_lengths(speaker_blocks(6, 2, 3))))


def test_the_loader_delivers_a_spread_plans_empty_batches_in_turn(corpus):
    """A remnant of 5 samples, all in one shard, dealt to 2 ranks x 2 workers, 2 batches a step,
    one sample a batch: 8 batches, 3 empty.
    Each rank's loader (2 DataLoader workers, real shards) hands over every batch in PlanOrder's
    order, the empty ones as {"ids": []}, and the ranks together every remnant sample once."""
    samples = open_corpus(corpus, allow_random_codec=True).samples
    cut_id = [meta["id"] for shard in samples.shards for _, meta, _ in read_shard(shard)]  # of each sample
    cost = (samples.frames + samples.text_tokens).astype(np.int64)
    keep = np.zeros(len(cost), bool)
    keep[[30, 31, 32, 34, 35]] = True  # shard 5: one rank's, the other would have none
    cfg = BatchingConfig(max_frames=60, buckets=1, shuffle_buffer=4, interleave=2, multiple_of=2)
    plan = plan_epoch(cost, keep, samples.offsets, 0, 2, 2, cfg, remnant=True)
    assert plan.spread and plan.batches_per_rank == 4
    # rank 0: 3 batches and an empty one, rank 1: 2 and 2 empty; a rank's empty ones come last
    assert plan.filled_per_step(2).tolist() == [4, 1]
    ids, empty = [], 0
    for plans in plan.ranks:
        loader = make_loader(samples, plans, None, workers=2)
        got = list(loader)
        assert [(b["worker"], b["index"]) for b in got] == loader.order()
        assert [b["ids"] for b in got] == [[cut_id[i] for i in plans[w].batch(k)] for w, k in loader.order()]
        empty += sum(not b["ids"] for b in got)
        ids += [i for b in got for i in b["ids"]]
    assert empty == 3 and sorted(ids) == sorted(cut_id[i] for i in np.flatnonzero(keep))


def test_a_step_with_empty_micro_batches_averages_over_the_others(corpus, tmp_path):
    """accumulate=2, one micro-batch empty: weight 2 (world x accumulate / 1 that holds samples)
    gives the gradient of the one micro-batch alone; the empty one adds exactly zero."""
    from trainer.metrics import Window

    samples = open_corpus(corpus, allow_random_codec=True)
    cfg = config(1)
    model = build_model(cfg, samples.vocab_size, samples.codebooks)
    data = TrainingData([samples], model)
    batch = next(iter(data.loader(data.plan(cfg, 0, 1, 1, 1), 0, 0)))
    empty = {"ids": [], "speakers": 0, "worker": 0, "index": 1, "padding": 0.0}
    run = SimpleNamespace(device=torch.device("cpu"))

    def gradients(group, weight):
        model.zero_grad(set_to_none=True)
        accumulate_gradients(
            LossModule(model, False), group, run, None, Window(run.device, model.histogram_shape), model, weight
        )
        return [p.grad.clone() for p in model.parameters()]

    alone, with_empty = gradients([batch], 1.0), gradients([batch, empty], 2.0)
    assert all(torch.equal(a, b) for a, b in zip(alone, with_empty))  # halved, doubled: exact
    assert all(torch.equal(g, torch.zeros_like(g)) for g in gradients([empty], 1.0))


@pytest.mark.slow
def test_a_resume_on_two_processes_at_the_epochs_last_step(corpus, tmp_path):
    """One process (accumulate=2) checkpoints one step before its epoch's end; torchrun resumes it
    on 2 processes x 2 loader workers. Too few samples are left for a shard-balanced plan on 2 x 2
    micro-batches a step (before: ValueError, 'use fewer ranks'), so they are dealt out, some
    micro-batches empty; DDP steps on, the epoch ends with every kept sample delivered once, and
    epoch 1 begins."""
    from tests.test_train import torchrun
    from trainer.train import train

    tiny = REPO / "trainer/configs/ar-tiny.yaml"
    both = ["optim.accumulate=2", "data.max_frames=60", "data.interleave=2", "run.eval_every=1000"]  # a cut a batch
    alone = [f"run.out={tmp_path}", "data.workers=0", *both]
    cfg = load_config(tiny, alone)
    samples = open_corpus(corpus, allow_random_codec=True)
    data = TrainingData([samples], build_model(cfg, samples.vocab_size, samples.codebooks))
    steps = data.plan(cfg, 0, 1, 1, 2).batches_per_rank // 2
    stop = [f"run.max_steps={steps - 1}", f"run.checkpoint_every={steps - 1}"]
    train(load_config(tiny, [*alone, *stop]), [corpus], allow_random_codec=True)

    more = ["run.log_every=1", "run.checkpoint_every=1", f"run.max_steps={steps + 2}", "data.workers=2"]
    done = torchrun(corpus, tmp_path, *both, *more, "--resume")
    assert "dealt out batch by batch" in done.stdout and "2 batches are empty" in done.stdout
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").open()]
    remnant = next(r for r in records if r.get("replanned_from"))
    assert remnant["replanned_from"] == {"world": 1, "workers": 1} and remnant["plan_spread"]
    assert remnant["plan_samples"] == 1 and remnant["plan_empty_batches"] == 1  # rank 0's share
    assert [r["epoch"] for r in records if "epoch" in r] == [0, 0, 1]  # then the next epoch began
    assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)
    last = torch.load(tmp_path / f"checkpoint-{steps}.pt", weights_only=True)  # the re-planned epoch's end
    states = [LoaderState.from_dict(s) for s in last["loader"]]
    assert last["world"] == 2 and states[0].epoch == 0
    chain = {**last["layout"], "delivered": [s.delivered for s in states], "replanned": states[0].replanned}
    assert not data.unconsumed(cfg, 0, 2, chain).any()  # every kept sample delivered, none twice (above)
