"""Loader: replay an epoch plan over the shards and yield padded batches, resumable mid-epoch.

In: a corpus (trainer.corpus), this rank's worker plans (trainer.batching) and how many batches
each worker has already delivered. Out: dicts of tensors, the models' batch format:
  text (B, S) long (pad 0), text_lens (B,), codes (B, K, T) long (pad 0), code_lens (B,),
  ids (list of cut ids), worker, index (this batch's position in its worker's plan), padding.
The resume state is a handful of integers (epoch, batches delivered per worker): a resumed run
skips what was delivered without reading shards it no longer needs and without replaying them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from trainer.batching import WorkerPlan
from trainer.corpus import Shard, read_shard


@dataclass
class LoaderState:
    epoch: int = 0
    delivered: list[int] = field(default_factory=list)  # per worker, this epoch

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LoaderState":
        return cls(epoch=int(data["epoch"]), delivered=[int(x) for x in data["delivered"]])


class PlanDataset(IterableDataset):
    """Worker w of a DataLoader replays plans[w], skipping its first skip[w] batches."""

    def __init__(self, shards: list[Shard], plans: list[WorkerPlan], skip: list[int]):
        self.shards, self.plans, self.skip = shards, plans, skip

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info else 0
        if info is None and len(self.plans) != 1:
            raise ValueError("a plan for several workers needs DataLoader(num_workers=len(plans))")
        yield from replay(self.shards, self.plans[worker], self.skip[worker], worker)


def replay(shards: list[Shard], plan: WorkerPlan, skip: int, worker: int = 0):
    batches = plan.batches
    needed = {ref: i for i, batch in enumerate(batches[skip:], start=skip) for ref in batch}
    loaded: dict = {}
    next_batch = skip
    for s in plan.shards:
        if next_batch >= len(batches):
            break
        if not any((s, pos) in needed for pos in range(shards[s].samples)):
            continue  # everything this shard holds was delivered before the resume
        for pos, meta, codes in read_shard(shards[s]):
            if (s, pos) in needed:
                loaded[(s, pos)] = (meta, codes)
            while next_batch < len(batches) and all(r in loaded for r in batches[next_batch]):
                yield collate([loaded.pop(r) for r in batches[next_batch]], worker, next_batch)
                next_batch += 1
    if next_batch != len(batches):
        raise RuntimeError(f"worker {worker}: shards ended before batch {next_batch} of {len(batches)} "
                           "was complete; the shards do not match lengths.parquet (run valle-prep verify)")


def collate(samples: list[tuple[dict, np.ndarray]], worker: int, index: int) -> dict:
    texts = [m["text_tokens"] for m, _ in samples]
    codes = [c for _, c in samples]
    b, k = len(samples), codes[0].shape[0]
    s_max, t_max = max(len(t) for t in texts), max(c.shape[1] for c in codes)
    text = torch.zeros(b, s_max, dtype=torch.long)
    audio = torch.zeros(b, k, t_max, dtype=torch.long)
    for i, (t, c) in enumerate(zip(texts, codes)):
        text[i, : len(t)] = torch.as_tensor(t)
        audio[i, :, : c.shape[1]] = torch.from_numpy(c.astype(np.int64))
    code_lens = torch.tensor([c.shape[1] for c in codes])
    return {
        "text": text, "text_lens": torch.tensor([len(t) for t in texts]),
        "codes": audio, "code_lens": code_lens, "ids": [m["id"] for m, _ in samples],
        "worker": worker, "index": index,
        "padding": 1.0 - float(code_lens.sum()) / float(b * t_max),
    }
