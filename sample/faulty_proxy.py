"""A fault-injecting HTTP reverse proxy on 127.0.0.1, in front of any HTTP server (an S3
endpoint such as moto's, or a plain file server).

In: the upstream base URL and a schedule of faults per requested path. Out: `base_url` to point
clients at, and counters for assertions. For every path, its n-th GET is answered per
`schedule[n]` (then "ok" once the schedule is used up):
- "ok": forwarded as is (Range headers included);
- "503": answered 503 with an S3-style SlowDown body, upstream never asked;
- "drop": forwarded, but the connection closes after half of the body, with the full
  Content-Length announced: the client sees a response that ends mid-body.
`only` limits faults to paths containing one of its strings. Other methods are forwarded as is.
`outage(seconds)`: every request is answered 503 from now until then (the storage is down).
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>injected fault</Message></Error>'
)


class FaultyProxy:
    def __init__(self, upstream: str, schedule=("503", "drop", "drop"), only: tuple[str, ...] = ()):
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname, parsed.port or 80)
        self.schedule, self.only = list(schedule), only
        self.requests: Counter = Counter()  # path -> GETs seen
        self.faults: Counter = Counter()  # fault -> times injected
        self._lock = threading.Lock()
        self._server = None
        self._down_until = 0.0

    def __enter__(self) -> FaultyProxy:
        handler = type("_Bound", (_Handler,), {"proxy": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def outage(self, seconds: float) -> None:
        """Answer every request 503 for the next `seconds`."""
        self._down_until = time.monotonic() + seconds

    def _action(self, method: str, path: str) -> str:
        if time.monotonic() < self._down_until:
            with self._lock:
                self.faults["outage"] += 1
            return "503"
        if method != "GET" or (self.only and not any(s in path for s in self.only)):
            return "ok"
        with self._lock:
            n = self.requests[path]
            self.requests[path] += 1
            action = self.schedule[n] if n < len(self.schedule) else "ok"
            if action != "ok":
                self.faults[action] += 1
        return action


class _Handler(BaseHTTPRequestHandler):
    proxy: FaultyProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        self._forward()

    def do_HEAD(self):
        self._forward()

    def do_PUT(self):
        self._forward()

    def do_POST(self):
        self._forward()

    def _forward(self) -> None:
        self.close_connection = True
        path = urllib.parse.urlsplit(self.path).path
        action = self.proxy._action(self.command, path)
        if action == "503":
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(SLOW_DOWN)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(SLOW_DOWN)
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        upstream = http.client.HTTPConnection(*self.proxy.upstream, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
        upstream.request(self.command, self.path, body=body, headers=headers)
        response = upstream.getresponse()
        data = response.read()
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in ("connection", "transfer-encoding", "keep-alive", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", response.getheader("Content-Length") or str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        upstream.close()
        if self.command == "HEAD":
            return
        if action == "drop" and len(data) > 1:
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self.wfile.write(data)
