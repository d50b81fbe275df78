"""Storage: read corpus files from a local folder, http(s):// or s3:// with one interface.

In: a location (a folder or URL prefix holding index.json) and paths relative to it.
Out: bytes, or a streaming binary file object for tars. s3 goes through boto3, which honours
AWS_ENDPOINT_URL (an S3-compatible server such as MinIO or moto) and the usual credentials.
"""
from __future__ import annotations

import io
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO


def join(location: str, relative: str) -> str:
    if "://" in location:
        return location.rstrip("/") + "/" + relative
    return str(Path(location) / relative)


def open_stream(uri: str, timeout_s: float = 60.0) -> BinaryIO:
    """A readable binary stream of the whole object (read sequentially: tars are streamed)."""
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme in ("http", "https"):
        return urllib.request.urlopen(uri, timeout=timeout_s)  # noqa: S310 (URLs come from the user)
    if scheme == "s3":
        bucket, key = _s3_parts(uri)
        return _s3_client().get_object(Bucket=bucket, Key=key)["Body"]
    if scheme in ("", "file"):
        path = urllib.parse.urlparse(uri).path if scheme == "file" else uri
        return open(path, "rb")
    raise ValueError(f"{uri}: unsupported location; use a folder, http(s):// or s3://")


def read_bytes(uri: str) -> bytes:
    with open_stream(uri) as stream:
        return stream.read()


def buffer(uri: str) -> BinaryIO:
    """The whole object in memory, seekable (Parquet readers need to seek)."""
    return io.BytesIO(read_bytes(uri))


def _s3_parts(uri: str) -> tuple[str, str]:
    parsed = urllib.parse.urlparse(uri)
    if not parsed.netloc or not parsed.path.strip("/"):
        raise ValueError(f"{uri}: expected s3://bucket/key")
    return parsed.netloc, parsed.path.lstrip("/")


_CLIENT = None


def _s3_client():
    global _CLIENT
    if _CLIENT is None:
        try:
            import boto3
        except ImportError:
            raise ImportError("reading s3:// needs boto3: pip install 'valle-corpus[s3]'") from None
        _CLIENT = boto3.client("s3")
    return _CLIENT
