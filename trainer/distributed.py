"""Process-group facts (rank, world size, device) and the agreements ranks must reach.

In: torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK). Out: a `Run` with collectives that
work the same with one process or many, and two checks that turn a multi-node misconfiguration
into a clear error at startup instead of ranks that silently diverge:
- `check_shared_folder`: every rank must see a file rank 0 writes into run.out (checkpoints are
  written by rank 0 and resumed from by all);
- `agree_on_checkpoint`: rank 0 names the checkpoint to resume from, and every rank must find it.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist


class Run:
    """This process's place in the run. `control_wait_s`: how much longer than torch's default the
    control group waits for a rank (the longest a rank may spend reading before it agrees)."""

    def __init__(self, control_wait_s: float = 0.0):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
        self._control = None  # a gloo group for control messages, made on first use
        self.control_wait_s = control_wait_s
        if self.world > 1:
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def use_device(self) -> None:
        """Make this run's GPU current in the calling thread (each thread has its own; a thread that
        pins memory on another would make a CUDA context there)."""
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)

    def all_gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def sum(self, *values: float) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(t)
        return t.tolist()

    def control_sum(self, values: list[float]) -> list[float]:
        """`sum` over a CPU (gloo) group: a per-step agreement that never waits for the GPU."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, group=self.control_group())
        return t.tolist()

    def control_gather(self, obj) -> list:
        """`all_gather` over the control group."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj, group=self.control_group())
        return out

    def control_group(self):
        """The gloo group of the agreements on data. A rank reaches them after its reads, which may
        take the retry budget and a read timeout (`control_wait_s`): the group waits that long on top
        of torch's default (30 min), so the ranks agree before it gives up."""
        if self._control is None:
            wait = dist.distributed_c10d.default_pg_timeout + timedelta(seconds=self.control_wait_s)
            self._control = dist.new_group(backend="gloo", timeout=wait)
        return self._control

    def sum_tensor(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(t)
        return t

    def close(self) -> None:
        if self.world > 1:
            dist.destroy_process_group()


def _blind(run, found: bool, what: str) -> None:
    """Raise on every rank if any rank did not find what rank 0 made (no rank runs on alone)."""
    seen = run.all_gather((found, socket.gethostname()))
    missing = [f"rank {r} on {host}" for r, (ok, host) in enumerate(seen) if not ok]
    if missing:
        raise RuntimeError(
            f"{', '.join(missing)} cannot see {what}. Checkpoints are written by rank 0 and "
            "resumed from by every rank: run.out must be a folder every node mounts (a shared "
            "file system), or the ranks would resume from different states"
        )


def check_shared_folder(run, out: Path, wait_s: float = 10.0) -> None:
    if run.world == 1:
        return
    token = run.all_gather(os.urandom(8).hex() if run.main else None)[0]
    marker = out / f".shared-{token}"
    if run.main:
        out.mkdir(parents=True, exist_ok=True)
        marker.write_text("rank 0 wrote this; every rank must see it\n")
    run.all_gather(None)  # a barrier: the marker exists before anyone looks
    deadline = time.monotonic() + wait_s
    while not marker.exists() and time.monotonic() < deadline:  # network file systems may lag
        time.sleep(0.5)
    found = marker.exists()
    run.all_gather(None)
    if run.main:
        marker.unlink(missing_ok=True)
    _blind(run, found, f"the file {marker} that rank 0 wrote into run.out")


def agree_on_checkpoint(run, out: Path, newest: Path | None) -> Path | None:
    """Rank 0's newest checkpoint in `out`, which every rank must be able to read."""
    name = run.all_gather(newest.name if run.main and newest else None)[0]
    if name is None:
        return None
    path = out / name
    _blind(run, path.is_file(), f"{path}, the checkpoint rank 0 resumes from")
    return path
