"""Concurrent downloads: several files at once, large ones as byte ranges, a cap per host.

In: `FileJob`s (url, dest, checksum) in the order they are wanted, `DownloadSettings` and a task
pool (pipeline.fetch.transfer_pools): `RayTasks` (the production path) or `ThreadTasks` (in-process
runs, tests).
Out: every file verified at its dest with its `.done.json` marker, exactly as storage.download
leaves it; `Transfers.wait(dest)` blocks for one file only, so the caller can plan a manifest
while the archives are still arriving.

A scheduler thread in the driver owns all state: it probes each file (storage.ranged.probe),
then submits one task per connection, never more than `connections` at once per host, files in
the order given (manifests first). A file longer than one range whose server answers 206 goes
as ranges (storage.ranged); any other file as one resumable stream (storage.download). Only
the scheduler writes a file's range ledger, after a range task has returned (its bytes
fsynced). A task that is lost (its process died, or any error that is not a DownloadError) is
submitted again, up to `task_retries` times, while the other ranges go on; a `DownloadError` (404, checksum,
retries exhausted, full disk) fails its file alone, and `wait` raises it. A file that changed on
the server (`RemoteChanged`: its validator, length or ranges are not the probed ones) starts over,
up to `task_retries` times; a server that answers a range with the whole file (`RangesIgnored`)
gets the file as one stream, which later runs resume as a stream too. Each file is locked
(`.locks/<name>.lock` beside it, storage.locks: flock and a heartbeat record, so the lock holds
across hosts whose flock is node-local) while this process fetches it, so outputs sharing a
`download_dir` never write one file at once: another run waits, then finds it downloaded. A run
that finds its lock of a file taken over (it was paused past the stale time) stops that file:
`wait` raises `LockLost`. Progress: one bar per file (bytes, rate, ETA) and a total, fed by the
tasks' byte counts.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from storage.download import DiskFull, DownloadError, download, is_downloaded, part_path, read_marker, streaming
from storage.hashing import Checksum
from storage.http import BearerToken
from storage.locks import HeldLock, LockBusy, LockGuard, LockLost, describe, take
from storage.ranged import (
    RangeJob,
    RangeLedger,
    RangesIgnored,
    RemoteChanged,
    discard,
    fetch_range,
    finish,
    forget_ranges,
    prepare,
    probe,
)

log = logging.getLogger(__name__)

GUARD_EVERY_S = 5.0  # how often a transfer task reads its file's lock record


def download_folder(config, out: Path) -> Path:
    """Where a source's downloads go: its `download_dir`, else OUT/downloads."""
    return Path(config.download_dir).absolute() if config.download_dir else Path(out) / "downloads"


@dataclass(frozen=True)
class DownloadSettings:
    connections: int = 8  # per host, over all files
    range_bytes: int = 2_000_000_000
    retries: int = 8  # attempts in a row without progress, per stream or range
    backoff_s: float = 1.0
    timeout_s: float = 60.0
    task_retries: int = 3  # times a lost task (its process died, a bug) is submitted again

    @classmethod
    def of(cls, download) -> DownloadSettings:
        """From a DAG's `download:` section (pipeline.dag.DownloadConfig)."""
        return cls(
            connections=download.connections,
            range_bytes=download.range_bytes,
            retries=download.retries,
            timeout_s=download.timeout_s,
        )


@dataclass(frozen=True)
class FileJob:
    url: str
    dest: Path
    checksum: Checksum | None = None
    auth: BearerToken | None = None  # a gated server's token (storage.http)


class Cancelled(Exception):
    """The transfers were closed before this file finished (its progress is kept on disk)."""


@dataclass(eq=False)
class _File:
    job: FileJob
    host: str
    state: str = "new"  # new [-> locked] -> probe -> stream | ranges -> verify -> done; or failed
    submitted: bool = False  # the one task of the probe, stream and verify states
    after: str | None = None  # "stream" or "restart", once none of the file's tasks runs
    restarts: int = 0  # times the file changed on the server and was started over
    lock: HeldLock | None = None
    ledger: RangeLedger | None = None
    queue: deque = field(default_factory=deque)  # range numbers still to submit
    running: int = 0
    lost: Counter = field(default_factory=Counter)  # (kind, range) -> times its task was lost
    error: BaseException | None = None
    finished: threading.Event = field(default_factory=threading.Event)
    bar: tqdm | None = None


