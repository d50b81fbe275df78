"""Ranged downloads: one large file fetched as independent byte ranges, written in place.

In: a URL whose server honours `Range` (or a file:// URL), its length, a destination.
Out: the same `<dest>` + `<dest>.done.json` marker as storage.download, built in
`<dest>.part` (allocated to its full length up front) and tracked by `<dest>.ranges.json`, the
range ledger: {"url", "total", "range_bytes", "done": [[first, last], ...], "validator"} (runs of
finished range numbers, so a 3 TB file in 2 GB ranges is ~1,500 ranges and a ledger of a few
hundred bytes). Pieces, each a plain function so it can run as a Ray task or in a thread
(pipeline.fetch.transfers schedules them):
- `probe`: one `Range: bytes=0-0` request: does the server answer 206, how long is the file, and
  its validator (ETag or Last-Modified);
- `prepare`: save the ledger, then allocate the .part (fallocate where the file system supports
  it, so a full disk fails now with a clear `DiskFull`, not hours later). Saved first, so a
  preallocated .part is never taken for data: only ranges the ledger names count;
- `fetch_range`: one range over its own connection, each attempt asking `bytes=<pos>-<end>` from
  where the previous attempt stopped, with `If-Range: <validator>`, written with `os.pwrite` at
  its offset, checked like storage.download (206 with a Content-Range that starts at <pos>,
  retries with a budget reset by progress, ENOSPC/EDQUOT at a write, fsync or close -> DiskFull),
  then fsynced. Only after that does the scheduler mark it done in the ledger (atomically: tmp +
  fsync + rename), so a kill -9 costs at most the ranges in flight, and a re-run fetches exactly
  the ranges the ledger lacks. A file that changed on the server is `RemoteChanged` (the
  scheduler starts it over); a server that answers a range with the whole file, `RangesIgnored`
  (the scheduler streams it);
- `finish`: the whole-file checksum, streamed once over the finished file (md5 cannot be
  combined from ranges fetched out of order), then rename, marker, ledger removed.
A .part left by a single-stream attempt (no ledger) is not wasted: the ranges its contiguous
prefix covers count as done (when its validator is the file's), and the checksum vouches for them
at the end as for the rest. The other way round (`forget_ranges`, when the file must go as one
stream), the ranges' contiguous prefix is kept with the ledger's validator, so the stream resumes
with `If-Range` and a file changed on the server starts over. A .part without a ledger thus counts
as data: whatever deletes both deletes the .part first (`discard`).
"""

from __future__ import annotations

import ctypes
import http.client
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from storage.download import (
    NO_ROOM,
    DiskFull,
    DownloadError,
    Restart,
    Retryable,
    disk_full,
    file_size,
    local_path,
    no_room_is_disk_full,
    open_http,
    part_path,
    retry_until_done,
    stream_record_path,
    verify_part,
    write_marker,
)
from storage.files import fsync_dir, read_json, write_json_atomic
from storage.hashing import Checksum
from storage.http import BearerToken, Response

log = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024


class RangesIgnored(DownloadError):
    """The server answered a ranged request with the whole file (200): stream it instead."""


class RemoteChanged(DownloadError):
    """The file on the server is not the one the ranges on disk came from: start it over."""


@dataclass(frozen=True)
class Probe:
    total: int | None  # the file's length; None when the server does not say
    ranges: bool  # whether it answered a Range request with 206
    validator: str | None = None  # ETag or Last-Modified: changes when the file does


@dataclass(frozen=True)
class RangeJob:
    url: str
    part: str  # the .part file, already allocated to the full length
    index: int
    start: int
    end: int  # inclusive
    total: int  # the whole file's length, as probed
    retries: int = 8
    backoff_s: float = 1.0
    timeout_s: float = 60.0
    validator: str | None = None  # sent as If-Range: a changed file answers 200, never other bytes
    auth: BearerToken | None = None  # a gated server's token (its variable's name, not its value)


def ledger_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".ranges.json")


def probe(
    url: str, *, retries: int = 8, backoff_s: float = 1.0, timeout_s: float = 60.0, auth: BearerToken | None = None
) -> Probe:
    """Ask for byte 0 only: a 206 with a length means ranges work; a 200 means they do not."""
    if url.startswith("file:"):
        path = local_path(url)
        try:
            return Probe(total=path.stat().st_size, ranges=True)
        except FileNotFoundError:
            raise DownloadError(f"{url}: local file {path} does not exist") from None
    found: list[Probe] = []

    def attempt():
        body = open_http(url, 0, timeout_s, end=0, auth=auth)
        if body.stream is not None:
            body.stream.close()
        found.append(Probe(total=body.total, ranges=body.partial and body.total is not None, validator=body.validator))

    retry_until_done(attempt, lambda: 0, url, retries, backoff_s)
    return found[-1]


