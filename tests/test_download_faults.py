"""Download faults a 3 TB transfer meets over days: a crash between preallocating the .part and
saving its range ledger (or between discarding them), a file that changes on the server
mid-download (also when it must then go as one stream), a server that answers the probe with 206
and a range with 200, a full quota (at a write, or at the fsync where NFS reports it), and two
outputs (on one host or two) sharing a download folder."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import threading

import pytest

import storage.download as dl
import storage.ranged as ranged
from pipeline.fetch.transfer_pools import ThreadTasks
from pipeline.fetch.transfers import FileJob, Transfers
from sample.http_mirror import HttpMirror
from storage.download import DiskFull, download
from tests.conftest import REPO
from tests.test_download import FAST, SIZE, part_of, sha, site, source  # noqa: F401 (fixtures)
from tests.test_transfers import RANGE, assert_complete, fetch, settings


class SimulatedCrash(Exception):
    pass


def test_a_preallocated_part_is_never_taken_as_data(site, source, tmp_path, monkeypatch):
    """kill -9 right after the .part is allocated: the re-run fetches every byte, and with no
    checksum to catch it, a file of zeros would otherwise be accepted as downloaded."""
    dest, real = tmp_path / "data.bin", ranged._allocate

    def allocate_then_crash(part, total, have):
        real(part, total, have)
        raise SimulatedCrash("killed after fallocate")

    monkeypatch.setattr(ranged, "_allocate", allocate_then_crash)
    with pytest.raises(SimulatedCrash):
        ranged.prepare("http://unused/data.bin", dest, SIZE, RANGE)
    monkeypatch.undo()
    assert part_of(dest).stat().st_size == SIZE  # all zeros, full length
    with HttpMirror(site) as mirror:
        fetch([FileJob(mirror.url("data.bin"), dest, None)], settings())
    assert dest.read_bytes() == source
    assert sum(r.bytes_sent for r in mirror.requests) >= SIZE


def test_a_file_changed_on_the_server_is_fetched_again_whole(site, source, tmp_path):
    """Half the ranges of the old version are on disk when the file changes (same length): the
    re-run sends If-Range, sees the change, and starts that file over: never a mix of versions."""
    dest = tmp_path / "data.bin"
    with HttpMirror(site) as mirror:
        new = changed_after_ranges(mirror, dest, source, site, (0, 1, 2))
        fetch([FileJob(mirror.url("data.bin"), dest, None)], settings())
    assert dest.read_bytes() == new


def changed_after_ranges(mirror: HttpMirror, dest, source: bytes, site, ranges) -> bytes:
    """Fetch these ranges of the mirror's data.bin into dest's .part (its ledger saved), then
    change the file on the server: same length, other bytes (returned)."""
    url = mirror.url("data.bin")
    ledger = ranged.prepare(url, dest, SIZE, RANGE, validator=mirror.etag("data.bin"))
    for i in ranges:
        start, end = ledger.bounds(i)
        ranged.fetch_range(ranged.RangeJob(url, str(part_of(dest)), i, start, end, SIZE, validator=ledger.validator))
        ledger.done.add(i)
    ledger.save()
    new = bytes(b ^ 0xFF for b in source)
    (site / "data.bin").write_bytes(new)
    return new


def test_a_changed_file_resumed_as_one_stream_restarts(site, source, tmp_path):
    dest = tmp_path / "data.bin"
    with HttpMirror(site, drop_after_bytes=100_000, drop_first=1) as mirror:
        with pytest.raises(dl.DownloadError):
            download(mirror.url("data.bin"), dest, None, **{**FAST, "retries": 1})
        assert part_of(dest).stat().st_size == 100_000
        new = bytes(b ^ 0xFF for b in source)
        (site / "data.bin").write_bytes(new)
        download(mirror.url("data.bin"), dest, None, **FAST)
    assert dest.read_bytes() == new
    assert mirror.requests[-1].status == 200  # If-Range: the resume was refused, the file restarted


def test_a_server_that_serves_only_the_probe_as_a_range_is_streamed(site, source, tmp_path):
    dest = tmp_path / "data.bin"
    with HttpMirror(site, honour_range="probe") as mirror:
        fetch([FileJob(mirror.url("data.bin"), dest, sha(source))], settings())
        assert_complete(dest, source, sha(source))
        assert mirror.requests[-1].range is None and mirror.requests[-1].status == 200  # one stream


def test_a_full_quota_is_a_clear_error_like_a_full_disk(site, source, tmp_path, monkeypatch):
    dest = tmp_path / "data.bin"

    class OverQuota:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(dl, "open", lambda *a, **k: OverQuota(open(*a, **k)), raising=False)
    with HttpMirror(site) as mirror, pytest.raises(DiskFull, match=r"data\.bin: not enough disk space.*quota"):
        download(mirror.url("data.bin"), dest, sha(source), **FAST)


def test_two_outputs_sharing_a_download_folder_fetch_a_file_once(site, source, tmp_path):
    dest, done = tmp_path / "shared" / "data.bin", []
    with HttpMirror(site, rate_bytes_s=600_000) as mirror:

        def one_run():
            with (
                ThreadTasks() as pool,
                Transfers([FileJob(mirror.url("data.bin"), dest, sha(source))], settings(), pool, progress=False) as t,
            ):
                done.append(t.wait(dest))

        runs = [threading.Thread(target=one_run) for _ in range(2)]
        for run in runs:
            run.start()
        for run in runs:
            run.join(60)
    assert done == [dest, dest]
    assert_complete(dest, source, sha(source))
    assert sum(r.bytes_sent for r in mirror.requests if r.range != "bytes=0-0") == SIZE  # not twice


DISCARD_KILLED = """
import os, signal, sys
from pathlib import Path
import storage.ranged as ranged
unlink = Path.unlink
def unlink_then_die(self, *args, **kwargs):
    unlink(self, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)  # killed between discard's deletions
