"""Ranged download throughput: 1 connection vs N, against a server that caps each connection.

    python bench/bench_download.py                    # 300 MB, 20 MB/s per connection, 1 and 8
    python bench/bench_download.py --mb 500 --rate-mb 50 --connections 1 --connections 16

A local HTTP server (sample/http_mirror.py, in its own process so it does not share the GIL with
the clients) serves a generated file on 127.0.0.1 and holds every response to --rate-mb MB/s,
like a CDN's per-connection cap. The file is downloaded with pipeline.fetch.transfers: on Ray (the
production path: Ray is started first; the first run, while its transfer actors start, is shown
as "cold", then the same actors serve the timed runs, as they serve a whole run in production)
and in threads. Reported per run: wall seconds from the start to the file in place,
MB/s, and the ratio to one connection. The checksum is left out of the timed run (it is one
sequential pass over the file, the same for any number of connections) and timed alone: the
sha256 of the file, which a checked download adds once. Peak RSS of this process is printed
for the thread runs (they run in it): it does not grow with the file, as ranges are streamed
in 1 MiB chunks.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.fetch.transfer_pools import RayTasks, ThreadTasks  # noqa: E402
from pipeline.fetch.transfers import DownloadSettings, FileJob, Transfers  # noqa: E402
from storage.hashing import hash_file  # noqa: E402


def serve(root: str, rate: float, ready) -> None:
    from sample.http_mirror import HttpMirror

    with HttpMirror(Path(root), rate_bytes_s=rate) as mirror:
        ready.put(mirror.base_url)
        while True:
            time.sleep(3600)


def timed_download(url: str, dest: Path, connections: int, range_mb: float, pool) -> float:
    for stale in dest.parent.glob(dest.name + "*"):
        stale.unlink()
    settings = DownloadSettings(connections=connections, range_bytes=int(range_mb * 1e6))
    started = time.perf_counter()
    with Transfers([FileJob(url, dest)], settings, pool, progress=False) as t:
        t.wait(dest)
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=300, help="file size, MB")
    ap.add_argument("--rate-mb", type=float, default=20.0, help="per-connection cap, MB/s")
    ap.add_argument("--range-mb", type=float, default=8.0, help="download.range_mb")
    ap.add_argument("--connections", type=int, action="append", help="default: 1 and 8")
    ap.add_argument("--pools", default="ray,threads")
    args = ap.parse_args()
    counts = args.connections or [1, 8]
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("storage.download").setLevel(logging.ERROR)  # "NOT verified" on purpose

    work = Path(tempfile.mkdtemp(prefix="bench_download."))
    try:
        (work / "site").mkdir()
        source = work / "site" / "big.bin"
        with open(source, "wb") as f:
            for _ in range(args.mb):
                f.write(os.urandom(10**6))
        expected = hash_file(source, "sha256")
        ctx = multiprocessing.get_context("spawn")
        ready = ctx.Queue()
        server = ctx.Process(target=serve, args=(str(work / "site"), args.rate_mb * 1e6, ready), daemon=True)
        server.start()
        url = ready.get(timeout=30) + "/big.bin"
        dest = work / "out" / "big.bin"
        dest.parent.mkdir()
        print(
            f"file {args.mb} MB, {args.rate_mb:g} MB/s per connection, ranges of {args.range_mb:g} MB, "
            f"{os.cpu_count()} CPUs"
        )
        rows = []
        for name in args.pools.split(","):
            if name == "ray":
                import ray

                ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
                pool = RayTasks()
                # Cold: the transfer actors start during this run (a process each, 2 at a time
                # on a 2-CPU Ray): once per run in production, where a range takes a minute.
                seconds = timed_download(url, dest, max(counts), args.range_mb, pool)
                rows.append(("ray, cold", max(counts), seconds, args.mb / seconds, None))
            else:
                pool = ThreadTasks()
            base = None
            for n in counts:
                seconds = timed_download(url, dest, n, args.range_mb, pool)
                assert hash_file(dest, "sha256") == expected, "downloaded file differs"
                base = base or seconds
                rows.append((name, n, seconds, args.mb / seconds, base / seconds))
            pool.close()
            if name == "ray":
                ray.shutdown()
        started = time.perf_counter()
        hash_file(dest, "sha256")
        hash_s = time.perf_counter() - started
        print("\n| pool | connections | seconds | MB/s | vs 1 connection |\n|---|---|---|---|---|")
        for name, n, seconds, rate, ratio in rows:
            print(f"| {name} | {n} | {seconds:.2f} | {rate:.1f} | {'' if ratio is None else f'{ratio:.2f}x'} |")
        print(
            f"\nsha256 of the {args.mb} MB file (the verification a checked download adds): "
            f"{hash_s:.2f} s ({args.mb / hash_s:.0f} MB/s)"
        )
        print(
            f"peak RSS of this process (server elsewhere; thread runs in it): "
            f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
        )
        server.terminate()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