@dataclass
class RangeLedger:
    path: Path
    url: str
    total: int
    range_bytes: int
    done: set[int]
    validator: str | None = None  # the file's ETag or Last-Modified when its ranges were fetched

    @property
    def count(self) -> int:
        return -(-self.total // self.range_bytes)

    def bounds(self, index: int) -> tuple[int, int]:
        """First and last byte (inclusive) of range `index`."""
        start = index * self.range_bytes
        return start, min(start + self.range_bytes, self.total) - 1

    def missing(self) -> list[int]:
        return [i for i in range(self.count) if i not in self.done]

    def done_bytes(self) -> int:
        return sum(self.bounds(i)[1] - self.bounds(i)[0] + 1 for i in self.done)

    def save(self) -> None:
        runs: list[list[int]] = []
        for i in sorted(self.done):
            if runs and runs[-1][1] == i - 1:
                runs[-1][1] = i
            else:
                runs.append([i, i])
        dest = self.path.with_name(self.path.name.removesuffix(".ranges.json"))
        with no_room_is_disk_full(part_path(dest)):  # a full quota: NFS says so at the fsync
            write_json_atomic(
                self.path,
                {
                    "url": self.url,
                    "total": self.total,
                    "range_bytes": self.range_bytes,
                    "done": runs,
                    "validator": self.validator,
                },
            )

    @classmethod
    def load(cls, dest: Path) -> RangeLedger | None:
        data = read_json(ledger_path(dest))
        try:
            done = {i for first, last in data["done"] for i in range(first, last + 1)}
            return cls(
                ledger_path(dest),
                data["url"],
                int(data["total"]),
                int(data["range_bytes"]),
                done,
                data.get("validator"),
            )
        except (TypeError, KeyError, ValueError):
            return None


def prepare(url: str, dest: Path, total: int, range_bytes: int, validator: str | None = None) -> RangeLedger:
    """The ledger of `dest`'s ranged download, with the .part allocated to `total` bytes.

    An existing ledger for the same file (length and validator) is kept with its own range size
    (so a changed `range_mb` never invalidates finished ranges); one for another length or
    validator means the remote file changed, and everything restarts. The ledger is saved before
    the .part is allocated: from then on the .part's length says nothing about its content, and
    only ranges the ledger names count (a kill -9 right after the allocation costs nothing)."""
    dest = Path(dest)
    part = part_path(dest)
    ledger = RangeLedger.load(dest)
    if ledger is not None and (ledger.total != total or _changed(ledger.validator, validator)):
        log.warning(
            "%s: %s is not the file its ranges on disk came from (%d bytes, %s; now %d, %s); starting over",
            dest,
            url,
            ledger.total,
            ledger.validator,
            total,
            validator,
        )
        part.unlink(missing_ok=True)
        ledger_path(dest).unlink(missing_ok=True)
        ledger = None
    if ledger is None:
        stream = read_json(stream_record_path(dest))
        if isinstance(stream, dict) and _changed(stream.get("validator"), validator):
            part.unlink(missing_ok=True)  # a single-stream .part of another version
        stream_record_path(dest).unlink(missing_ok=True)
        prefix = min(file_size(part), total)  # a single-stream attempt's contiguous bytes
        ledger = RangeLedger(ledger_path(dest), url, total, range_bytes, set(), validator)
        ledger.done = {i for i in range(ledger.count) if ledger.bounds(i)[1] < prefix}
        if ledger.done:
            log.info("%s: keeping %d bytes of an earlier single-stream attempt", dest, ledger.done_bytes())
        dest.parent.mkdir(parents=True, exist_ok=True)
        ledger.save()
        created = True
    else:
        created = False
    have = file_size(part)
    if have > total:  # longer than the file: not a .part of it
        part.unlink()
        ledger.done, have = set(), 0
    if have != total:  # never allocated, or the .part was cut short: keep what it still holds
        ledger.done = {i for i in ledger.done if ledger.bounds(i)[1] < have}
        ledger.save()
        try:
            _allocate(part, total, have)
        except DiskFull:  # refused, nothing allocated: leave things as they were
            if created:
                ledger.path.unlink(missing_ok=True)
            raise
    return ledger


def _changed(before: str | None, now: str | None) -> bool:
    """True when both validators are known and differ (one the server did not send proves nothing)."""
    return before is not None and now is not None and before != now


def _allocate(part: Path, total: int, have: int) -> None:
    need = total - have
    free = shutil.disk_usage(part.parent).free
    if need > free:
        raise disk_full(part, need)
    with no_room_is_disk_full(part, need):
        fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _fallocate(fd, total):  # a file system (or OS) without it: a sparse file
                os.ftruncate(fd, total)
            os.fsync(fd)
        finally:
            os.close(fd)
    fsync_dir(part.parent)


def _fallocate(fd: int, total: int) -> bool:
    """Reserve `total` bytes with Linux fallocate(2); False where it is not supported. Not
    os.posix_fallocate: on a file system without fallocate (NFSv3, say) glibc emulates it by
    writing every block, hours for 3 TB. Raises OSError(ENOSPC) when the disk has no room."""
    try:
        call = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return False
    call.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if call(fd, 0, 0, total) == 0:
        return True
    err = ctypes.get_errno()
    if err in NO_ROOM:
        raise OSError(err, os.strerror(err))
    return False


def fetch_range(job: RangeJob, report: Callable[[int], None] = lambda n: None) -> int:
    """Fetch bytes start..end of `job.url` into the .part at the same offsets, fsync them;
    returns the range's index. `report(n)` is told of every n bytes written (progress; it may
    raise to stop the fetch)."""
    pos = job.start
    fd = os.open(job.part, os.O_WRONLY)

    def attempt():
        nonlocal pos
        body = _open_range(job, pos)
        try:
            while pos <= job.end:
                try:
                    chunk = body.stream.read(min(CHUNK_BYTES, job.end + 1 - pos))
                except (OSError, http.client.HTTPException) as e:
                    raise Retryable(f"connection lost at byte {pos}: {e!r}") from e
                if not chunk:
                    raise Retryable(f"body ended at byte {pos} of range {job.start}-{job.end}")
                _pwrite_all(fd, chunk, pos)
                pos += len(chunk)
                report(len(chunk))
        finally:
            body.stream.close()

    with no_room_is_disk_full(Path(job.part)):  # from a write, the fsync or the close (NFS)
        try:
            what = f"{job.url} (bytes {job.start}-{job.end})"
            retry_until_done(attempt, lambda: pos, what, job.retries, job.backoff_s)
            os.fsync(fd)
        finally:
            os.close(fd)
    return job.index


def _open_range(job: RangeJob, pos: int) -> Response:
    if job.url.startswith("file:"):
        try:
            f = open(local_path(job.url), "rb")
        except OSError as e:
            raise DownloadError(f"{job.url}: cannot read: {e}") from e
        f.seek(pos)
        return Response(start=pos, total=None, stream=f, partial=True)
    try:
        body = open_http(job.url, pos, job.timeout_s, end=job.end, if_range=job.validator, auth=job.auth)
    except Restart as e:  # 416 or a Content-Range elsewhere: the remote file is not what it was
        raise RemoteChanged(f"{job.url}: bytes {pos}-{job.end} cannot be had ({e})") from e
    if body.stream is None:
        raise RemoteChanged(f"{job.url}: nothing to read at byte {pos} of a {job.total}-byte file")
    if not body.partial:
        body.stream.close()
        if _changed(job.validator, body.validator):  # If-Range: the file changed since the probe
            raise RemoteChanged(f"{job.url}: changed on the server ({job.validator} -> {body.validator})")
        raise RangesIgnored(f"{job.url}: the server answered a request for bytes {pos}-{job.end} with the whole file")
    if body.total is not None and body.total != job.total:
        body.stream.close()
        raise RemoteChanged(f"{job.url}: the file is now {body.total} bytes, not {job.total}")
    return body


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def finish(url: str, dest: Path, checksum: Checksum | None, commit_check: Callable[[], None] | None = None) -> Path:
    """Verify the finished .part against the checksum (one streamed pass), then make it `dest`
    with its marker; the ledger goes last. A mismatch deletes the .part and the ledger.
    `commit_check`: called right before the rename; it may raise to stop."""
    dest = Path(dest)
    part = part_path(dest)
    try:
        verify_part(part, url, checksum)
    except DownloadError:
        ledger_path(dest).unlink(missing_ok=True)
        raise
    if commit_check is not None:
        commit_check()
    os.replace(part, dest)  # the .part was fsynced range by range
    fsync_dir(dest.parent)
    with no_room_is_disk_full(part):
        write_marker(dest, url, checksum)
    ledger_path(dest).unlink(missing_ok=True)
    return dest


def forget_ranges(dest: Path) -> None:
    """Before streaming a file that has a ledger: keep only the .part's contiguous finished
    prefix, so the single stream resumes from there, under the ledger's URL and validator (the
    stream record), so it resumes with `If-Range`: a file changed on the server since answers
    with the whole new file, never with the rest of it after the old prefix. Truncate, record,
    then drop the ledger: a crash in between leaves a ledger that no longer matches the .part's
    length, whose ranges past it are ignored."""
    dest = Path(dest)
    ledger = RangeLedger.load(dest)
    if ledger is None:
        return
    prefix = 0
    while prefix < ledger.count and prefix in ledger.done:
        prefix += 1
    keep = ledger.bounds(prefix - 1)[1] + 1 if prefix else 0
    part = part_path(dest)
    if part.exists():
        os.truncate(part, keep)
    with no_room_is_disk_full(part):
        write_json_atomic(stream_record_path(dest), {"url": ledger.url, "validator": ledger.validator})
    ledger.path.unlink(missing_ok=True)


def discard(dest: Path) -> None:
    """Everything of an unfinished download of `dest`: the .part, its range ledger, its stream
    record (the file changed on the server: none of it is of the file now there). The .part goes
    first: a .part left without its ledger would count as data (a preallocated one is zeros)."""
    dest = Path(dest)
    part_path(dest).unlink(missing_ok=True)
    fsync_dir(dest.parent)  # gone for good before its ledger goes
    for path in (ledger_path(dest), stream_record_path(dest)):
        path.unlink(missing_ok=True)