class Transfers:
    """Downloads `jobs` in the background from construction until `close()` (or `with`)."""

    def __init__(self, jobs: list[FileJob], settings: DownloadSettings, pool, progress: bool = True):
        self.settings, self.pool, self.progress = settings, pool, progress
        self.files = {Path(j.dest): _File(j, urllib.parse.urlsplit(j.url).netloc) for j in jobs}
        self._busy: Counter = Counter()  # host -> connections in use
        self._running: dict = {}  # task handle -> (_File, kind, range number)
        self._stop = threading.Event()
        self._total = tqdm(
            desc="downloads", unit="B", unit_scale=True, unit_divisor=1024, total=0, disable=True
        )  # shown once a file needs downloading
        self._thread = threading.Thread(target=self._loop, name="transfers", daemon=True)
        self._thread.start()

    def __enter__(self) -> Transfers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def wait(self, dest: Path) -> Path:
        """Block until `dest` is downloaded and verified; raise what stopped it."""
        f = self.files[Path(dest)]
        f.finished.wait()
        if f.error is not None:
            raise f.error
        return Path(dest)

    def close(self) -> None:
        """Stop: running tasks are cancelled, finished ranges stay in their ledgers. The pool
        is the caller's to close (it may serve more transfers)."""
        self._stop.set()
        self._thread.join()
        self._total.close()

    # -- the scheduler thread ----------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self._submit_ready()
                if not self._running:
                    if all(f.finished.is_set() for f in self.files.values()):
                        return
                    if not any(f.state == "locked" for f in self.files.values()):
                        raise RuntimeError("download scheduler: files unfinished with nothing to run")
                    time.sleep(0.2)  # another process holds a file: look again
                    continue
                done = self.pool.wait(list(self._running), timeout=0.2)
                self._show(self.pool.take_progress())
                for handle in done:
                    self._finished(handle)
            if self._running:
                self.pool.cancel(list(self._running))
            for f in self.files.values():
                if not f.finished.is_set():
                    self._fail(f, Cancelled(f"{f.job.dest}: download stopped; run again to resume"))
        except BaseException as err:  # a bug here must not leave callers waiting forever
            log.exception("download scheduler failed")
            for f in self.files.values():
                if not f.finished.is_set():
                    self._fail(f, err)

    def _submit_ready(self) -> None:
        cap = self.settings.connections
        for f in self.files.values():
            if f.lock is not None and f.lock.lost.is_set():
                self._lost(f)
            if f.state in ("new", "locked"):
                self._start(f)
            if f.after is not None and f.running == 0:
                self._turn(f)
            ready = f.state in ("probe", "stream", "verify") and not f.submitted
            if ready and (f.state == "verify" or self._busy[f.host] < cap):  # verifying reads the disk only
                self._submit(f, f.state)
                f.submitted = True
            while f.state == "ranges" and f.queue and self._busy[f.host] < cap:
                self._submit(f, "range", f.queue.popleft())

    def _start(self, f: _File) -> None:
        job = f.job
        if is_downloaded(job.dest, job.checksum):
            self._done(f)
            return
        if f.lock is None:
            try:
                f.lock = take(job.dest.parent / ".locks" / f"{job.dest.name}.lock", require_flock=False)
            except LockBusy as busy:
                if f.state == "new":
                    log.info("%s: another run is downloading it (%s); waiting", job.dest, describe(busy.holder))
                f.state = "locked"
                return
            if not f.lock.flocked:
                log.warning(
                    "%s: its file system refuses locks (ENOLCK); the lock's record alone keeps runs apart", job.dest
                )
        if is_downloaded(job.dest, job.checksum):  # the other run finished it
            self._done(f)
            return
        if self.progress and self._total.disable:
            self._total = tqdm(desc="downloads", unit="B", unit_scale=True, unit_divisor=1024, total=0)
        f.bar = tqdm(
            desc=job.dest.name, unit="B", unit_scale=True, unit_divisor=1024, disable=not self.progress, leave=False
        )
        # A marker for another checksum: download() re-hashes the file, or fetches it again. A
        # .part streamed before (its server would not serve ranges) goes on as a stream.
        f.state = "stream" if read_marker(job.dest) is not None or streaming(job.dest) else "probe"

    def _submit(self, f: _File, kind: str, index: int = -1) -> None:
        s, job, guard = self.settings, f.job, f.lock.guard
        if kind == "probe":
            call = (_probe, (job.url, s, job.auth))
        elif kind == "stream":
            call = (_stream, (job, s, guard))
        elif kind == "verify":
            log.info("%s: all ranges on disk; verifying the whole file", job.dest)
            f.bar.set_description(f"{job.dest.name} (verifying)")
            call = (_verify, (job, guard))
        else:
            start, end = f.ledger.bounds(index)
            call = (
                _range,
                (
                    RangeJob(
                        job.url,
                        str(part_path(job.dest)),
                        index,
                        start,
                        end,
                        f.ledger.total,
                        s.retries,
                        s.backoff_s,
                        s.timeout_s,
                        f.ledger.validator,
                        job.auth,
                    ),
                    guard,
                ),
            )
        handle = self.pool.submit(*call, key=str(job.dest))
        self._running[handle] = (f, kind, index)
        f.running += 1
        if kind != "verify":
            self._busy[f.host] += 1

    def _finished(self, handle) -> None:
        f, kind, index = self._running.pop(handle)
        f.running -= 1
        if kind != "verify":
            self._busy[f.host] -= 1
        try:
            result = self.pool.result(handle)
        except BaseException as err:
            err = _cause(err)
            if isinstance(err, (RangesIgnored, RemoteChanged)) and not f.finished.is_set():
                self._turn_after(f, err)
            elif (
                not isinstance(err, (DownloadError, LockLost))
                and not f.finished.is_set()
                and f.lost[kind, index] < self.settings.task_retries
            ):
                f.lost[kind, index] += 1
                log.warning(
                    "%s: a %s task was lost (%s: %s); running it again",
                    f.job.dest,
                    kind if kind != "range" else f"range {index}",
                    type(err).__name__,
                    err,
                )
                if kind == "range":
                    f.queue.appendleft(index)
                else:
                    f.submitted = False
            elif not f.finished.is_set():
                self._fail(f, err)
            return
        if kind == "probe":
            self._probed(f, result)
        elif kind == "range":
            try:
                f.lock.check()  # only the file's holder writes its ledger
                f.ledger.done.add(index)  # its bytes are fsynced: now it counts
                f.ledger.save()
            except (LockLost, DiskFull) as err:  # taken over; a full quota at the ledger's fsync
                self._fail(f, err)
                return
            if f.state == "ranges" and f.after is None and not f.queue and f.running == 0:
                f.state, f.submitted = "verify", False
        else:  # stream or verify: the file is verified, in place, with its marker
            self._done(f)

    def _turn_after(self, f: _File, err: DownloadError) -> None:
        """Stop submitting the file's ranges; once its running tasks are back, stream it
        (RangesIgnored) or start it over (RemoteChanged)."""
        f.queue.clear()
        if isinstance(err, RangesIgnored):
            if f.after is None:
                log.warning("%s; fetching it as one stream", err)
                f.after = "stream"
            return
        if f.after != "restart":
            f.restarts += 1
            if f.restarts > self.settings.task_retries:
                self._fail(f, err)
                return
            log.warning("%s: starting %s over (time %d)", err, f.job.dest.name, f.restarts)
            f.after = "restart"

    def _turn(self, f: _File) -> None:
        if f.after == "stream":
            forget_ranges(f.job.dest)  # the ranges' contiguous prefix is where the stream resumes
            f.state = "stream"
        else:
            discard(f.job.dest)
            f.state = "probe"
            if f.bar is not None:  # its bytes so far are void; the probe counts the file again
                self._total.total -= f.bar.total or 0
                self._total.update(-f.bar.n)
                f.bar.reset()
        f.after, f.submitted, f.ledger = None, False, None

    def _probed(self, f: _File, found) -> None:
        s, job = self.settings, f.job
        if found.total is not None:
            f.bar.reset(total=found.total)
            self._total.total += found.total
            self._total.refresh()
        if not found.ranges or found.total <= s.range_bytes:
            if not found.ranges:
                log.info("%s: the server does not serve byte ranges; one stream", job.url)
            forget_ranges(job.dest)  # a ledger from a time the server did serve ranges
            f.state, f.submitted = "stream", False
            return
        try:
            f.ledger = prepare(job.url, job.dest, found.total, s.range_bytes, found.validator)
        except DownloadError as err:
            self._fail(f, err)
            return
        have = f.ledger.done_bytes()
        f.bar.update(have)
        self._total.update(have)
        f.queue = deque(f.ledger.missing())
        log.info(
            "%s: %d of %d ranges of %d bytes to fetch", job.dest, len(f.queue), f.ledger.count, f.ledger.range_bytes
        )
        f.state, f.submitted = ("ranges", False) if f.queue else ("verify", False)

    def _show(self, progress: dict[str, int]) -> None:
        for key, n in progress.items():
            f = self.files[Path(key)]
            if f.bar is not None:
                f.bar.update(n)
            self._total.update(n)

    def _done(self, f: _File) -> None:
        f.state = "done"
        if f.bar is not None:
            f.bar.close()
        self._release(f)
        f.finished.set()

    def _lost(self, f: _File) -> None:
        """Another run took the file's lock over (this one was paused past the stale time): the
        file fails here, and that run fetches it. Its tasks still running stop at their next
        look at the lock (`_Guarded`), before they write much or rename anything."""
        self._fail(f, f.lock.lost_error())

    def _fail(self, f: _File, err: BaseException) -> None:
        f.state, f.error = "failed", err
        f.queue.clear()
        if f.bar is not None:
            f.bar.close()
        self._release(f)
        f.finished.set()

    @staticmethod
    def _release(f: _File) -> None:
        if f.lock is not None:
            f.lock.release()
            f.lock = None


