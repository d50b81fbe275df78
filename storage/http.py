"""One HTTP range request: the only place that speaks HTTP, for downloads and remote reads alike.

In: a URL, the first byte wanted and optionally the last. Out: a `Response` whose body starts at
byte `start` of an object `total` bytes long (None: the server does not say), and whether the
server honoured the range (`partial`: a 206). Redirects are followed (the Hugging Face endpoint
redirects to a CDN; urllib copies the Range header onto the redirected request).

What the server said, classified once for every caller:
- `Transient`: worth another attempt: HTTP 5xx, 408, 429; a refused, reset or timed-out
  connection; a 416 for a byte inside the object.
- `RangeMismatch`: the answer is for other bytes than asked: a 206 whose Content-Range starts
  elsewhere, or a 416 saying the object is shorter than the first byte wanted. What was read
  before cannot be continued.
- `HttpStatus`: a final answer (404, 403, ...), carrying the status code.
- a 416 for exactly the object's length means nothing is left to read: a `Response` with no
  body (`stream` None) and `total` = `start`.
- a 200 answers a ranged request with the whole object (`partial` False, `start` 0): the caller
  decides whether to skip to its offset or start over. With `if_range` (the object's validator
  when the earlier bytes were read), a server whose object changed answers 200 too (RFC 9110
  If-Range): bytes of two versions are never joined.
Every response carries the object's `validator`: its ETag, else its Last-Modified date.

A gated server (Hugging Face) takes `auth`: a `BearerToken` names the environment variable
holding the token, read at each request, so the token itself travels nowhere (not in a task's
arguments, a marker or a log). It is sent as `Authorization: Bearer ...` to the URL's host only,
and kept on a redirect to that same host; a redirect elsewhere (a CDN's signed URL) drops it.
"""

from __future__ import annotations

import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import BinaryIO

RETRY_STATUS = (408, 429)  # besides 5xx: "request timeout" and "too many requests" are transient
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")


class Transient(Exception):
    """An answer (or no answer) that another attempt may fix."""


class RangeMismatch(Exception):
    """The server answered for other bytes than those asked for."""


class HttpStatus(Exception):
    """A final HTTP status; `code` and `reason` say which."""

    def __init__(self, code: int, reason: str):
        super().__init__(f"HTTP {code} {reason}")
        self.code, self.reason = code, reason


@dataclass(frozen=True)
class BearerToken:
    """The token in environment variable `env`, sent as a bearer token; `terms`: what a refusal
    (401/403) asks the user to do besides setting it (e.g. accept a gated dataset's terms)."""

    env: str
    terms: str = ""

    def header(self) -> dict[str, str]:
        token = os.environ.get(self.env, "").strip()
        return {"Authorization": f"Bearer {token}"} if token else {}

    def refused(self) -> str:
        """What to do about a 401/403 (never showing the token)."""
        if not os.environ.get(self.env, "").strip():
            return (
                f"{self.env} is not set (where the download runs: on a Ray cluster, in the driver node's "
                f"Ray processes): set it to an access token. {self.terms}"
            ).strip()
        return f"the token in {self.env} was refused: check it. {self.terms}".strip()


class _SameHostAuth(urllib.request.HTTPRedirectHandler):
    """Keeps the Authorization header on a redirect to the same host only."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        auth = req.unredirected_hdrs.get("Authorization")
        if new is not None and auth and _host(newurl) == _host(req.full_url):
            new.add_unredirected_header("Authorization", auth)
        return new


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc.lower()


_AUTH_OPENER = urllib.request.build_opener(_SameHostAuth)


@dataclass
class Response:
    start: int  # the body's first byte in the object
    total: int | None  # the object's length; None when the server does not say
    stream: BinaryIO | None  # None: nothing left to read
    partial: bool = False  # a 206: the server honoured the Range request
    validator: str | None = None  # ETag, else Last-Modified: changes when the object does


def range_header(offset: int, end: int | None) -> dict[str, str]:
    """The Range header for bytes offset..end (inclusive; None: to the end); none for the whole."""
    if end is not None:
        return {"Range": f"bytes={offset}-{end}"}
    return {"Range": f"bytes={offset}-"} if offset else {}


def open_range(
    url: str,
    offset: int = 0,
    end: int | None = None,
    timeout_s: float = 60.0,
    if_range: str | None = None,
    auth: BearerToken | None = None,
) -> Response:
    """GET `url` from byte `offset` (to byte `end`, inclusive, when given); `if_range`: the
    validator the bytes before `offset` were read under; `auth`: the token to send, if any."""
    headers = range_header(offset, end)
    if headers and if_range:
        headers["If-Range"] = if_range
    request = urllib.request.Request(url, headers=headers)
    token = auth.header() if auth is not None else {}
    for name, value in token.items():  # not copied onto redirects (see _SameHostAuth)
        request.add_unredirected_header(name, value)
    try:
        if token:
            response = _AUTH_OPENER.open(request, timeout=timeout_s)
        else:
            response = urllib.request.urlopen(request, timeout=timeout_s)  # noqa: S310 (URLs come from the user)
    except urllib.error.HTTPError as e:
        content_range = e.headers.get("Content-Range", "") if e.headers else ""
        e.close()
        if e.code == 416 and offset:
            m = _UNSATISFIED_RANGE.match(content_range)
            total = int(m.group(1)) if m else offset  # no length given: assume nothing is left
            if total < offset:
                raise RangeMismatch(f"HTTP 416: asked for byte {offset} of an object of {total} bytes") from e
            if total != offset:
                raise Transient(f"HTTP 416 for byte {offset} of a {total}-byte object") from e
            return Response(start=offset, total=total, stream=None)
        if e.code >= 500 or e.code in RETRY_STATUS:
            raise Transient(f"HTTP {e.code} {e.reason}") from e
        if auth is not None and e.code in (401, 403):
            raise HttpStatus(e.code, f"{e.reason}: {auth.refused()}") from e
        raise HttpStatus(e.code, str(e.reason)) from e
    except (OSError, http.client.HTTPException) as e:  # refused, reset, DNS, timeout
        raise Transient(f"{e!r}") from e

    if response.status == 206:
        m = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if m is None or int(m.group(1)) != offset:
            got = response.headers.get("Content-Range")
            response.close()
            raise RangeMismatch(f"HTTP 206 with Content-Range {got!r} while asking for byte {offset}")
        total = None if m.group(3) == "*" else int(m.group(3))
        return Response(start=offset, total=total, stream=response, partial=True, validator=_validator(response))
    if response.status == 200:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        return Response(start=0, total=total, stream=response, validator=_validator(response))
    response.close()
    raise HttpStatus(response.status, "unexpected (expected 200 or 206)")


def _validator(response) -> str | None:
    """The response's ETag (a weak one cannot be sent in If-Range), else its Last-Modified."""
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("Last-Modified")
