"""Manifest blocks parsed on several cores, results handed back in block order.

In: (first line number, block of whole lines) from `pipeline.plan.manifest.read_blocks`. Out: per
block, its `ManifestScan` and its compact lines as bytes (`pipeline.plan.manifest.parse_block`),
in the order of the blocks, so merging them gives exactly the scan and the compact file of a
single-threaded pass: the plan cannot tell how it was parsed.

One thread inflates the gzip stream (a single gzip stream cannot be split before it is inflated)
and cuts it into line-aligned blocks; workers parse them. Per 1 M Libriheavy lines, inflating
takes ~4 s with ISA-L and parsing ~11 s on one core, so ~3-4 workers keep up with one inflater
and more add nothing. Three kinds of workers, the same results:
- `SerialParsers`: in the calling thread (the reference; tiny manifests);
- `ProcessParsers`: a pool of processes on this machine (the default);
- `RayParsers`: Ray tasks pinned to this node (for a driver already inside a Ray session): the
  inflated bytes (~3.4 kB a line, ~40 GB for large) stay in this node's shared memory instead of
  crossing the network.
Memory is bounded: at most `in_flight` blocks (8 MB each by default) are out at once, and what
comes back is bytes and fixed-width digests, not an object per line.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from pipeline.plan.manifest import BLOCK_BYTES, ManifestScan, parse_block

MAX_WORKERS = 8  # beyond ~4 the single inflater is the bound (see above)
# Smaller manifests (~50 k lines, ~2 s of parsing) are parsed in the planning thread: starting
# worker processes would cost about as much as it saves.
PARALLEL_FROM_BYTES = 32 * 1024 * 1024


class PlanningStopped(RuntimeError):
    """The planning was stopped (an error elsewhere, or Ctrl-C) while blocks were still parsing."""


class SerialParsers:
    """Parse in the calling thread."""

    workers = 1

    def __init__(self, block_bytes: int = BLOCK_BYTES):
        self.block_bytes = block_bytes

    @property
    def in_flight(self) -> int:
        return 1

    def submit(self, *args):
        return parse_block(*args)

    def result(self, handle):
        return handle

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ProcessParsers(SerialParsers):
    """A pool of `workers` processes (started once; shared by every subset planned at a time)."""

    def __init__(self, workers: int | None = None, block_bytes: int = BLOCK_BYTES):
        super().__init__(block_bytes)
        self.workers = workers or default_workers()
        # spawn, not fork: the driver has threads (the inflaters, Ray's), and a forked child
        # could inherit a lock one of them held
        self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))

    @property
    def in_flight(self) -> int:
        return 2 * self.workers  # one block parsing and one queued per worker

    def submit(self, *args):
        return self.pool.submit(parse_block, *args)

    def result(self, handle):
        return handle.result()

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)


class RayParsers(SerialParsers):
    """Ray tasks on this node; Ray must already be initialized."""

    def __init__(self, workers: int | None = None, block_bytes: int = BLOCK_BYTES):
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        super().__init__(block_bytes)
        cpus = ray_node_cpus()
        if not cpus:
            raise RuntimeError(
                "RayParsers needs ray.init() first, on a node with CPUs for Ray tasks; use ProcessParsers otherwise"
            )
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.workers = workers or max(1, min(cpus, MAX_WORKERS))
        self.ray = ray
        self.task = ray.remote(parse_block).options(num_cpus=1, max_retries=3, scheduling_strategy=here)
        self.pending: set = set()  # tasks submitted and not yet taken
        self.closed = False

    @property
    def in_flight(self) -> int:
        return 2 * self.workers

    def submit(self, *args):
        if self.closed:
            raise PlanningStopped("planning stopped: no more blocks are parsed")
        handle = self.task.remote(*args)
        self.pending.add(handle)
        return handle

    def result(self, handle):
        try:
            if self.closed:
                raise PlanningStopped("planning stopped: no more blocks are parsed")
            return self.ray.get(handle)
        finally:
            self.pending.discard(handle)

    def close(self) -> None:
        """Cancel the tasks in flight (an error, or Ctrl-C): the planning threads waiting on them
        stop within seconds instead of parsing the rest of the manifest."""
        self.closed = True
        for handle in list(self.pending):
            self.ray.cancel(handle, force=True)


def default_workers() -> int:
    return max(1, min(len(os.sched_getaffinity(0)), MAX_WORKERS))


def ray_node_cpus() -> int:
    """CPUs that Ray may use on this node (0 without a Ray session, or on a head node started
    with --num-cpus 0, where tasks pinned here would never run)."""
    import ray

    if not ray.is_initialized():
        return 0
    here = ray.get_runtime_context().get_node_id()
    return int(next((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["NodeID"] == here), 0))


def default_parsers() -> SerialParsers:
    """Ray tasks when this process is already in a Ray session (with CPUs on this node), else a
    process pool, else (one CPU) this thread."""
    if ray_node_cpus():
        return RayParsers()
    return ProcessParsers() if default_workers() > 1 else SerialParsers()


def small_manifest(manifest: Path) -> bool:
    return manifest.stat().st_size < PARALLEL_FROM_BYTES


@contextmanager
def parsers_for(manifest: Path, parsers: SerialParsers | None):
    """`parsers` if given, else the default for this manifest's size (closed afterwards)."""
    if parsers is not None:
        yield parsers
        return
    with SerialParsers() if small_manifest(manifest) else default_parsers() as chosen:
        yield chosen


def parse_in_order(
    blocks: Iterable[tuple[int, bytes]], lines, subset: str, parsers: SerialParsers
) -> Iterator[tuple[ManifestScan, bytes]]:
    """Each block's (scan, compact lines by the line parser `lines`), in block order, with at
    most `in_flight` out."""
    pending: deque = deque()
    for first_line, block in blocks:
        pending.append(parsers.submit(block, first_line, lines, subset))
        if len(pending) >= parsers.in_flight:
            yield parsers.result(pending.popleft())
    while pending:
        yield parsers.result(pending.popleft())
