"""Batching: plan one epoch's batches for every DDP rank and DataLoader worker, from lengths only.

In: the shards' per-sample lengths (codec frames + text tokens, from lengths.parquet), the epoch,
seed, world size and worker count. Out: for each rank and worker, its shards in reading order and
its batches as lists of (shard index, position). Every rank computes the same plan for all ranks,
so each knows the others' batch counts without communicating:
- shard order is shuffled per epoch from the seed; shards go to ranks (then workers) greedily by
  audio frames, so ranks read about the same amount;
- each worker streams its samples through a shuffle buffer into length buckets and closes a bucket
  when one more sample would make (count x longest) exceed the frame budget;
- ranks with fewer batches split their largest batches until every rank has the same count (a
  rank that runs dry would hang DDP), so every sample is still in exactly one batch.
Because the plan is a replayable simulation of the stream, a worker reading its shards in order
emits each batch as soon as its samples have been read, with memory bounded by the buffer.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SampleRef = tuple[int, int]  # (index into the corpus's shard list, position in that shard)


@dataclass(frozen=True)
class BatchingConfig:
    max_frames: int = 20_000  # budget per batch: count x longest (codec frames + text tokens)
    buckets: int = 10  # length buckets (quantiles of the corpus's lengths)
    shuffle_buffer: int = 2_000  # samples held per worker to shuffle across shard boundaries
    seed: int = 0


@dataclass
class WorkerPlan:
    shards: list[int]  # reading order
    batches: list[list[SampleRef]]


@dataclass
class EpochPlan:
    epoch: int
    ranks: list[list[WorkerPlan]]  # [rank][worker]

    @property
    def batches_per_rank(self) -> int:
        return sum(len(w.batches) for w in self.ranks[0])


def sample_lengths(frames: list[np.ndarray], text: list[np.ndarray]) -> list[np.ndarray]:
    return [f + t for f, t in zip(frames, text)]


def plan_epoch(lengths: list[np.ndarray], epoch: int, world: int, workers: int,
               cfg: BatchingConfig) -> EpochPlan:
    """lengths[i] = per-sample lengths of shard i. Deterministic in all arguments."""
    if sum(len(x) for x in lengths) < world:
        raise ValueError(f"{sum(len(x) for x in lengths)} samples cannot feed {world} ranks")
    rng = np.random.default_rng([cfg.seed, epoch])
    order = [int(i) for i in rng.permutation(len(lengths))]
    edges = _bucket_edges(np.concatenate(lengths) if lengths else np.zeros(0), cfg.buckets)
    ranks = []
    for rank, rank_shards in enumerate(_balance(order, lengths, world)):
        plans = []
        for worker, shards in enumerate(_balance(rank_shards, lengths, workers)):
            worker_rng = np.random.default_rng([cfg.seed, epoch, rank, worker])
            plans.append(WorkerPlan(shards, _stream_batches(shards, lengths, edges, cfg, worker_rng)))
        ranks.append(plans)
    _equalize(ranks, lengths)
    return EpochPlan(epoch, ranks)


def _balance(shards: list[int], lengths: list[np.ndarray], parts: int) -> list[list[int]]:
    """Give each shard, in order, to the part with the least audio so far (ties: lowest index)."""
    out, load = [[] for _ in range(parts)], [0] * parts
    for s in shards:
        target = min(range(parts), key=lambda p: (load[p], p))
        out[target].append(s)
        load[target] += int(lengths[s].sum())
    return out


def _bucket_edges(all_lengths: np.ndarray, buckets: int) -> np.ndarray:
    if not len(all_lengths) or buckets <= 1:
        return np.zeros(0)
    return np.unique(np.quantile(all_lengths, np.linspace(0, 1, buckets + 1)[1:-1]))


def _stream_batches(shards, lengths, edges, cfg: BatchingConfig, rng) -> list[list[SampleRef]]:
    buffer: list[SampleRef] = []
    buckets: dict[int, list[SampleRef]] = {}
    longest: dict[int, int] = {}
    batches: list[list[SampleRef]] = []

    def place(ref: SampleRef) -> None:
        size = int(lengths[ref[0]][ref[1]])
        b = int(np.searchsorted(edges, size, side="right"))
        bucket = buckets.setdefault(b, [])
        if bucket and (len(bucket) + 1) * max(longest[b], size) > cfg.max_frames:
            batches.append(bucket)
            bucket = buckets[b] = []
        longest[b] = max(longest[b], size) if bucket else size
        bucket.append(ref)

    def pop_random() -> SampleRef:
        i = int(rng.integers(len(buffer)))
        buffer[i], buffer[-1] = buffer[-1], buffer[i]
        return buffer.pop()

    for s in shards:
        for pos in range(len(lengths[s])):
            buffer.append((s, pos))
            if len(buffer) >= cfg.shuffle_buffer:
                place(pop_random())
    while buffer:
        place(pop_random())
    batches += [buckets[b] for b in sorted(buckets) if buckets[b]]
    return batches


def _equalize(ranks: list[list[WorkerPlan]], lengths) -> None:
    """Split the largest batches of short ranks until every rank has the same number."""
    target = max(sum(len(w.batches) for w in plans) for plans in ranks)
    for rank, plans in enumerate(ranks):
        while sum(len(w.batches) for w in plans) < target:
            size, w, i = max(((len(b), -w, -i) for w, p in enumerate(plans) for i, b in enumerate(p.batches)),
                             default=(0, 0, 0))
            w, i = -w, -i
            if size < 2:
                raise ValueError(f"rank {rank} has too few samples for {target} batches ({len(lengths)} "
                                 f"shards for {len(ranks)} ranks); use fewer ranks, smaller shards "
                                 "(output.target_shard_mb) or a smaller frame budget")
            batch = plans[w].batches[i]
            plans[w].batches[i:i + 1] = [batch[: size // 2], batch[size // 2:]]
