"""Reading files where they are: a local folder, http(s):// or s3://, with one interface.

In: a location (a folder or URL prefix) and paths relative to it. Out: bytes, a sequential
binary stream (tars are streamed, never downloaded whole), a text stream (JSON lines), or a
seekable file (Parquet: a remote one is read by byte ranges, the footer and the row groups
wanted, never the whole object).

Local reads (a folder on a local disk, NFS, Lustre...) keep one file descriptor and are seekable,
as the file itself; a read that fails with an OSError (EIO, ESTALE: a file server that went away
or failed over) reopens the file and retries at the same byte, under the same budget as remote
reads. A file that is not there (ENOENT, EISDIR, ENOTDIR, HTTP 404, NoSuchKey) fails at once.

Remote reads survive a long run:
- a transient failure (connection dropped or reset, timeout, truncated body, HTTP 5xx/429, S3
  SlowDown/InternalError) reopens the object at the byte where reading stopped (HTTP Range; a
  server that ignores Range has the bytes already read skipped), with capped exponential
  backoff and jitter (storage.retry), until both ATTEMPTS tries in a row and the time budget
  (`retry_budget_of`, default RETRY_BUDGET_S) have passed without progress; a body shorter than
  announced is a failure, not the end of the file; a socket that gives nothing for the read timeout
  (`retry_budget_of`, default TIMEOUT_S) is a failure;
- what still fails raises `StorageError` naming the URL and the byte offset;
- http(s) goes through storage.http, the one HTTP range request (downloads use it too); s3
  through boto3, which honours AWS_ENDPOINT_URL (an S3-compatible server such as MinIO or moto)
  and the usual credentials, with one client per process: boto3 clients are not fork-safe, so a
  DataLoader worker never uses a client (or pooled connection) of its parent.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import io
import os
import socket
import stat
import time
import urllib.error
import urllib.parse
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, TextIO

from storage.http import HttpStatus, RangeMismatch, Transient, open_range
from storage.retry import Backoff, retry

ATTEMPTS = 8  # tries in a row without progress
RETRY_BUDGET_S = 0.0  # and at least this many seconds without progress (a trainer sets minutes)
_BUDGET_ENV = "VALLE_CORPUS_RETRY_S"  # how the budget reaches DataLoader workers, forked or spawned
_TIMEOUT_ENV = "VALLE_CORPUS_READ_TIMEOUT_S"  # and the read timeout
BACKOFF_S = 0.5  # first wait; doubles per try, capped
BACKOFF_CAP_S = 30.0
TIMEOUT_S = 60.0  # a remote read that gives nothing for this long has failed (and is retried)
NOT_THERE = (FileNotFoundError, IsADirectoryError, NotADirectoryError)  # local errors never retried
LOCAL_BUFFER_BYTES = 1 << 16  # a local file's reads: as Python's open() would, a little larger for NFS
RANGE_MIN_BYTES = 1 << 20  # random access: smaller reads fetch this much at once
RETRY_S3 = {
    "SlowDown",
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "503",
    "500",
    "502",
    "504",
}


class StorageError(OSError):
    """A remote object that could not be read; the message names its URL."""


@contextmanager
def retry_budget_of(seconds: float, read_timeout_s: float = TIMEOUT_S):
    """Within the block, a failing read is retried for at least `seconds` without progress, and a
    remote read that gives nothing for `read_timeout_s` has failed, in this process and the
    processes it starts (DataLoader workers)."""
    previous = {name: os.environ.get(name) for name in (_BUDGET_ENV, _TIMEOUT_ENV)}
    os.environ[_BUDGET_ENV], os.environ[_TIMEOUT_ENV] = str(float(seconds)), str(float(read_timeout_s))
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def retry_budget() -> float:
    return float(os.environ.get(_BUDGET_ENV, RETRY_BUDGET_S))


def read_timeout() -> float:
    return float(os.environ.get(_TIMEOUT_ENV, TIMEOUT_S))


def join(location: str, relative: str) -> str:
    if "://" in location:
        return location.rstrip("/") + "/" + relative
    return str(Path(location) / relative)


def is_remote(location) -> bool:
    return "://" in str(location)


def open_stream(uri: str) -> BinaryIO:
    """A readable binary stream of the whole object, read sequentially."""
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme in ("http", "https"):
        return ResumingStream(uri, _open_http)
    if scheme == "s3":
        return ResumingStream(uri, _open_s3)
    if scheme in ("", "file"):
        return _open_local(uri)
    raise ValueError(f"{uri}: unsupported location; use a folder, http(s):// or s3://")


def read_bytes(uri: str) -> bytes:
    with open_stream(uri) as stream:
        return stream.read()


def open_text(uri: str) -> TextIO:
    """A UTF-8 text stream of the whole object, read sequentially (JSON lines files)."""
    return io.TextIOWrapper(io.BufferedReader(open_stream(uri)), encoding="utf-8")


def open_random_access(uri: str) -> BinaryIO:
    """A seekable binary file: a local file as `open_stream` gives it; a remote object read by byte
    ranges (reads of under a MiB are served from a MiB fetched at once)."""
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme in ("", "file"):
        return _open_local(uri)
    opener = {"http": _open_http, "https": _open_http, "s3": _open_s3}.get(scheme)
    if opener is None:
        raise ValueError(f"{uri}: unsupported location; use a folder, http(s):// or s3://")
    return io.BufferedReader(RangedFile(uri, opener), buffer_size=RANGE_MIN_BYTES)


class ResumingStream(io.RawIOBase):
    """Sequential reads of one remote object, from byte `start` to `end` (exclusive; None: to its
    end), that reopen where they stopped after a transient error.

    `opener(uri, offset, end)` returns (body, total size or None) with body positioned at `offset`."""

    def __init__(self, uri: str, opener, start: int = 0, end: int | None = None):
        super().__init__()
        self.uri, self._opener, self.end = uri, opener, end
        self.offset, self.size, self._body = start, None, None
        self._retrying(lambda: None)  # open now: a missing object fails here, not mid-read

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        data = self._retrying(lambda: self._read(len(target)))
        target[: len(data)] = data
        return len(data)

    def _read(self, n: int) -> bytes:
        n = n if self.end is None else min(n, self.end - self.offset)
        data = self._body.read(n) if n > 0 else b""
        last = self.end if self.end is not None else self.size
        if n > 0 and not data and last is not None and self.offset < last:
            raise ConnectionError(f"body ended at byte {self.offset} of {last}")
        self.offset += len(data)
        return data

    def _retrying(self, action):
        def attempt():
            if self._body is None:
                self._body, size = self._opener(self.uri, self.offset, self.end)
                if self.size is not None and size is not None and size != self.size:
                    raise StorageError(f"{self.uri}: changed while being read ({self.size} -> {size} bytes)")
                self.size = size if size is not None else self.size
            return action()

        return _retry_read(self.uri, attempt, lambda: self.offset, self._drop, _transient())

    def _drop(self) -> None:
        if self._body is not None:
            try:
                self._body.close()
            except Exception:  # noqa: BLE001 (a broken connection may fail to close; it is dropped anyway)
                pass
            self._body = None

    def close(self) -> None:
        self._drop()
        super().close()


class _Seekable(io.RawIOBase):
    """A readable file of `size` bytes whose reads start at `position`."""

    uri: str
    size: int
    position: int

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError(f"{self.uri}: seek to byte {base + offset}")
        self.position = base + offset
        return self.position


class RangedFile(_Seekable):
    """Random access to a remote object: each read is one bounded range request, retried and
    resumed as `ResumingStream` does, so reading a Parquet shard's footer and a few row groups
    costs those bytes, not the object."""

    def __init__(self, uri: str, opener):
        super().__init__()
        self.uri, self._opener, self.position = uri, opener, 0
        with ResumingStream(uri, opener, 0, 1) as probe:  # one byte: is it there, and how big
            self.size = probe.size
        if self.size is None:
            raise StorageError(f"{uri}: the server does not say the object's size, so it cannot be read by ranges")

    def readinto(self, target) -> int:
        n = min(len(target), self.size - self.position)
        if n <= 0:
            return 0
        with ResumingStream(self.uri, self._opener, self.position, self.position + n) as part:
            got = 0
            while got < n:
                chunk = part.read(n - got)
                if not chunk:  # ResumingStream raises on a short body; this guards the loop
                    raise StorageError(f"{self.uri}: range ended at byte {self.position + got}")
                target[got : got + len(chunk)] = chunk
                got += len(chunk)
            if part.size is not None and part.size != self.size:
                raise StorageError(f"{self.uri}: changed while being read ({self.size} -> {part.size} bytes)")
        self.position += n
        return n


class LocalFile(_Seekable):
    """A local file (a local disk, NFS, Lustre...) read as a remote object is: one descriptor,
    read at `position`; a read that fails with an OSError (EIO, ESTALE, ETIMEDOUT on a soft NFS
    mount) closes it, reopens the path and reads the same bytes again, within the retry budget.
    A file that is not there (NOT_THERE: missing, or a folder) fails at once, as an HTTP 404 does."""

    def __init__(self, path: str):
        super().__init__()
        self.uri, self.position, self.size, self._fd = path, 0, None, None
        self._retrying(self._open)  # a missing file fails here, not mid-read

    def _open(self) -> int:
        if self._fd is None:
            fd = os.open(self.uri, os.O_RDONLY | os.O_CLOEXEC)
            try:
                self.size = self._checked_size(os.fstat(fd))
            except OSError:
                os.close(fd)
                raise
            self._fd = fd
        return self._fd

    def _checked_size(self, info: os.stat_result) -> int:
        if stat.S_ISDIR(info.st_mode):  # os.open opens a folder (Python's open() refuses it)
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), self.uri)
        if self.size is not None and info.st_size != self.size:  # reopened onto another file
            raise StorageError(f"{self.uri}: changed while being read ({self.size} -> {info.st_size} bytes)")
        return info.st_size

    def readinto(self, target) -> int:
        n = self._retrying(lambda: os.preadv(self._open(), [target], self.position))
        self.position += n
        return n

    def _retrying(self, action):
        return _retry_read(self.uri, action, lambda: self.position, self._drop, (OSError,), NOT_THERE + (StorageError,))

    def _drop(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):  # a descriptor on a server that went away may fail to close
                os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        self._drop()
        super().close()


def _retry_read(uri: str, attempt, position, after_failure, transient, final=()):
    """`attempt()` through the one retry loop with the read budget; what still fails raises
    StorageError naming the URI and the byte."""
    started = time.monotonic()

    def give_up(err: BaseException, made: int, best: int) -> StorageError:
        return StorageError(
            f"{uri}: still failing after {made} attempts ({time.monotonic() - started:.1f} s) at byte "
            f"{position()}: {type(err).__name__}: {err}"
        )

    return retry(
        attempt,
        transient=transient,
        final=final,
        attempts=ATTEMPTS,
        give_up=give_up,
        what=uri,
        backoff=Backoff(BACKOFF_S, BACKOFF_CAP_S, jitter=True),
        position=position,
        after_failure=after_failure,
        budget_s=retry_budget(),
    )


def _open_local(uri: str) -> BinaryIO:
    path = urllib.parse.urlparse(uri).path if uri.startswith("file:") else uri
    return io.BufferedReader(LocalFile(path), buffer_size=LOCAL_BUFFER_BYTES)


def _transient() -> tuple[type[BaseException], ...]:
    kinds = [Transient, ConnectionError, TimeoutError, socket.timeout, http.client.HTTPException, urllib.error.URLError]
    try:
        import botocore.exceptions as be
        import urllib3.exceptions as ue

        kinds += [
            be.ResponseStreamingError,
            be.IncompleteReadError,
            be.ReadTimeoutError,
            be.ConnectTimeoutError,
            be.EndpointConnectionError,
            be.ConnectionClosedError,
            ue.ProtocolError,
            ue.ReadTimeoutError,
        ]
    except ImportError:
        pass
    return tuple(kinds)


def _open_http(uri: str, offset: int, end: int | None = None):
    """(body from byte `offset`, the object's size) for `ResumingStream`; `end` is exclusive."""
    try:
        response = open_range(uri, offset, None if end is None else end - 1, read_timeout())
    except HttpStatus as err:
        if err.code == 404:
            raise FileNotFoundError(f"{uri}: HTTP 404") from None
        raise StorageError(f"{uri}: {err}") from None
    except RangeMismatch as err:
        raise StorageError(f"{uri}: {err}") from None
    if response.stream is None:  # nothing left after `offset`
        return io.BytesIO(b""), response.total
    skip = offset - response.start  # a server that ignores Range sends the whole object again
    while skip:
        chunk = response.stream.read(min(skip, 1 << 20))
        if not chunk:
            raise ConnectionError(f"body ended while skipping to byte {offset}")
        skip -= len(chunk)
    return response.stream, response.total


def _open_s3(uri: str, offset: int, end: int | None = None):
    bucket, key = _s3_parts(uri)
    client = _s3_client()
    wanted = None if not offset and end is None else f"bytes={offset}-{'' if end is None else end - 1}"
    try:
        response = client.get_object(Bucket=bucket, Key=key, **({"Range": wanted} if wanted else {}))
    except client.exceptions.NoSuchKey:
        raise FileNotFoundError(f"{uri}: no such key") from None
    except Exception as err:  # botocore's ClientError carries the S3 error code
        code = str(getattr(err, "response", {}).get("Error", {}).get("Code", ""))
        if code in RETRY_S3:
            raise Transient(f"S3 {code}") from None
        if code in ("404", "NoSuchKey", "NoSuchBucket"):
            raise FileNotFoundError(f"{uri}: {code}") from None
        raise
    total = str(response.get("ContentRange", "")).rpartition("/")[2]
    return response["Body"], int(total) if total.isdigit() else offset + int(response["ContentLength"])


def _s3_parts(uri: str) -> tuple[str, str]:
    parsed = urllib.parse.urlparse(uri)
    if not parsed.netloc or not parsed.path.strip("/"):
        raise ValueError(f"{uri}: expected s3://bucket/key")
    return parsed.netloc, parsed.path.lstrip("/")


_CLIENTS: dict[int, object] = {}  # process id -> its own client


def _s3_client():
    pid = os.getpid()
    if pid not in _CLIENTS:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise ImportError("reading s3:// needs boto3: pip install 'valle-corpus[s3]'") from None
        _CLIENTS.clear()  # a parent's client, inherited over fork, is never used
        session = boto3.session.Session()  # not boto3's module-level default session, shared with the parent
        timeout = read_timeout()
        _CLIENTS[pid] = session.client(
            "s3",
            config=Config(
                retries={"mode": "standard", "max_attempts": 3}, connect_timeout=timeout, read_timeout=timeout
            ),
        )
    return _CLIENTS[pid]
