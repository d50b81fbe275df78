"""Resumable, verified downloads of one file over http(s):// and file://.

In: a URL, a destination path and (ideally) a published checksum.
Out: the verified file at `dest` plus a completion marker `<dest>.done.json`
({"url", "bytes", "checksum"}); nothing else counts as downloaded.

How it survives a CDN that drops hours-long transfers:
- bytes go to `<dest>.part`; each attempt resumes from what is on disk with `Range: bytes=N-`
  (storage.http) and appends only after a 206 whose Content-Range starts at N; a 200 means the
  server ignored the Range, so the .part is truncated and the file restarts from zero (never
  duplicated bytes). The resume carries `If-Range` with the validator (ETag or Last-Modified)
  the .part was started under, kept in `<dest>.part.json`: a file that changed on the server
  restarts from zero instead of joining two versions;
- dropped connections, timeouts, short bodies and HTTP 5xx are retried (storage.retry) with
  capped exponential backoff; other 4xx fail at once (416 on a complete .part means "nothing
  left": go verify); `retries` counts attempts in a row that bring no new bytes;
- before writing, the free space of the destination's file system is checked against what is
  left to fetch (when the length is known), and a full disk or quota while writing, closing or
  fsyncing (ENOSPC, EDQUOT: NFS reports a full quota only at close or fsync) is the same clear
  `DiskFull` error, naming the file and the space needed; the .part is kept for resuming;
- the finished .part is hashed (md5 or sha256), fsynced, renamed to `dest`, then the marker is
  written atomically. A re-run with a matching marker returns without touching the network.
file:// URLs go through the same code: the local file is read from the resume offset as if the
server had answered 206, so the resume logic is exercised without a network.
Large files are fetched as byte ranges by storage.ranged, into the same .part and marker.
"""

from __future__ import annotations

import errno
import http.client
import json
import logging
import os
import shutil
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from storage.files import fsync_dir, fsync_file, read_json, write_json_atomic
from storage.hashing import Checksum, hash_file
from storage.http import BearerToken, HttpStatus, RangeMismatch, Response, Transient, open_range
from storage.retry import Backoff, retry

log = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024
MAX_BACKOFF_S = 60.0
NO_ROOM = (errno.ENOSPC, errno.EDQUOT)  # a full disk, or a full quota on a shared file system


class DownloadError(RuntimeError):
    """A download failed for good (bad URL/status, checksum mismatch, retries exhausted)."""


class DiskFull(DownloadError):
    """No room for the rest of a download; free space and run again (the .part resumes)."""


class Retryable(Exception):
    """An attempt failed in a way that another attempt (resuming from disk) may fix."""


class Restart(Retryable):
    """The server's answer shows the .part cannot be continued: delete it, then retry."""


