"""Loader: replay an epoch plan over the shards and yield padded batches, resumable mid-epoch.

In: the samples' shards and offsets (trainer.corpus), this rank's worker plans
(trainer.batching) and how many batches each worker has already delivered. Out: dicts of tensors,
the models' batch format:
  text (B, S) long (pad 0), text_lens (B,), codes (B, K, T) long (pad 0), code_lens (B,),
  ids (list of cut ids), speakers (distinct speakers in the batch), worker, index (this batch's
  position in its worker's plan), padding. An empty batch (the end of an epoch spread over more
  ranks than its samples fill, trainer.batching.spread_plan) has ids [] and no tensors.
A worker keeps its plan's `interleave` shard streams open at once and pulls samples in the
planned read order; a sample no remaining batch needs is skipped undecoded, and a shard with
none is never opened. The resume state is a handful of integers (epoch, batches delivered per
worker): a resumed run skips what was delivered without replaying it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from schemas.reading import read_shard
from trainer.batching import WorkerPlan
from trainer.corpus import Samples


@dataclass
class LoaderState:
    epoch: int = 0
    delivered: list[int] = field(default_factory=list)  # per worker, this epoch
    # The epoch began on another layout (world size, workers) and was re-planned over what it had
    # not consumed: {"world", "workers", "delivered": [per rank, per worker], "replanned": its own}.
    replanned: dict | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "replanned" or v is not None}

    @classmethod
    def from_dict(cls, data: dict) -> LoaderState:
        return cls(int(data["epoch"]), [int(x) for x in data["delivered"]], data.get("replanned"))


class PlanDataset(IterableDataset):
    """Worker w of a DataLoader replays plans[w], skipping its first skip[w] batches."""

    def __init__(self, samples: Samples, plans: list[WorkerPlan], skip: list[int]):
        self.samples, self.plans, self.skip = samples, plans, skip

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info else 0
        if info is None and len(self.plans) != 1:
            raise ValueError("a plan for several workers needs DataLoader(num_workers=len(plans))")
        yield from replay(self.samples, self.plans[worker], self.skip[worker], worker)


def replay(samples: Samples, plan: WorkerPlan, skip: int, worker: int = 0):
    if skip >= plan.batches:
        return
    needed = plan.samples[plan.bounds[skip] :]
    batch_of = dict(
        zip(needed.tolist(), np.repeat(np.arange(skip, plan.batches), np.diff(plan.bounds[skip:])).tolist())
    )
    missing = np.diff(plan.bounds).tolist()  # per batch: samples not read yet
    offsets = samples.offsets
    wanted = {}  # shard -> sorted positions some remaining batch needs
    shard_of = samples.shard_of(needed)
    for s in np.unique(shard_of).tolist():
        wanted[s] = np.sort(needed[shard_of == s] - offsets[s])
    streams, read, loaded = {}, {}, {}
    next_batch = skip

    def complete():  # the batches, in order, whose samples are all read (an empty one at once)
        nonlocal next_batch
        while next_batch < plan.batches and not missing[next_batch]:
            yield collate([loaded.pop(i) for i in plan.batch(next_batch).tolist()], worker, next_batch)
            next_batch += 1

    yield from complete()
    for s in plan.reads.tolist():
        if s not in wanted:
            continue  # nothing in this shard is needed any more: never opened
        position = read.get(s, 0)
        read[s] = position + 1
        sample = int(offsets[s]) + position
        if sample not in batch_of:
            continue
        if s not in streams:
            streams[s] = read_shard(samples.shards[s], wanted[s])
        got, meta, codes = next(streams[s])
        if got != position:
            raise RuntimeError(
                f"{samples.shards[s].uri}: expected sample {position}, read {got}; "
                "the shard does not match lengths.parquet (run valle-prep verify)"
            )
        if position == wanted[s][-1]:
            streams.pop(s).close()
        loaded[sample] = (meta, codes)
        missing[batch_of[sample]] -= 1
        yield from complete()
    if next_batch != plan.batches:
        raise RuntimeError(
            f"worker {worker}: shards ended before batch {next_batch} of {plan.batches} "
            "was complete; the shards do not match lengths.parquet (run valle-prep verify)"
        )


def collate(samples: list[tuple[dict, np.ndarray]], worker: int, index: int) -> dict:
    if not samples:  # an empty batch of a spread plan (trainer.batching.spread_plan): no tensors
        return {"ids": [], "speakers": 0, "worker": worker, "index": index, "padding": 0.0}
    texts = [m["text_tokens"] for m, _ in samples]
    codes = [c for _, c in samples]
    b, k = len(samples), codes[0].shape[0]
    text_lens = np.array([len(t) for t in texts], dtype=np.int64)
    code_lens = np.array([c.shape[1] for c in codes], dtype=np.int64)
    text = np.zeros((b, text_lens.max()), dtype=np.int64)
    audio = np.zeros((b, k, code_lens.max()), dtype=np.int64)
    for i, (t, c) in enumerate(zip(texts, codes)):
        text[i, : len(t)] = t
        audio[i, :, : c.shape[1]] = c
    return {
        "text": torch.from_numpy(text),
        "text_lens": torch.from_numpy(text_lens),
        "codes": torch.from_numpy(audio),
        "code_lens": torch.from_numpy(code_lens),
        "ids": [m["id"] for m, _ in samples],
        "speakers": len({m["speaker"] for m, _ in samples}),
        "worker": worker,
        "index": index,
        "padding": 1.0 - float(code_lens.sum()) / float(b * code_lens.max()),
    }


def make_loader(
    samples: Samples, plans: list[WorkerPlan], skip: list[int] | None, workers: int, pin_memory: bool = False
) -> PlanOrder:
    """The batches of `plans` (one per worker; workers = 0 reads in this process) in the plan's
    order, through a DataLoader. pin_memory on CUDA: page-locked batches make the host-to-device
    copies asynchronous."""
    skip = skip or [0] * len(plans)
    loader = DataLoader(PlanDataset(samples, plans, skip), batch_size=None, num_workers=workers, pin_memory=pin_memory)
    return PlanOrder(loader, [p.batches for p in plans], skip)


class PlanOrder:
    """A rank's batches in one order, round-robin over its workers by batch index: (0, 0), (1, 0),
    ..., (0, 1), (1, 1), ... (a worker whose batches are all out is passed over), the order in
    which a fresh DataLoader hands them over. A resumed DataLoader starts its round-robin at worker
    0 again, whatever worker's turn it was; batches that arrive before their turn wait here (at
    most one per worker), so every resume point continues the same sequence."""

    def __init__(self, loader: DataLoader, batches: list[int], skip: list[int]):
        self.loader, self.batches, self.skip = loader, batches, skip

    def order(self) -> list[tuple[int, int]]:
        """(worker, batch index) of every batch still to come, in delivery order."""
        left = [(index, worker) for worker, n in enumerate(self.batches) for index in range(self.skip[worker], n)]
        return [(worker, index) for index, worker in sorted(left)]

    def __iter__(self):
        waiting, arrivals = {}, iter(self.loader)
        for turn in self.order():
            while turn not in waiting:
                batch = next(arrivals)
                waiting[batch["worker"], batch["index"]] = batch
            yield waiting.pop(turn)
