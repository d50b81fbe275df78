"""Outages of the training data: every read the trainer makes gives data, or one clean stop of
every rank at the same point.

In: the run's read settings (`data.retry_minutes`, `data.read_timeout_s`), the reads (the corpora
at startup, the training batches, the dev set) and the run's ranks. Out: the data, or
`DataUnavailable` raised on every rank, naming the rank that could not read, why, the step, the
newest checkpoint, and ending with how to go on (`--resume` once the storage is back).

- A read that fails is retried within the budget by the storage layer (storage.remote: remote
  objects and local files alike); what still fails raises an OSError (StorageError) here.
- A read that hangs (an NFS hard mount, a file server that never answers) cannot be interrupted
  in its thread. So the reads run in a helper thread, and a rank waits for each batch (or for
  the corpora at startup) at most `Reads.stall_s`: the retry budget plus the read timeout.
  Past that, it declares its data unavailable (`ReadStalled`) and leaves the stuck read behind.
- After each read the ranks agree over the CPU control group (one small all-reduce: one flag per
  rank) before any collective on the training group, so no rank waits in NCCL for another's
  reads, and the control group waits `stall_s` longer than its default timeout
  (trainer.distributed). If any rank failed, every rank raises the same DataUnavailable.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from storage.remote import StorageError
from trainer import checkpoint

T = TypeVar("T")


class DataUnavailable(RuntimeError):
    """A rank could not read its data within the retry budget; every rank stopped at one step."""


class ReadStalled(StorageError):
    """No data came for `Reads.stall_s`: a read hangs."""


@dataclass(frozen=True)
class Reads:
    """How long the trainer's reads may fail (`retry_s`, without progress) and give nothing at all
    (`timeout_s`, one read) before its rank declares its data unavailable."""

    retry_s: float
    timeout_s: float

    @classmethod
    def of(cls, data) -> Reads:
        """The reads of a config's `data` section."""
        return cls(data.retry_minutes * 60, data.read_timeout_s)

    @property
    def stall_s(self) -> float:
        """The longest a rank waits for one batch (or for the corpora at startup)."""
        return self.retry_s + self.timeout_s


def fetched(items: Iterable[T], reads: Reads, what: str, setup: Callable[[], None] = lambda: None) -> Iterator[T]:
    """`items`, each read by a helper thread (started with `setup()`) while this one waits for it at
    most `reads.stall_s`; past that, ReadStalled. An exception of the reads is raised here."""
    source, asks, answers = iter(items), queue.SimpleQueue(), queue.SimpleQueue()
    end, in_flight = object(), False

    def read() -> None:
        setup()
        while asks.get():
            try:
                answers.put((next(source, end), None))
            except BaseException as err:  # noqa: BLE001 (handed to the waiting thread, raised there)
                answers.put((None, err))

    helper = threading.Thread(target=read, name=f"valle-read-{what}", daemon=True)
    helper.start()
    try:
        while True:
            asks.put(True)
            in_flight = True
            try:
                item, error = answers.get(timeout=reads.stall_s)
            except queue.Empty:
                raise ReadStalled(
                    f"no {what} came in {reads.stall_s:g} s (data.retry_minutes + data.read_timeout_s): its reads "
                    "hang or keep failing (a file server that does not answer, an NFS hard mount?)"
                ) from None
            in_flight = False
            if error is not None:
                raise error
            if item is end:
                return
            yield item
    finally:
        asks.put(False)
        if not in_flight:  # the helper waits for the next ask: it ends, and the reads (loader workers) close here
            helper.join()
            getattr(source, "close", lambda: None)()


def call_within(read: Callable[[], T], reads: Reads, what: str) -> T:
    """`read()`, run by a helper thread and waited for at most `reads.stall_s` (ReadStalled)."""

    def once():
        yield read()

    return next(fetched(once(), reads, what))


def leave_stuck_reads(code: int) -> None:
    """Exit now with `code`, after a read of this rank stalled: its thread, or a loader worker, may
    be stuck in the kernel for good (an NFS hard mount), and a normal exit would wait for them.
    The loader workers are killed (SIGKILL reaches a read that waits on an NFS server)."""
    for worker in multiprocessing.active_children():
        worker.kill()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def one_line(err: BaseException) -> str:
    """The error's own message on one line. An error raised in a DataLoader worker arrives with the
    worker's traceback in its message: its last line is the error as the worker raised it."""
    text = str(err).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        name, _, message = last.partition(": ")
        if name.rpartition(".")[2] == type(err).__name__:
            return message
        return last
    return " ".join(text.split()) or type(err).__name__


def agree_on_data(run, failed: BaseException | None, out: Path, where: str) -> None:
    """Every rank says whether its reads failed (`failed`); if any did, every rank raises the same
    DataUnavailable, naming the first failing rank, its reason and `where` ("at step 12")."""
    flags = run.control_sum([float(failed is not None and r == run.rank) for r in range(run.world)])
    stopped = [r for r, flag in enumerate(flags) if flag]
    if not stopped:
        return
    reasons = run.control_gather(one_line(failed) if failed is not None else None)
    others = f" (and {len(stopped) - 1} other rank{'s' if len(stopped) > 2 else ''})" if len(stopped) > 1 else ""
    newest = checkpoint.checkpoints(out)[-1:] if out.is_dir() else []
    raise DataUnavailable(
        f"rank {stopped[0]}{others} cannot read its data ({reasons[stopped[0]]}); every rank stopped {where}. "
        f"{f'The newest checkpoint is {newest[0].name}: o' if newest else 'No checkpoint was written yet: o'}"
        "nce the storage is back, run the same command with --resume (data.retry_minutes sets how long "
        "a failing read is retried)"
    ) from failed


def agreed_read(run, read: Callable[[], T], reads: Reads, out: Path, where: str) -> T:
    """`read()` on every rank (within `reads.stall_s`), or DataUnavailable on every rank if any
    rank's read failed or hung."""
    value, failed = None, None
    try:
        value = call_within(read, reads, "data")
    except OSError as err:
        failed = err
    agree_on_data(run, failed, out, where)
    return value


def agreed_steps(steps: Iterator[T], run, out: Path, step: int) -> Iterator[T]:
    """The epoch's optimizer steps while every rank has its data. A rank whose reads fail (an
    OSError: retried for `data.retry_minutes` by storage.remote, or ReadStalled) stops every rank
    at the same step: the ranks agree on each step over the CPU control group, so none is left
    waiting in a collective for the one that failed."""
    while True:
        failed = None
        try:
            group = next(steps)
        except StopIteration:  # every rank has as many batches: all end together
            return
        except OSError as err:
            group, failed = None, err
        agree_on_data(run, failed, out, f"at step {step}")
        yield group
        step += 1