def marker_path(dest: Path) -> Path:
    """The completion marker of `dest`: `<dest>.done.json`."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".done.json")


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def stream_record_path(dest: Path) -> Path:
    """`<dest>.part.json`: the URL and validator a single-stream .part was started under."""
    return dest.with_name(dest.name + ".part.json")


def streaming(dest: Path) -> bool:
    """True when `dest` has a .part being fetched as one stream (a re-run resumes it so)."""
    return stream_record_path(Path(dest)).exists() and part_path(Path(dest)).exists()


def read_marker(dest: Path) -> dict | None:
    """The marker if it exists, parses, and its byte count matches the file on disk."""
    try:
        marker = json.loads(marker_path(dest).read_text(encoding="utf-8"))
        size = dest.stat().st_size
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("bytes") != size:
        return None
    return marker


def is_downloaded(dest: Path, checksum: Checksum | None = None) -> bool:
    """True when `dest` has a marker matching its size and (if given) this checksum. No hashing."""
    marker = read_marker(Path(dest))
    if marker is None:
        return False
    return checksum is None or marker.get("checksum") == str(checksum)


def download(
    url: str,
    dest: Path,
    checksum: Checksum | None = None,
    *,
    retries: int = 8,
    backoff_s: float = 1.0,
    timeout_s: float = 60.0,
    progress: bool = True,
    bar=None,
    commit_check: Callable[[], None] | None = None,
    auth: BearerToken | None = None,
) -> Path:
    """Download `url` to `dest`, resuming and verifying; returns `dest`. See the module docstring.

    A marker recorded with a different checksum than the one requested makes the existing file
    be re-hashed: if it matches the new checksum the marker is updated and nothing is fetched.
    With checksum=None any valid marker is accepted. `bar`: a tqdm-like object (reset, update)
    to report bytes to instead of a bar of its own (pipeline.fetch.transfers passes one).
    `commit_check`: called right before the verified file is renamed into place; it may raise
    to stop (pipeline.fetch.transfers: this run still holds the file's lock). `auth`: the
    token a gated server needs (storage.http.BearerToken).
    """
    dest = Path(dest)
    if retries < 1:
        raise ValueError(f"retries must be >= 1, got {retries}")
    marker = read_marker(dest)
    if marker is not None:
        if checksum is None or marker.get("checksum") == str(checksum):
            return dest
        actual = hash_file(dest, checksum.algo)
        if actual == checksum.hexdigest:
            write_marker(dest, url, checksum)
            return dest
        log.warning(
            "%s: existing file has %s:%s, not the requested %s; downloading again",
            dest,
            checksum.algo,
            actual,
            checksum,
        )
    # No trusted copy: drop the stale marker first so a crash later cannot leave it vouching
    # for a different file, and drop an unverified dest so the disk is not used twice.
    marker_path(dest).unlink(missing_ok=True)
    dest.unlink(missing_ok=True)
    dest.parent.mkdir(parents=True, exist_ok=True)

    part = part_path(dest)
    with no_room_is_disk_full(part):
        if bar is not None:
            _fetch_with_retries(url, part, retries, backoff_s, timeout_s, bar, auth)
        else:
            with tqdm(
                unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name, disable=not progress, leave=False
            ) as own_bar:
                _fetch_with_retries(url, part, retries, backoff_s, timeout_s, own_bar, auth)
        verify_part(part, url, checksum)
        fsync_file(part)
        if commit_check is not None:
            commit_check()
        os.replace(part, dest)
        fsync_dir(dest.parent)
        write_marker(dest, url, checksum)
    stream_record_path(dest).unlink(missing_ok=True)
    return dest


def write_marker(dest: Path, url: str, checksum: Checksum | None) -> None:
    write_json_atomic(
        marker_path(dest),
        {
            "url": url,
            "bytes": dest.stat().st_size,
            "checksum": None if checksum is None else str(checksum),
        },
    )


def verify_part(part: Path, url: str, checksum: Checksum | None) -> None:
    if checksum is None:
        log.warning("%s: no checksum given for %s; the file is NOT verified", part, url)
        return
    actual = hash_file(part, checksum.algo)
    if actual != checksum.hexdigest:
        part.unlink(missing_ok=True)
        stream_record_path(part.with_name(part.name.removesuffix(".part"))).unlink(missing_ok=True)
        raise DownloadError(
            f"{part} (from {url}): {checksum.algo} mismatch: expected {checksum.hexdigest}, "
            f"got {actual}; the partial file was deleted, re-run to download it again "
            f"(or check the published checksum)"
        )


def _fetch_with_retries(
    url: str, part: Path, retries: int, backoff_s: float, timeout_s: float, bar: tqdm, auth: BearerToken | None
) -> None:
    retry_until_done(
        lambda: _fetch_once(url, part, timeout_s, bar, auth), lambda: file_size(part), url, retries, backoff_s
    )


def retry_until_done(attempt, position, what: str, retries: int, backoff_s: float) -> None:
    """`storage.retry` for downloads: `Retryable` failures are retried, and after `retries` in a
    row without progress the download fails with a `DownloadError` naming `what`."""

    def give_up(err: BaseException, made: int, best: int) -> DownloadError:
        return DownloadError(
            f"{what}: gave up after {retries} attempts in a row without progress "
            f"({made} in all, {best} bytes at best); last error: {err}"
        )

    retry(
        attempt,
        transient=(Retryable,),
        attempts=retries,
        give_up=give_up,
        what=what,
        backoff=Backoff(backoff_s, MAX_BACKOFF_S),
        position=position,
    )


def file_size(path: Path) -> int:
    """Bytes in `path`; 0 when it does not exist."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _fetch_once(url: str, part: Path, timeout_s: float, bar: tqdm, auth: BearerToken | None = None) -> None:
    """One attempt: bring `part` from its current size to the full length, or raise."""
    offset = file_size(part)
    record_path = stream_record_path(part.with_name(part.name.removesuffix(".part")))
    record = read_json(record_path) if offset else None
    validator = record.get("validator") if isinstance(record, dict) and record.get("url") == url else None
    try:
        body = (
            _open_file(url, offset)
            if url.startswith("file:")
            else open_http(url, offset, timeout_s, if_range=validator, auth=auth)
        )
    except Restart:
        part.unlink(missing_ok=True)
        raise
    try:
        if body.start == 0 and offset:
            log.info(
                "%s: the server sent the whole file (it ignores Range, or the file changed since the "
                ".part was started); restarting from byte 0",
                url,
            )
        if body.start == 0 or record is None:  # a .part started now: under this validator
            write_json_atomic(record_path, {"url": url, "validator": body.validator})
        bar.reset(total=body.total)
        bar.update(body.start)
        if body.stream is not None:
            _check_space(part, body, offset)
            try:
                _append(body, part, offset, bar)
            except OSError as e:
                if e.errno not in NO_ROOM:
                    raise
                need = None if body.total is None else body.total - file_size(part)
                raise disk_full(part, need, e) from None
    finally:
        if body.stream is not None:
            body.stream.close()
    size = file_size(part)
    if body.total is not None and size != body.total:
        if size > body.total:  # longer than the remote file: the .part is garbage
            part.unlink(missing_ok=True)
        raise Retryable(f"incomplete body: have {size} of {body.total} bytes")


def _append(body: Response, part: Path, offset: int, bar: tqdm) -> None:
    """Write the body to `part`: appended only when it continues exactly where the .part ends,
    else from zero (truncating)."""
    with open(part, "ab" if body.start == offset else "wb") as out:
        while True:
            try:
                chunk = body.stream.read(CHUNK_BYTES)
            except (OSError, http.client.HTTPException) as e:
                raise Retryable(f"connection lost at byte {out.tell()}: {e!r}") from e
            if not chunk:
                break
            out.write(chunk)
            bar.update(len(chunk))


def _check_space(part: Path, body: Response, offset: int) -> None:
    """Refuse to start a body that cannot fit (only possible when its length is known)."""
    if body.total is None:
        return
    need = body.total - body.start
    room = shutil.disk_usage(part.parent).free + (offset if body.start != offset else 0)  # truncated
    if need > room:
        raise disk_full(part, need)


@contextmanager
def no_room_is_disk_full(part: Path, need: int | None = None) -> Iterator[None]:
    """Within the block, a full disk or quota (ENOSPC, EDQUOT), whether a write, a close or an
    fsync reports it, is the clear `DiskFull` naming the download of `part`."""
    try:
        yield
    except OSError as e:
        if e.errno not in NO_ROOM:
            raise
        raise disk_full(part, need, e) from None


def disk_full(part: Path, need: int | None, err: OSError | None = None) -> DiskFull:
    dest, free = part.with_name(part.name.removesuffix(".part")), shutil.disk_usage(part.parent).free
    return DiskFull(
        f"{dest}: not enough disk space in {part.parent}: "
        f"{'an unknown amount' if need is None else f'{need:,} more bytes ({_gib(need)})'} needed, "
        f"{free:,} bytes ({_gib(free)}) free{f' ({err})' if err else ''}. Free space there (or "
        f"point source.download_dir elsewhere) and run again: the download resumes from "
        f"{part.name}"
    )


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def open_http(
    url: str,
    offset: int,
    timeout_s: float,
    end: int | None = None,
    if_range: str | None = None,
    auth: BearerToken | None = None,
) -> Response:
    """`storage.http.open_range` in a download's terms: transient answers are `Retryable`, an
    answer for other bytes is a `Restart`, a final status a `DownloadError`."""
    try:
        return open_range(url, offset, end, timeout_s, if_range, auth)
    except Transient as e:
        raise Retryable(str(e)) from e
    except RangeMismatch as e:
        raise Restart(f"{e}; restarting from zero") from e
    except HttpStatus as e:
        if auth is not None and e.code in (401, 403):  # the reason says what to do
            raise DownloadError(f"{url}: {e}") from e
        raise DownloadError(f"{url}: {e}; check the URL (not retried)") from e


def local_path(url: str) -> Path:
    """The path of a file:// URL."""
    return Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))


def _open_file(url: str, offset: int) -> Response:
    path = local_path(url)
    try:
        f = open(path, "rb")
        total = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise DownloadError(f"{url}: local file {path} does not exist") from None
    except OSError as e:
        raise DownloadError(f"{url}: cannot read {path}: {e}") from e
    if offset > total:  # what a server says with 416 + a smaller length
        f.close()
        raise Restart(f"local file {path} has {total} bytes, fewer than the {offset} on disk")
    f.seek(offset)  # emulate a 206 from the resume offset
    return Response(start=offset, total=total, stream=f, partial=True)
