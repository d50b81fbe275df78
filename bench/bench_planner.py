"""Epoch planning at Libriheavy-large size: time and memory of one rank's plan (all ranks' plans).

    python bench/bench_planner.py [--samples 12000000] [--shards 2800] [--world 16] [--workers 4]

Generates per-sample lengths shaped like Libriheavy (durations 1-30 s, about 15.7 s mean: codec
frames at 75/s plus about 3 BPE tokens per second), as consecutive cuts of one book per shard,
and plans one epoch as every rank does at the start of each epoch (trainer.batching.plan_epoch:
all ranks' plans, so each knows the others' batch counts). Reports wall time and the peak of
memory allocated while planning (tracemalloc sees numpy's buffers), plus the plan's batches,
padding and speakers per batch. Goal: under 10 s and 1 GB per rank for 12 M samples.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.batching import BatchingConfig, plan_epoch, plan_stats  # noqa: E402


def libriheavy_like(samples: int, shards: int, seed: int = 0):
    """(cost in positions, offsets, speakers): shard sizes vary +-20 % around the mean."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(8, 13, shards).astype(np.float64)
    sizes = np.floor(sizes / sizes.sum() * samples).astype(np.int64)
    sizes[: samples - sizes.sum()] += 1
    seconds = np.clip(rng.lognormal(np.log(14.0), 0.45, samples), 1.0, 30.0)
    frames = np.round(seconds * 75).astype(np.int64)
    text = np.maximum(1, np.round(seconds * rng.uniform(2.5, 3.5, samples))).astype(np.int64)
    speakers = np.repeat(rng.integers(0, 6736, shards), sizes).astype(np.int32)  # one book per shard
    return frames + text, np.concatenate([[0], np.cumsum(sizes)]), speakers


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=12_000_000)
    parser.add_argument("--shards", type=int, default=2800)
    parser.add_argument("--world", type=int, default=16)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--max-frames", type=int, default=40_000)
    parser.add_argument("--interleave", type=int, default=64)
    args = parser.parse_args()

    cost, offsets, speakers = libriheavy_like(args.samples, args.shards)
    keep = cost <= 3000 + 512
    cfg = BatchingConfig(max_frames=args.max_frames, interleave=args.interleave)
    tracemalloc.start()
    start = time.perf_counter()
    plan = plan_epoch(cost, keep, offsets, epoch=0, world=args.world, workers=args.workers, cfg=cfg)
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    stats = plan_stats(plan.ranks[0], cost, speakers, None)

    print(
        f"$ python bench/bench_planner.py --samples {args.samples} --shards {args.shards} "
        f"--world {args.world} --workers {args.workers} --max-frames {args.max_frames} "
        f"--interleave {args.interleave}"
    )
    rows = [
        ("samples planned (all ranks)", f"{int(keep.sum()):,}"),
        ("plan time per rank (goal < 10 s)", f"{seconds:.2f} s"),
        ("peak memory while planning (goal < 1 GB)", f"{peak / 2**30:.2f} GB"),
        ("batches per rank", f"{plan.batches_per_rank:,}"),
        ("padding (rank 0)", f"{stats['padding']:.3f}"),
        ("mean samples per batch (rank 0)", f"{stats['samples'] / stats['batches']:.1f}"),
        ("distinct speakers per batch (rank 0)", f"{stats['speakers_per_batch']:.1f}"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
