"""Task pools for pipeline.fetch.transfers: where a download's tasks (probe, range, stream, verify) run.

In: a task (a function, its arguments, the key its bytes count under). Out: handles the
scheduler waits on, results, and the bytes each file received since it last asked.
- `ThreadTasks`: threads of this process (in-process runs, tests).
- `RayTasks`: Ray actors pinned to the driver's node, one per connection in use (the production
  path); progress goes through a counter actor, batched.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures

from pipeline.fetch.transfers import Cancelled


class ThreadTasks:
    """Tasks in threads of this process (in-process runs, tests): the GIL is released while
    they wait on sockets and disks, so threads serve I/O as well as processes."""

    def __init__(self, workers: int = 64):
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="download")
        self._counts: Counter = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def submit(self, fn, args, key: str):
        def report(n: int) -> None:
            if self._stop.is_set():
                raise Cancelled("download stopped")
            with self._lock:
                self._counts[key] += n

        return self._executor.submit(fn, *args, report)

    def wait(self, handles, timeout: float):
        return list(wait_futures(handles, timeout, return_when=FIRST_COMPLETED).done)

    def result(self, handle):
        return handle.result()

    def take_progress(self) -> dict[str, int]:
        with self._lock:
            counts, self._counts = dict(self._counts), Counter()
        return counts

    def cancel(self, handles) -> None:
        self._stop.set()  # running tasks stop at their next chunk

    def close(self) -> None:
        self._stop.set()
        self._executor.shutdown(wait=True)

    def __enter__(self) -> ThreadTasks:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RayTasks:
    """Tasks on Ray, pinned to the driver's node (they write files the driver reads): each is a
    call on a transfer actor, one actor per connection in use, kept for the whole download (a
    fresh Ray worker per range would pay a process start per range, and Ray reaps idle workers).
    An actor that dies takes only its own range with it: the scheduler runs that range again
    on a new actor. `init` runs before the first task; it must not start an embedded Ray from
    a download thread (its processes die with that thread): the runner starts Ray first."""

    def __init__(self, init: Callable[[], object] = lambda: None):
        self._init, self._actor_cls, self._counter = init, None, None
        self._idle: list = []  # actors free for the next task
        self._busy: dict = {}  # task ref -> its actor

    def _start(self) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self._init()
        node = ray.get_runtime_context().get_node_id()
        # num_cpus=0: a transfer waits on the network, and the scheduler caps how many run.
        self._actor_cls = ray.remote(_TransferActor).options(
            num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
        )
        self._counter = ray.remote(_ByteCounter).options(num_cpus=0).remote()

    def submit(self, fn, args, key: str):
        if self._actor_cls is None:
            self._start()
        actor = self._idle.pop() if self._idle else self._actor_cls.remote(self._counter)
        ref = actor.run.remote(fn, args, key)
        self._busy[ref] = actor
        return ref

    def wait(self, handles, timeout: float):
        import ray

        ready, _ = ray.wait(handles, num_returns=1, timeout=timeout)
        if ready:  # and whatever else is done by now
            ready, _ = ray.wait(handles, num_returns=len(handles), timeout=0)
        return ready

    def result(self, handle):
        import ray

        actor = self._busy.pop(handle)
        try:
            value = ray.get(handle)
        except ray.exceptions.RayActorError:
            ray.kill(actor)  # lost (its process died): never used again
            raise
        except BaseException:
            self._idle.append(actor)  # the task failed, its actor is fine
            raise
        self._idle.append(actor)
        return value

    def take_progress(self) -> dict[str, int]:
        import ray

        return ray.get(self._counter.take.remote()) if self._counter is not None else {}

    def cancel(self, handles) -> None:
        import ray

        for handle in handles:
            ray.kill(self._busy.pop(handle))

    def close(self) -> None:
        import ray

        if ray.is_initialized():
            for actor in [*self._idle, *self._busy.values(), self._counter]:
                if actor is not None:
                    ray.kill(actor)
        self._idle, self._busy, self._actor_cls, self._counter = [], {}, None, None

    def __enter__(self) -> RayTasks:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _TransferActor:
    """A Ray actor that runs one transfer task at a time, reporting bytes to the counter."""

    def __init__(self, counter):
        self.counter = counter

    def run(self, fn, args, key: str):
        report = _BatchedReport(self.counter, key)
        try:
            return fn(*args, report)
        finally:
            report.flush()


class _ByteCounter:
    """A Ray actor: bytes reported by tasks, per file, until the scheduler takes them."""

    def __init__(self):
        self.counts = Counter()

    def add(self, key: str, n: int) -> None:
        self.counts[key] += n

    def take(self) -> dict[str, int]:
        counts, self.counts = dict(self.counts), Counter()
        return counts


class _BatchedReport:
    """Progress sent to the counter actor at most every 0.5 s (or 16 MB), not every chunk."""

    def __init__(self, counter, key: str):
        self.counter, self.key, self.pending, self.sent_at = counter, key, 0, time.monotonic()

    def __call__(self, n: int) -> None:
        self.pending += n
        if abs(self.pending) >= 16 << 20 or time.monotonic() - self.sent_at >= 0.5:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.counter.add.remote(self.key, self.pending)
        self.pending, self.sent_at = 0, time.monotonic()
