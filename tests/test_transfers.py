"""pipeline.fetch.transfers + storage.ranged against a misbehaving local server: ranges under a
connection cap, no byte fetched twice after drops, 503s, servers without Range, kill -9 and
resume (bytes served counted), lost range tasks, Ray tasks, the runner's Sources."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pipeline.fetch.transfers as transfers
from pipeline.dag import DagError, load_dag
from pipeline.fetch.transfer_pools import RayTasks, ThreadTasks
from pipeline.fetch.transfers import DownloadSettings, FileJob, Transfers
from sample.faulty_proxy import FaultyProxy
from sample.http_mirror import HttpMirror
from storage.download import Checksum, DiskFull, DownloadError, marker_path
from storage.ranged import RangeLedger, ledger_path, prepare
from tests.conftest import REPO, write_dag
from tests.test_download import SIZE, sha, site, source  # noqa: F401 (the same fixtures)

RANGE = 50_000  # SIZE is six ranges


def settings(**kw) -> DownloadSettings:
    return DownloadSettings(**{"connections": 2, "range_bytes": RANGE, "backoff_s": 0.0, "timeout_s": 5.0, **kw})


def fetch(jobs: list[FileJob], s: DownloadSettings, pool=None) -> list[Path]:
    with pool or ThreadTasks() as pool, Transfers(jobs, s, pool, progress=False) as t:
        return [t.wait(j.dest) for j in jobs]


def ranges(total: int, size: int) -> set[str]:
    return {f"bytes={a}-{min(a + size, total) - 1}" for a in range(0, total, size)}


def assert_complete(dest: Path, data: bytes, checksum: Checksum) -> None:
    assert dest.read_bytes() == data
    assert json.loads(marker_path(dest).read_text())["checksum"] == str(checksum)
    assert not ledger_path(dest).exists() and not dest.with_name(dest.name + ".part").exists()


def test_ranges_each_fetched_once_under_the_connection_cap(site, source, tmp_path):
    dest, md5 = tmp_path / "out" / "data.bin", Checksum("md5", hashlib.md5(source).hexdigest())
    with HttpMirror(site, rate_bytes_s=400_000) as mirror:  # slow enough to overlap
        fetch([FileJob(mirror.url("data.bin"), dest, md5)], settings(connections=3))
    assert [(r.range, r.status) for r in mirror.requests][0] == ("bytes=0-0", 206)  # the probe
    fetched = [r.range for r in mirror.requests[1:]]
    assert sorted(fetched) == sorted(ranges(SIZE, RANGE)) and all(r.status == 206 for r in mirror.requests)
    assert mirror.peak_active == 3  # in parallel, and never more than the cap
    assert sum(r.bytes_sent for r in mirror.requests) == SIZE + 1
    assert_complete(dest, source, md5)


def test_files_share_the_cap_and_small_ones_stream(site, source, tmp_path):
    (site / "small.bin").write_bytes(source[:RANGE])  # one range long: one stream, no ledger
    jobs = [FileJob("", tmp_path / "small.bin", sha(source[:RANGE])), FileJob("", tmp_path / "data.bin", sha(source))]
    with HttpMirror(site, rate_bytes_s=400_000) as mirror:
        jobs = [FileJob(mirror.url(j.dest.name), j.dest, j.checksum) for j in jobs]
        fetch(jobs, settings(connections=2))
    assert mirror.peak_active == 2
    assert [r.range for r in mirror.requests if r.path == "/small.bin"] == ["bytes=0-0", None]
    assert_complete(tmp_path / "small.bin", source[:RANGE], sha(source[:RANGE]))
    assert_complete(tmp_path / "data.bin", source, sha(source))


def test_server_without_range_falls_back_to_one_stream(site, source, tmp_path):
    dest = tmp_path / "data.bin"
    with HttpMirror(site, honour_range=False) as mirror:
        fetch([FileJob(mirror.url("data.bin"), dest, sha(source))], settings())
    assert [(r.range, r.status) for r in mirror.requests] == [("bytes=0-0", 200), (None, 200)]
    assert_complete(dest, source, sha(source))


def test_dropped_connections_resume_mid_range_and_no_byte_comes_twice(site, source, tmp_path):
    dest = tmp_path / "data.bin"
    # Bodies 2-4 (the probe's 1-byte body is the first) are cut after 20,000 bytes.
    with HttpMirror(site, drop_after_bytes=20_000, drop_first=4) as mirror:
        fetch([FileJob(mirror.url("data.bin"), dest, sha(source))], settings(connections=1, retries=2))
    assert [r.range for r in mirror.requests[:5]] == [
        "bytes=0-0",
        "bytes=0-49999",
        "bytes=20000-49999",
        "bytes=40000-49999",
        "bytes=50000-99999",
    ]
    assert sum(r.bytes_sent for r in mirror.requests) == SIZE + 1
    assert_complete(dest, source, sha(source))


def test_503s_and_drops_through_a_proxy_are_retried(site, source, tmp_path):
    dest = tmp_path / "data.bin"
    with (
        HttpMirror(site) as mirror,
        FaultyProxy(mirror.base_url, schedule=("503", "ok", "503", "drop", "503", "ok")) as proxy,
    ):
        fetch([FileJob(proxy.base_url + "/data.bin", dest, sha(source))], settings())
    assert proxy.faults == {"503": 3, "drop": 1}
    assert_complete(dest, source, sha(source))


def test_a_lost_range_task_runs_again_and_the_others_are_kept(site, source, tmp_path, monkeypatch):
    dest, lost = tmp_path / "data.bin", []
    real = transfers.fetch_range

    def dies_once(job, report):
        if job.index == 2 and not lost:
            lost.append(job.index)
            raise RuntimeError("worker process died")  # what Ray reports for a lost task
        return real(job, report)

    monkeypatch.setattr(transfers, "fetch_range", dies_once)
    with HttpMirror(site) as mirror:
        fetch([FileJob(mirror.url("data.bin"), dest, sha(source))], settings())
    assert lost == [2] and sorted(r.range for r in mirror.requests[1:]) == sorted(ranges(SIZE, RANGE))
    assert_complete(dest, source, sha(source))


def test_a_failing_file_fails_alone(site, source, tmp_path):
    good, bad = tmp_path / "data.bin", tmp_path / "missing.bin"
    with HttpMirror(site) as mirror:
        jobs = [FileJob(mirror.url("missing.bin"), bad), FileJob(mirror.url("data.bin"), good, sha(source))]
        with ThreadTasks() as pool, Transfers(jobs, settings(), pool, progress=False) as t:
            with pytest.raises(DownloadError, match=r"missing\.bin: HTTP 404"):
                t.wait(bad)
            assert t.wait(good) == good
    assert_complete(good, source, sha(source))


def test_checksum_mismatch_after_ranges_leaves_nothing(site, source, tmp_path):
    dest = tmp_path / "data.bin"
    with HttpMirror(site) as mirror:
        with pytest.raises(DownloadError, match="sha256 mismatch"):
            fetch([FileJob(mirror.url("data.bin"), dest, Checksum("sha256", "0" * 64))], settings())
    assert not any(tmp_path.glob("data.bin*"))


KILLED_RUN = """
import sys
from pathlib import Path
from storage.download import Checksum
from pipeline.fetch.transfer_pools import ThreadTasks
from pipeline.fetch.transfers import DownloadSettings, FileJob, Transfers
url, dest, checksum = sys.argv[1], Path(sys.argv[2]), Checksum.parse(sys.argv[3])
with ThreadTasks() as pool, Transfers([FileJob(url, dest, checksum)], DownloadSettings(
        connections=2, range_bytes=100_000, backoff_s=0.0), pool, progress=False) as t:
    t.wait(dest)