Path.unlink = unlink_then_die
ranged.discard(Path(sys.argv[1]))
"""


def test_a_discard_cut_short_never_leaves_a_part_taken_for_data(site, source, tmp_path):
    """A file that changed on the server is discarded; killed between the deletions, the re-run
    (with no checksum to catch it) must not take the preallocated .part's zeros for the file."""
    dest = tmp_path / "data.bin"
    ranged.prepare("http://unused/data.bin", dest, SIZE, RANGE)  # its ledger and a .part of zeros
    killed = subprocess.run(
        [sys.executable, "-c", DISCARD_KILLED, str(dest)], env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    assert killed.returncode == -signal.SIGKILL
    with HttpMirror(site) as mirror:
        fetch([FileJob(mirror.url("data.bin"), dest, None)], settings())
    assert dest.read_bytes() == source


def test_a_changed_file_that_now_goes_as_one_stream_resumes_with_if_range(site, source, tmp_path):
    """Ranges of the old version are on disk when the file changes; with a larger range_mb it now
    goes as one stream from the ranges' prefix: asked with If-Range and the ledger's validator, the
    server sends the whole new file, never the new file's rest after the old prefix."""
    dest = tmp_path / "data.bin"
    with HttpMirror(site) as mirror:
        new = changed_after_ranges(mirror, dest, source, site, (0, 1))
        fetch([FileJob(mirror.url("data.bin"), dest, None)], settings(range_bytes=SIZE))  # one range: a stream
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == hashlib.sha256(new).hexdigest()
    assert (mirror.requests[-1].range, mirror.requests[-1].status) == ("bytes=100000-", 200)


@pytest.mark.parametrize("ranges", [False, True])
def test_a_full_quota_reported_at_fsync_is_the_disk_full_error(site, source, tmp_path, monkeypatch, ranges):
    """NFS reports a full quota when the data is flushed (fsync, close), not at the write."""
    dest, real_fsync = tmp_path / "data.bin", os.fsync
    allowed = [int(ranges)]  # in ranges, the .part's allocation is fsynced first: that one goes through

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".part"):
            if not allowed[0]:
                raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
            allowed[0] -= 1
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with HttpMirror(site, honour_range=ranges) as mirror:
        with pytest.raises(DiskFull, match=r"data\.bin: not enough disk space .*quota"):
            fetch([FileJob(mirror.url("data.bin"), dest, sha(source))], settings())


FETCH_AS_A_HOST = """
import fcntl, socket, sys
from pathlib import Path
socket.gethostname = lambda: sys.argv[1]  # a host of its own,
fcntl.flock = lambda fd, op: None  # whose flock does not see the other's (NFS local_lock)
from pipeline.fetch.transfer_pools import ThreadTasks
from pipeline.fetch.transfers import DownloadSettings, FileJob, Transfers
from storage.hashing import Checksum
url, dest, checksum = sys.argv[2], Path(sys.argv[3]), Checksum.parse(sys.argv[4])
settings = DownloadSettings(connections=2, range_bytes=50_000, backoff_s=0.0, timeout_s=5.0)
print("ready", flush=True)
sys.stdin.readline()
with ThreadTasks() as pool, Transfers([FileJob(url, dest, checksum)], settings, pool, progress=False) as t:
    t.wait(dest)
"""


def test_two_hosts_sharing_a_download_folder_fetch_a_file_once(site, source, tmp_path):
    """Where flock does not reach across hosts, the file lock's record keeps them apart."""
    dest = tmp_path / "shared" / "data.bin"
    with HttpMirror(site, rate_bytes_s=200_000) as mirror:
        hosts = [
            subprocess.Popen(
                [sys.executable, "-c", FETCH_AS_A_HOST, name, mirror.url("data.bin"), str(dest), str(sha(source))],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
            for name in ("host-a", "host-b")
        ]
        assert [h.stdout.readline().strip() for h in hosts] == ["ready", "ready"]
        for h in hosts:  # both start at once
            h.stdin.write("go\n")
            h.stdin.flush()
        for h in hosts:
            h.wait(timeout=60)
    assert [h.returncode for h in hosts] == [0, 0]
    assert_complete(dest, source, sha(source))
    assert sum(r.bytes_sent for r in mirror.requests if r.range != "bytes=0-0") == SIZE  # not twice