def _cause(err: BaseException) -> BaseException:
    """The exception a Ray task raised, without Ray's wrapper (whose message is a traceback)."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, BaseException) else err


# -- the tasks: plain functions, the last argument a progress callback (bytes) ----------------
def _probe(url: str, s: DownloadSettings, auth: BearerToken | None, report):
    return probe(url, retries=s.retries, backoff_s=s.backoff_s, timeout_s=s.timeout_s, auth=auth)


def _stream(job: FileJob, s: DownloadSettings, guard: LockGuard, report) -> Path:
    return download(
        job.url,
        job.dest,
        job.checksum,
        retries=s.retries,
        backoff_s=s.backoff_s,
        timeout_s=s.timeout_s,
        bar=_ReportBar(_Guarded(report, guard)),
        commit_check=guard.check,
        auth=job.auth,
    )


def _range(job: RangeJob, guard: LockGuard, report) -> int:
    return fetch_range(job, _Guarded(report, guard))


def _verify(job: FileJob, guard: LockGuard, report) -> Path:
    return finish(job.url, job.dest, job.checksum, commit_check=guard.check)


class _Guarded:
    """`report`, looking on the way (at most every GUARD_EVERY_S) whether this run still holds
    the file's lock: a task of a run whose lock was taken over stops (`LockLost`), even one that
    went on in a Ray actor while its driver was paused."""

    def __init__(self, report: Callable[[int], None], guard: LockGuard):
        self.report, self.guard, self.checked = report, guard, time.monotonic()

    def __call__(self, n: int) -> None:
        if time.monotonic() - self.checked >= GUARD_EVERY_S:
            self.guard.check()
            self.checked = time.monotonic()
        self.report(n)


class _ReportBar:
    """What storage.download needs of a tqdm bar, turned into byte counts for `report`."""

    def __init__(self, report: Callable[[int], None]):
        self.report, self.n = report, 0

    def reset(self, total=None) -> None:
        self.report(-self.n)
        self.n = 0

    def update(self, n: int) -> None:
        self.n += n
        self.report(n)