"""


def test_kill_9_then_rerun_fetches_only_the_missing_ranges(site, tmp_path):
    data = os.urandom(1_200_000)  # twelve ranges of 100,000 bytes
    (site / "big.bin").write_bytes(data)
    dest, script = tmp_path / "out" / "big.bin", tmp_path / "killed.py"
    script.write_text(KILLED_RUN)
    with HttpMirror(site, rate_bytes_s=400_000) as first:  # ~1.5 s for the whole file
        proc = subprocess.Popen(
            [sys.executable, str(script), first.url("big.bin"), str(dest), str(sha(data))],
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        deadline = time.monotonic() + 60
        while len((RangeLedger.load(dest) or RangeLedger(dest, "", 1, 1, set())).done) < 4:
            assert proc.poll() is None and time.monotonic() < deadline, "the download ended early"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        done = RangeLedger.load(dest).done
        assert 4 <= len(done) < 12 and not marker_path(dest).exists()
    with HttpMirror(site) as mirror:  # a new server: what it serves is the re-run's alone
        fetch([FileJob(mirror.url("big.bin"), dest, sha(data))], settings(range_bytes=100_000))
    missing = {f"bytes={i * 100_000}-{i * 100_000 + 99_999}" for i in range(12) if i not in done}
    assert sorted(r.range for r in mirror.requests[1:]) == sorted(missing)
    assert sum(r.bytes_sent for r in mirror.requests) == 100_000 * len(missing) + 1
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == sha(data).hexdigest
    assert_complete(dest, data, sha(data))


def test_ledger_is_runs_of_ranges_and_keeps_its_range_size(tmp_path):
    ledger = RangeLedger(tmp_path / "x.ranges.json", "u", 3 * 10**12, 2 * 10**9, set(range(1500)) - {7, 900})
    ledger.save()
    assert json.loads(ledger.path.read_text())["done"] == [[0, 6], [8, 899], [901, 1499]]
    assert ledger.path.stat().st_size < 200 and RangeLedger.load(tmp_path / "x").done == ledger.done

    dest = tmp_path / "f.bin"
    first = prepare("u", dest, 1000, 100)
    first.done = {0, 1}
    first.save()
    again = prepare("u", dest, 1000, 300)  # another range_mb: the ledger's size stands
    assert (again.range_bytes, again.done) == (100, {0, 1})
    changed = prepare("u", dest, 2000, 300)  # another length: the remote file changed
    assert (changed.range_bytes, changed.done, changed.total) == (300, set(), 2000)
    assert dest.with_name("f.bin.part").stat().st_size == 2000


def test_a_single_stream_part_counts_as_its_ranges(tmp_path):
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(b"x" * 250)
    assert prepare("u", dest, 1000, 100).done == {0, 1}


def test_no_room_for_the_file_is_a_clear_error_before_any_range(site, source, tmp_path, monkeypatch):
    import storage.ranged as ranged

    usage = ranged.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(ranged.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    dest = tmp_path / "data.bin"
    with HttpMirror(site) as mirror:
        with pytest.raises(DiskFull, match=rf"data\.bin: not enough disk space .*{SIZE:,} more bytes"):
            fetch([FileJob(mirror.url("data.bin"), dest, sha(source))], settings())
    assert [r.range for r in mirror.requests] == ["bytes=0-0"]


def test_a_disk_that_refuses_the_allocation_is_a_clear_error(tmp_path, monkeypatch):
    import errno

    import storage.ranged as ranged

    def full(fd, total):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ranged, "_fallocate", full)
    with pytest.raises(DiskFull, match=r"f\.bin: not enough disk space .*1,000 more bytes"):
        prepare("u", tmp_path / "f.bin", 1000, 100)
    assert not ledger_path(tmp_path / "f.bin").exists()  # no ledger for a .part not allocated


def test_file_urls_go_in_ranges_too(site, source, tmp_path):
    dest = tmp_path / "data.bin"
    fetch([FileJob((site / "data.bin").as_uri(), dest, sha(source))], settings())
    assert_complete(dest, source, sha(source))


def test_ranges_as_ray_tasks(site, source, tmp_path, ray_address):
    dest = tmp_path / "data.bin"
    with HttpMirror(site, rate_bytes_s=100_000) as mirror:  # 0.5 s a range: workers overlap
        fetch([FileJob(mirror.url("data.bin"), dest, sha(source))], settings(), RayTasks())
    assert sorted(r.range for r in mirror.requests[1:]) == sorted(ranges(SIZE, RANGE))
    assert mirror.peak_active == 2
    assert_complete(dest, source, sha(source))


def test_a_dead_ray_actor_costs_only_its_own_range(site, source, tmp_path, ray_address, caplog):
    import ray

    dest = tmp_path / "data.bin"
    with (
        HttpMirror(site, rate_bytes_s=100_000) as mirror,
        RayTasks() as pool,
        Transfers([FileJob(mirror.url("data.bin"), dest, sha(source))], settings(), pool, progress=False) as t,
    ):
        deadline = time.monotonic() + 60
        while mirror.active < 2:  # two ranges under way, 0.5 s each
            assert time.monotonic() < deadline
            time.sleep(0.01)
        ray.kill(list(pool._busy.values())[0])  # its process dies mid-range
        t.wait(dest)
    fetched = [r.range for r in mirror.requests[1:]]
    assert set(fetched) == ranges(SIZE, RANGE) and len(fetched) == 7  # one range twice
    assert any("was lost" in r.getMessage() for r in caplog.records)
    assert_complete(dest, source, sha(source))


def test_runner_sources_plan_while_the_audio_arrives(tmp_path, tiny_corpus):
    from pipeline.fetch.sources import Sources

    dag = load_dag(write_dag(tmp_path / "d.yaml", tiny_corpus, download={"range_mb": 0.02}))
    with Sources(dag, tmp_path / "out", False, ThreadTasks()) as sources:
        manifests = sources.manifests()
        assert manifests["dev"].read_bytes() == tiny_corpus.manifests["dev"].read_bytes()
        store = sources.audio_store()
    tar = tmp_path / "out" / "downloads" / "small.tar"
    assert tar.read_bytes() == tiny_corpus.tars["small"].read_bytes() and store is not None
    assert tar.stat().st_size > 20_000  # so it did go in ranges


def test_download_settings_are_checked_and_do_not_change_the_fingerprint(tmp_path, tiny_corpus):
    path = write_dag(tmp_path / "d.yaml", tiny_corpus)
    base = load_dag(path)
    assert (base.download.connections, base.download.range_bytes) == (8, 2_000_000_000)
    assert load_dag(path, ["download.connections=16", "download.range_mb=0.5"]).fingerprint() == base.fingerprint()
    for bad, message in [
        ("download.connections=0", r"download\.connections must be > 0"),
        ("download.range_mb=-1", r"download\.range_mb must be > 0"),
        ("download.conections=3", r"did you mean 'connections'"),
    ]:
        with pytest.raises(DagError, match=message):
            load_dag(path, [bad])
