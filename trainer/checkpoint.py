"""Checkpoints: atomic writes, retention, the settings a resume must share, RNG streams.

In: the run folder, the payload rank 0 saves (model, optimizer, schedule, every rank's loader
state and RNG, the data-plan key). Out: `checkpoint-<step>.pt` files, written to a temporary
name, fsynced and renamed (a crash never leaves a torn checkpoint under the real name), and
pruned to the newest `keep_last` plus every step that is a multiple of `keep_every`.
Loaded with `weights_only=True`: nothing in a checkpoint is unpickled as code.

A resume is exact only if the data plan is the same, so the settings that shape it are saved
(`plan_key`) and a resume that changed any of them is refused, naming the key.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

PREFIX = "checkpoint-"
# Bumped whenever the same settings plan an epoch differently (trainer.batching, trainer.loader),
# so a checkpoint is never resumed into another sequence of batches.
# 2: a rank's workers get as many batches as each other; batches come in one round-robin order.
PLANNING_VERSION = 2


def plan_key(cfg, corpora, limits: tuple[int, int]) -> dict:
    """Everything the epoch plans depend on but the layout (world size, workers: a resume on
    another layout re-plans the rest of its epoch), by the name a user would change it with."""
    return {
        "batch planning (its version)": PLANNING_VERSION,
        "data.max_frames": cfg.data.max_frames,
        "data.buckets": cfg.data.buckets,
        "data.shuffle_buffer": cfg.data.shuffle_buffer,
        "data.interleave": cfg.data.interleave,
        "run.seed": cfg.run.seed,
        "optim.accumulate": cfg.optim.accumulate,
        "model.kind": cfg.model.kind,
        "model.group_size": cfg.model.group_size,
        "model length limits (text, frames)": list(limits),
        "corpora (--data, by lengths.parquet sha256)": [c.fingerprint for c in corpora],
    }


def layout(world: int, workers: int) -> dict:
    """How the epoch's batches are spread: over `world` processes of `workers` loader workers."""
    return {"world": world, "workers": max(1, workers)}


def check_plan_key(saved: dict | None, current: dict, path: Path) -> None:
    if saved is None:
        raise ValueError(f"{path} predates data-plan keys; it cannot be resumed exactly by this version")
    for key, value in current.items():
        if saved.get(key) != value:
            raise ValueError(
                f"{path}: {key} was {saved.get(key)!r} when it was saved, now {value!r}; a resumed "
                "run must plan its data the same way. Restore the setting, or start a new run.out"
            )


def step_of(path: Path) -> int:
    return int(path.stem[len(PREFIX) :])


def checkpoints(out: Path) -> list[Path]:
    return sorted(out.glob(f"{PREFIX}*.pt"), key=step_of)


def save(out: Path, payload: dict, step: int, keep_last: int, keep_every: int) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    final = out / f"{PREFIX}{step}.pt"
    tmp = out / f".{final.name}.tmp"
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    _fsync_dir(out)
    prune(out, keep_last, keep_every)
    return final


def prune(out: Path, keep_last: int, keep_every: int) -> list[Path]:
    """Remove checkpoints beyond the newest keep_last, except multiples of keep_every."""
    found = checkpoints(out)
    doomed = [p for p in found[:-keep_last] if not (keep_every and step_of(p) % keep_every == 0)]
    for path in doomed:
        path.unlink()
    return doomed


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state(generator: torch.Generator) -> dict:
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "model": generator.get_state(),
        "numpy": {
            "keys": [int(x) for x in keys],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },  # plain data: checkpoints load with weights_only
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["model"])
    n = state["numpy"]
    np.random.set_state(("MT19937", np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
