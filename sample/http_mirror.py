"""A local HTTP server that serves a folder, with knobs to misbehave like a real CDN.

In: a root folder and fault-injection knobs. Out: `http://127.0.0.1:<port>/<name>` URLs for the
files under that folder, and a request log for assertions. Tests use it to stand in for the
Hugging Face / LibriLight hosts (manifests, audio tars, checkpoints), which are unreachable here.

    with HttpMirror(tmp_path / "site", drop_after_bytes=1000, drop_first=1) as mirror:
        download(mirror.url("data.bin"), dest)
        assert [r.status for r in mirror.requests] == [200, 206]

Behaviour (each knob is a plain attribute and may be changed while the server runs):
- GET/HEAD `/<path>` serves `root/<path>`; 404 if missing or outside root.
- `honour_range=True`: `Range: bytes=N-` / `bytes=N-M` gets 206 + Content-Range, or 416 +
  `Content-Range: bytes */<size>` when N >= size. `honour_range=False`: always 200, whole file.
  `honour_range="probe"`: 206 for `bytes=0-0` only, 200 with the whole file for any other range
  (a CDN whose edge answers small ranges and passes the rest through).
- Every file answer carries an `ETag` (a digest of the file's bytes: it changes when they do)
  and `Last-Modified`; a Range with an `If-Range` that is not the current ETag gets 200 and the
  whole file, as RFC 9110 says (`etag(path)` gives the current one).
- `fail_first=K`: the first K file requests are answered `fail_status` (503) with no body.
- `drop_after_bytes=N, drop_first=K`: the first K responses that carry a body announce the full
  Content-Length but close the connection after N body bytes.
- `stall_first=K, stall_s=S`: the first K file requests sleep S seconds before answering
  (for client timeouts).
- `rate_bytes_s=R`: each response's body is sent at about R bytes/s (a per-connection cap,
  like a CDN's); None: as fast as possible.
- `active` / `peak_active`: bodies being sent now / at most at once (connection-cap checks).
- `/redirect/<path>` answers `redirect_status` (302) with Location `/<path>`, like the Hugging
  Face endpoint redirecting to its CDN; it does not count as a file request.
- `bearer=T`: file requests without `Authorization: Bearer T` get 401 (a gated repository);
  redirects are answered without it, as the Hugging Face endpoint's are not.
- `requests`: a list of `RequestRecord(method, path, range, status, bytes_sent)`, appended when
  the status is decided (before the body), so a client that has finished sees its records.
The server listens on a random free port of 127.0.0.1 in a daemon thread, and stops on exit.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")
_COPY_CHUNK = 64 * 1024


@dataclass
class RequestRecord:
    method: str
    path: str  # as requested, including a /redirect/ prefix and query string
    range: str | None  # the Range header, verbatim
    status: int
    bytes_sent: int = 0  # body bytes written (final only once the response is finished)


class HttpMirror:
    def __init__(
        self,
        root: Path,
        *,
        honour_range: bool = True,
        fail_first: int = 0,
        fail_status: int = 503,
        drop_after_bytes: int | None = None,
        drop_first: int = 0,
        stall_first: int = 0,
        stall_s: float = 0.0,
        redirect_status: int = 302,
        rate_bytes_s: float | None = None,
        bearer: str | None = None,
    ):
        self.root = Path(root)
        self.honour_range = honour_range
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.drop_after_bytes = drop_after_bytes
        self.drop_first = drop_first
        self.stall_first = stall_first
        self.stall_s = stall_s
        self.redirect_status = redirect_status
        self.rate_bytes_s = rate_bytes_s
        self.bearer = bearer
        self.active = self.peak_active = 0
        self.requests: list[RequestRecord] = []
        self._file_requests = 0  # counts requests for files, for fail_first / stall_first
        self._bodies = 0  # counts responses with a body, for drop_first
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._address: tuple[str, int] | None = None  # kept after stop() for assertions

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> HttpMirror:
        if self._server is not None:
            return self
        handler = type("_BoundHandler", (_Handler,), {"mirror": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._address = self._server.server_address[:2]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="http-mirror", kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> HttpMirror:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- addresses -------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        if self._address is None:
            raise RuntimeError("HttpMirror was never started; use it as a context manager or call start()")
        host, port = self._address
        return f"http://{host}:{port}"

    def url(self, rel_path: str) -> str:
        """URL serving `root/rel_path`."""
        return f"{self.base_url}/{urllib.parse.quote(rel_path)}"

    def redirect_url(self, rel_path: str) -> str:
        """URL answering a redirect to `url(rel_path)`."""
        return f"{self.base_url}/redirect/{urllib.parse.quote(rel_path)}"

    def etag(self, rel_path: str) -> str:
        """The ETag `rel_path` is served with now."""
        return _etag(self.root / rel_path)

    def paths(self, method: str = "GET") -> list[str]:
        """Requested paths with this method, in order (handy for `assert ... == [...]`)."""
        return [r.path for r in self.requests if r.method == method]

    # -- used by the handler ---------------------------------------------------------------
    def _record(self, handler: BaseHTTPRequestHandler, status: int) -> RequestRecord:
        record = RequestRecord(handler.command, handler.path, handler.headers.get("Range"), status)
        with self._lock:
            self.requests.append(record)
        return record

    def _next_file_request(self) -> int:
        with self._lock:
            self._file_requests += 1
            return self._file_requests

    def _next_body(self) -> int:
        with self._lock:
            self._bodies += 1
            return self._bodies


class _Handler(BaseHTTPRequestHandler):
    mirror: HttpMirror  # set on the per-server subclass
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # keep pytest output clean
        pass

    def do_HEAD(self):
        self._serve(send_body=False)

    def do_GET(self):
        self._serve(send_body=True)

    def _serve(self, send_body: bool) -> None:
        mirror = self.mirror
        self.close_connection = True  # one request per connection keeps the counters simple
        rel = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")

        if rel.startswith("redirect/"):
            target = "/" + urllib.parse.quote(rel[len("redirect/") :])
            mirror._record(self, mirror.redirect_status)
            self._head(mirror.redirect_status, {"Location": target, "Content-Length": "0"})
            return

        if mirror.bearer is not None and self.headers.get("Authorization") != f"Bearer {mirror.bearer}":
            mirror._record(self, 401)
            self._head(401, {"Content-Length": "0", "WWW-Authenticate": "Bearer"})
            return
        n = mirror._next_file_request()
        if n <= mirror.stall_first:
            time.sleep(mirror.stall_s)
        if n <= mirror.fail_first:
            mirror._record(self, mirror.fail_status)
            self._head(mirror.fail_status, {"Content-Length": "0"})
            return

        path = (mirror.root / rel).resolve()
        root = mirror.root.resolve()
        if not path.is_file() or not path.is_relative_to(root):
            mirror._record(self, 404)
            self._head(404, {"Content-Length": "0"})
            return

        size, etag = path.stat().st_size, _etag(path)
        start, end, status = 0, size - 1, 200
        range_header = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        honour = mirror.honour_range is True or (mirror.honour_range == "probe" and range_header == "bytes=0-0")
        if range_header and honour and (if_range is None or if_range == etag):
            m = _RANGE.match(range_header.strip())
            if m:
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                if start >= size or start > end:
                    mirror._record(self, 416)
                    self._head(416, {"Content-Range": f"bytes */{size}", "Content-Length": "0"})
                    return
                status = 206

        length = end - start + 1
        headers = {
            "Content-Length": str(length),
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "ETag": etag,
            "Last-Modified": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(path.stat().st_mtime)),
        }
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        record = mirror._record(self, status)
        self._head(status, headers)
        if not send_body:
            return

        limit = length
        if mirror.drop_after_bytes is not None and mirror._next_body() <= mirror.drop_first:
            limit = min(length, mirror.drop_after_bytes)
        with mirror._lock:
            mirror.active += 1
            mirror.peak_active = max(mirror.peak_active, mirror.active)
        try:
            self._send_body(path, start, limit, record)
        finally:
            with mirror._lock:
                mirror.active -= 1
        if limit < length:
            self._drop()

    def _send_body(self, path: Path, start: int, limit: int, record: RequestRecord) -> None:
        rate, started = self.mirror.rate_bytes_s, time.monotonic()
        with open(path, "rb") as f:
            f.seek(start)
            remaining = limit
            while remaining > 0:
                chunk = f.read(min(_COPY_CHUNK, remaining))
                if not chunk:
                    break
                if rate:  # hold the chunk back until its last byte is due
                    due = started + (record.bytes_sent + len(chunk)) / rate
                    time.sleep(max(0.0, due - time.monotonic()))
                try:
                    self.wfile.write(chunk)
                except OSError:  # the client went away; nothing more to do
                    return
                remaining -= len(chunk)
                record.bytes_sent += len(chunk)

    def _head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Connection", "close")
        self.end_headers()

    def _drop(self) -> None:
        """Close the socket mid-body: the client sees fewer bytes than Content-Length."""
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _etag(path: Path) -> str:
    return '"' + hashlib.sha1(path.read_bytes()).hexdigest()[:16] + '"'


__all__ = ["HttpMirror", "RequestRecord"]
