"""storage.download against a misbehaving local mirror: resume, restart, retry, verify, markers."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import pytest

from sample.http_mirror import HttpMirror
from storage.download import Checksum, DownloadError, download, is_downloaded, marker_path
from storage.files import write_json_atomic
from storage.hashing import sha256_file

SIZE = 300_000
FAST = {"backoff_s": 0.0, "progress": False, "timeout_s": 5.0}


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    (root / "data.bin").write_bytes(os.urandom(SIZE))
    return root


@pytest.fixture
def source(site: Path) -> bytes:
    return (site / "data.bin").read_bytes()


def sha(data: bytes) -> Checksum:
    return Checksum("sha256", hashlib.sha256(data).hexdigest())


def part_of(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def test_resume_after_dropped_connection_appends_after_206(site, source, tmp_path):
    dest = tmp_path / "out" / "data.bin"
    with HttpMirror(site, drop_after_bytes=100_000, drop_first=1) as mirror:
        download(mirror.url("data.bin"), dest, sha(source), **FAST)
    assert [(r.range, r.status) for r in mirror.requests] == [(None, 200), ("bytes=100000-", 206)]
    assert mirror.requests[0].bytes_sent == 100_000
    assert sha256_file(dest) == hashlib.sha256(source).hexdigest()
    assert not part_of(dest).exists()
    marker = json.loads(marker_path(dest).read_text())
    assert marker == {"url": mirror.url("data.bin"), "bytes": SIZE, "checksum": str(sha(source))}


def test_server_ignoring_range_restarts_cleanly(site, source, tmp_path):
    dest = tmp_path / "data.bin"
    part_of(dest).write_bytes(b"junk" * 1000)  # a stale .part that must not be kept
    with HttpMirror(site, honour_range=False, drop_after_bytes=50_000, drop_first=1) as mirror:
        download(mirror.url("data.bin"), dest, sha(source), **FAST)
    assert [(r.range, r.status) for r in mirror.requests] == [("bytes=4000-", 200), ("bytes=50000-", 200)]
    assert dest.read_bytes() == source  # no duplicated or stale bytes


def test_503_is_retried(site, source, tmp_path):
    dest = tmp_path / "data.bin"
    with HttpMirror(site, fail_first=2) as mirror:
        download(mirror.url("data.bin"), dest, sha(source), **FAST)
    assert [r.status for r in mirror.requests] == [503, 503, 200]
    assert dest.read_bytes() == source


def test_gives_up_after_retries_naming_url_and_last_error(site, source, tmp_path):
    dest = tmp_path / "data.bin"
    with HttpMirror(site, fail_first=100) as mirror:
        with pytest.raises(DownloadError) as err:
            download(mirror.url("data.bin"), dest, sha(source), **{**FAST, "retries": 3})
    assert len(mirror.requests) == 3
    assert mirror.url("data.bin") in str(err.value) and "503" in str(err.value)
    assert not dest.exists() and not marker_path(dest).exists()


def test_timeout_is_retried(site, source, tmp_path):
    dest = tmp_path / "data.bin"
    with HttpMirror(site, stall_first=1, stall_s=1.0) as mirror:
        download(mirror.url("data.bin"), dest, sha(source), **{**FAST, "timeout_s": 0.3})
    assert dest.read_bytes() == source
    assert [r.status for r in mirror.requests][-1] == 200


def test_redirect_is_followed_and_keeps_range(site, source, tmp_path):
    dest = tmp_path / "data.bin"
    part_of(dest).write_bytes(source[:1234])  # an earlier interrupted run
    with HttpMirror(site) as mirror:
        download(mirror.redirect_url("data.bin"), dest, sha(source), **FAST)
    assert [(r.path, r.range, r.status) for r in mirror.requests] == [
        ("/redirect/data.bin", "bytes=1234-", 302),
        ("/data.bin", "bytes=1234-", 206),
    ]
    assert dest.read_bytes() == source


def test_complete_part_answered_416_is_verified_not_refetched(site, source, tmp_path):
    dest = tmp_path / "data.bin"
    part_of(dest).write_bytes(source)
    with HttpMirror(site) as mirror:
        download(mirror.url("data.bin"), dest, sha(source), **FAST)
    assert [(r.status, r.bytes_sent) for r in mirror.requests] == [(416, 0)]
    assert dest.read_bytes() == source and is_downloaded(dest, sha(source))


def test_checksum_mismatch_raises_and_leaves_nothing(site, source, tmp_path):
    dest = tmp_path / "data.bin"
    wrong = Checksum("sha256", "0" * 64)
    with HttpMirror(site) as mirror:
        with pytest.raises(DownloadError) as err:
            download(mirror.url("data.bin"), dest, wrong, **FAST)
    message = str(err.value)
    assert "0" * 64 in message and hashlib.sha256(source).hexdigest() in message
    assert "data.bin" in message
    assert not dest.exists() and not marker_path(dest).exists() and not part_of(dest).exists()


def test_md5_checksum(site, source, tmp_path):
    dest = tmp_path / "data.bin"
    md5 = Checksum.parse("md5:" + hashlib.md5(source).hexdigest().upper())
    with HttpMirror(site) as mirror:
        download(mirror.url("data.bin"), dest, md5, **FAST)
        with pytest.raises(DownloadError, match="md5 mismatch"):
            download(mirror.url("data.bin"), tmp_path / "other.bin", Checksum("md5", "f" * 32), **FAST)
    assert json.loads(marker_path(dest).read_text())["checksum"] == str(md5)
    assert str(md5) == "md5:" + hashlib.md5(source).hexdigest()


def test_completed_download_rerun_makes_no_request(site, source, tmp_path):
    dest = tmp_path / "data.bin"
    with HttpMirror(site) as mirror:
        download(mirror.url("data.bin"), dest, sha(source), **FAST)
        assert len(mirror.requests) == 1
        assert download(mirror.url("data.bin"), dest, sha(source), **FAST) == dest
        assert download(mirror.url("data.bin"), dest, None, **FAST) == dest
        # A different checksum re-hashes the file on disk instead of fetching it again.
        md5 = Checksum("md5", hashlib.md5(source).hexdigest())
        download(mirror.url("data.bin"), dest, md5, **FAST)
        assert len(mirror.requests) == 1
    assert json.loads(marker_path(dest).read_text())["checksum"] == str(md5)
    assert is_downloaded(dest, md5) and not is_downloaded(dest, sha(source))


def test_file_without_marker_or_with_wrong_size_is_not_trusted(site, source, tmp_path):
    dest = tmp_path / "data.bin"
    dest.write_bytes(b"looks finished but is not")
    assert not is_downloaded(dest)
    with HttpMirror(site) as mirror:
        download(mirror.url("data.bin"), dest, sha(source), **FAST)
        assert dest.read_bytes() == source
        with open(dest, "ab") as f:  # changed behind the marker's back
            f.write(b"x")
        assert not is_downloaded(dest)
        download(mirror.url("data.bin"), dest, sha(source), **FAST)
    assert len(mirror.requests) == 2 and dest.read_bytes() == source


def test_file_url_resumes_from_part(site, source, tmp_path):
    dest = tmp_path / "data.bin"
    part_of(dest).write_bytes(source[:777])
    download((site / "data.bin").as_uri(), dest, sha(source), **FAST)
    assert dest.read_bytes() == source and is_downloaded(dest, sha(source))


def test_file_url_missing_fails_fast(tmp_path):
    with pytest.raises(DownloadError, match="does not exist"):
        download((tmp_path / "nope.bin").as_uri(), tmp_path / "x", **FAST)


def test_404_fails_fast_with_clear_message(site, tmp_path):
    with HttpMirror(site) as mirror:
        started = time.monotonic()
        with pytest.raises(DownloadError) as err:
            download(mirror.url("missing.bin"), tmp_path / "m.bin", retries=8, backoff_s=10.0, progress=False)
    assert time.monotonic() - started < 9.0  # a retry would have waited backoff_s=10 first
    assert len(mirror.requests) == 1
    assert mirror.url("missing.bin") in str(err.value) and "404" in str(err.value)


def test_no_checksum_warns_unverified(site, source, tmp_path, caplog):
    dest = tmp_path / "data.bin"
    with HttpMirror(site) as mirror, caplog.at_level(logging.WARNING, logger="storage.download"):
        download(mirror.url("data.bin"), dest, None, **FAST)
    assert dest.read_bytes() == source
    assert any("NOT verified" in r.getMessage() for r in caplog.records)
    assert json.loads(marker_path(dest).read_text())["checksum"] is None


def test_checksum_parse():
    digest = "ab" * 32
    assert Checksum.parse(f" SHA256:{digest.upper()} ") == Checksum("sha256", digest)
    assert str(Checksum.parse(f"sha256:{digest}")) == f"sha256:{digest}"
    for bad in [digest, f"sha1:{'a' * 40}", "sha256:abc", "md5:" + "z" * 32]:
        with pytest.raises(ValueError, match="checksum"):
            Checksum.parse(bad)


def test_write_json_atomic_is_deterministic(tmp_path):
    path = tmp_path / "sub" / "x.json"
    write_json_atomic(path, {"b": 1, "a": ["é", None]})
    assert path.read_bytes() == '{\n "a": [\n  "é",\n  null\n ],\n "b": 1\n}\n'.encode()
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]  # no temp file left behind


def test_part_longer_than_remote_file_is_discarded(site, source, tmp_path):
    dest = tmp_path / "data.bin"
    part_of(dest).write_bytes(source + b"trailing garbage")
    with HttpMirror(site) as mirror:
        download(mirror.url("data.bin"), dest, sha(source), **FAST)
    assert [(r.range, r.status) for r in mirror.requests] == [(f"bytes={SIZE + 16}-", 416), (None, 200)]
    assert dest.read_bytes() == source


def test_retry_budget_resets_after_progress(site, source, tmp_path):
    """Twelve drops, each after new bytes, with a budget of three: a long transfer goes on."""
    dest = tmp_path / "data.bin"
    with HttpMirror(site, drop_after_bytes=20_000, drop_first=12) as mirror:
        download(mirror.url("data.bin"), dest, sha(source), **{**FAST, "retries": 3})
    assert dest.read_bytes() == source
    assert [r.range for r in mirror.requests] == [None] + [f"bytes={20_000 * i}-" for i in range(1, 13)]


def test_attempts_that_get_no_further_still_give_up(site, source, tmp_path):
    """A server that ignores Range and drops at the same byte never gets past 50,000."""
    dest = tmp_path / "data.bin"
    with HttpMirror(site, honour_range=False, drop_after_bytes=50_000, drop_first=100) as mirror:
        with pytest.raises(
            DownloadError,
            match=r"gave up after 3 attempts in a row without "
            r"progress \(3 in all, 50000 bytes at best\)",
        ):
            download(mirror.url("data.bin"), dest, sha(source), **{**FAST, "retries": 3})
    assert len(mirror.requests) == 3


def test_no_room_for_the_rest_is_a_clear_error_before_writing(site, source, tmp_path, monkeypatch):
    import shutil

    import storage.download as dl

    dest = tmp_path / "dl" / "data.bin"
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(dl.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    with HttpMirror(site) as mirror:
        with pytest.raises(dl.DiskFull) as err:
            download(mirror.url("data.bin"), dest, sha(source), **FAST)
    message = str(err.value)
    assert str(dest) in message and f"{SIZE:,} more bytes" in message and "1,000 bytes" in message
    assert "run again" in message and len(mirror.requests) == 1
    assert not part_of(dest).exists() or part_of(dest).stat().st_size == 0


def test_disk_full_while_writing_keeps_the_part_for_resuming(site, source, tmp_path, monkeypatch):
    import errno

    import storage.download as dl

    class FillsUp:  # a file on a disk with room for 100,000 bytes
        def __init__(self, f):
            self.f = f

        def write(self, data):
            if self.f.tell() + len(data) > 100_000:
                self.f.write(data[: 100_000 - self.f.tell()])
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    dest = tmp_path / "data.bin"
    monkeypatch.setattr(dl, "open", lambda *a, **k: FillsUp(open(*a, **k)), raising=False)
    with HttpMirror(site) as mirror:
        with pytest.raises(dl.DiskFull, match=r"data\.bin: not enough disk space .*200,000 more bytes"):
            download(mirror.url("data.bin"), dest, sha(source), **FAST)
        assert len(mirror.requests) == 1  # not retried: another attempt would fill it again
        assert part_of(dest).read_bytes() == source[:100_000]
        monkeypatch.undo()  # space freed: the same call resumes
        download(mirror.url("data.bin"), dest, sha(source), **FAST)
    assert dest.read_bytes() == source and mirror.requests[-1].range == "bytes=100000-"
