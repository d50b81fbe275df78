"""Elastic resume: an epoch stopped at a step on one layout (ranks x loader workers) and resumed on
another, at every point of the epoch; and the cost of re-planning after n layout changes.

    python bench/bench_elastic.py [--points 100] [--changes 7] [--accumulate 1] [--max-frames 40000]

Lengths are generated as bench/bench_planner.py does (Libriheavy-like), 100 samples a shard, and
planned with the ar-base settings (trainer/configs/ar-base.yaml; `--max-frames` overrides its
data.max_frames). Nothing is read: a rank's batches are taken in the order
trainer.loader.PlanOrder delivers them, the loader states saved as a checkpoint saves them, and
the resume goes through TrainingData.resume_elsewhere and .plan, as `valle-train --resume` does.
For each layout change: of `--points` resume points spread over the epoch plus its last 10
steps, how many fail (raise) and the first that does, how many re-planned rests are spread
(trainer.batching.spread_plan), and whether, over the resumes that ran, the samples delivered
before plus the rest's plan are every kept sample exactly once, with as many batches on every
rank, a multiple of optim.accumulate. Then `--changes` successive layout changes in one epoch:
the plan_epoch calls of the last resume (resume_elsewhere, then plan) and their time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_planner import libriheavy_like  # noqa: E402

import trainer.train as train_module  # noqa: E402
from trainer.batching import consumed_samples  # noqa: E402
from trainer.config import load_config  # noqa: E402
from trainer.loader import LoaderState, PlanOrder  # noqa: E402
from trainer.train import TrainingData  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CASES = [  # (shards, old layout, new layout): the issue's, and a shrink
    (1000, (1, 1), (64, 2)),
    (1000, (2, 2), (16, 4)),
    (40, (1, 1), (16, 1)),
    (1000, (64, 2), (1, 1)),
]
CHAIN = [(1, 1), (2, 2), (4, 1), (1, 2), (8, 2), (2, 1), (3, 3), (16, 2), (5, 1)]


def training_data(shards: int, per_shard: int = 100) -> TrainingData:
    """TrainingData over generated lengths (its plan and resume code only reads these)."""
    cost, _, _ = libriheavy_like(shards * per_shard, shards)
    data = TrainingData.__new__(TrainingData)
    data.samples = SimpleNamespace(offsets=np.arange(0, shards * per_shard + 1, per_shard))
    data.cost, data.keep, data.too_long, data._unconsumed = cost, cost <= 3000 + 512, 0, None
    return data


def delivered_after(plan, steps: int, accumulate: int) -> list[list[int]]:
    """Batches each rank's workers delivered after `steps` optimizer steps."""
    out = []
    for plans in plan.ranks:
        delivered = [0] * len(plans)
        for worker, _ in PlanOrder(None, [w.batches for w in plans], [0] * len(plans)).order()[: steps * accumulate]:
            delivered[worker] += 1
        out.append(delivered)
    return out


def checkpoint_of(plan, layout, steps: int, accumulate: int, replanned) -> dict:
    states = [LoaderState(plan.epoch, d, replanned).to_dict() for d in delivered_after(plan, steps, accumulate)]
    return {"loader": states, "layout": {"world": layout[0], "workers": layout[1]}}


def resume(data, cfg, saved: dict, layout) -> tuple[LoaderState, object]:
    state = data.resume_elsewhere(cfg, saved, {"world": layout[0], "workers": layout[1]})
    return state, data.plan(cfg, state.epoch, *layout, cfg.optim.accumulate, state.replanned)


def exactly_once(data, before, saved: dict, state, after, accumulate: int) -> bool:
    delivered = consumed_samples(before, [s["delivered"] for s in saved["loader"]])
    rest = [w.samples for plans in after.ranks for w in plans] if state.epoch == before.epoch else []
    both = np.concatenate([delivered, *rest])
    counts = {sum(w.batches for w in plans) for plans in after.ranks}
    even = len(counts) == 1 and counts.pop() % accumulate == 0
    return even and len(both) == len(np.unique(both)) == int(data.keep.sum())


def layout_changes(cfg, points: int) -> list[tuple]:
    rows, accumulate = [], cfg.optim.accumulate
    for shards, old, new in CASES:
        data = training_data(shards)
        before = data.plan(cfg, 0, *old, accumulate)
        steps = before.batches_per_rank // accumulate
        where = sorted({round(k * steps / points) for k in range(1, points)} | set(range(steps - 10, steps)))
        failed, spread, once = [], 0, True
        for step in where:
            saved = checkpoint_of(before, old, step, accumulate, None)
            try:
                state, after = resume(data, cfg, saved, new)
            except ValueError:
                failed.append(step)
                continue
            spread += bool(getattr(after, "spread", False))
            once = once and exactly_once(data, before, saved, state, after, accumulate)
        first = f"step {failed[0]} of {steps} ({failed[0] / steps:.1%})" if failed else "-"
        change = f"{old[0]}x{old[1]} -> {new[0]}x{new[1]}"
        rows.append((f"{shards} x 100", change, f"{len(failed)} / {len(where)}", first, spread, once))
    return rows


def chain_cost(cfg, changes: int) -> list[tuple]:
    """plan_epoch calls and seconds of the last resume after each of `changes` layout changes."""
    data, accumulate, rows = training_data(1000), cfg.optim.accumulate, []
    real, calls = train_module.plan_epoch, [0]

    def counted(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    train_module.plan_epoch = counted
    try:
        layout, state = CHAIN[0], LoaderState(0, [0] * CHAIN[0][1])
        plan = data.plan(cfg, 0, *layout, accumulate)
        for change, new in enumerate(CHAIN[1 : changes + 1], 1):
            steps = max(1, plan.batches_per_rank // accumulate // 10)  # a tenth of what is left
            saved = checkpoint_of(plan, layout, steps, accumulate, state.replanned)
            data._unconsumed, calls[0], start = None, 0, time.perf_counter()  # a fresh process resumes
            state, plan = resume(data, cfg, saved, new)
            rows.append((change, calls[0], f"{time.perf_counter() - start:.2f} s"))
            layout = new
    finally:
        train_module.plan_epoch = real
    return rows


def table(header: tuple, rows: list[tuple]) -> None:
    cells = [tuple(map(str, r)) for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=100, help="resume points spread over the epoch")
    parser.add_argument("--changes", type=int, default=7, help="successive layout changes in one epoch")
    parser.add_argument("--accumulate", type=int, default=1, help="optim.accumulate")
    parser.add_argument("--max-frames", type=int, default=40_000, help="data.max_frames")
    args = parser.parse_args()
    if args.changes >= len(CHAIN):
        parser.error(f"--changes: at most {len(CHAIN) - 1}")
    overrides = [f"optim.accumulate={args.accumulate}", f"data.max_frames={args.max_frames}"]
    cfg = load_config(REPO / "trainer/configs/ar-base.yaml", overrides)

    flags = (
        f"--points {args.points} --changes {args.changes} --accumulate {args.accumulate} --max-frames {args.max_frames}"
    )
    print(f"$ python bench/bench_elastic.py {flags}")
    print(f"(ar-base data settings, interleave {cfg.data.interleave}, shuffle_buffer {cfg.data.shuffle_buffer})\n")
    header = ("shards x samples", "ranks x workers", "resumes failed", "first failure", "spread", "each sample once")
    table(header, layout_changes(cfg, args.points))
    table(("layout changes", "plan_epoch calls (last resume)", "its time"), chain_cost(cfg, args.changes))


if __name__ == "__main__":
    main()
