"""Planning at Libriheavy-large scale: time and peak memory on generated manifests.

    python bench/bench_plan.py                       # 250 k and 1 M lines, extrapolated to 12 M
    python bench/bench_plan.py --lines 100000 --lines 400000 --old-sample 5000

Manifests are generated in the real line format (shared/LIBRIHEAVY.md): ~50 cuts per
recording, cuts of 2-30 s, book and ASR `texts`, and `pre_texts` of up to 1,000 characters each
taken from the preceding text of the same "book" (so gzip compresses them as it does the real
file, whose 12 M lines take 7.12 GB: ~590 bytes a line). They are cached under --cache.

Each planning run is a fresh process (`plan_subset`, no progress bar), so its peak RSS is its
own; each size is planned twice, serially (blocks parsed in the planning process) and in
parallel (the default pool of worker processes), and the two plans must be identical. Reported
per size: the manifest's sha256 alone (the fingerprint), inflating alone with Python's zlib and
with ISA-L as planning does (the one serial step), parsing alone on one core, both plans, a re-run
with nothing changed, and peak RSS (driver, and the largest worker). The duplicate-id step (the
memory that grows with the corpus: 16 bytes an id, ~3x while sorting) is also run alone on 12 M
ids in a fresh process. For 12 M lines: time scales linearly from the larger size; memory is
bounded by the larger size's peak plus the id step's peak at 12 M. `--old-sample N` also times
the previous per-line path (lhotse's MonoCut.from_dict) on N lines.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sample.lookalike import manifest_line  # noqa: E402

GENERATOR_VERSION = 1
FULL_SCALE = 12_000_000
PREFIX = "download/librilight/"
BLOCK = 8 * 1024 * 1024
SAMPLE_BLOCKS = 20  # blocks (~50 k lines) whose parsing alone is timed on one core


def _vocabulary(rng: random.Random) -> tuple[list[str], list[float]]:
    """20,000 made-up words with Zipf frequencies (as in English text), as cumulative weights."""
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    weights = [12, 9, 8, 8, 7, 7, 6, 6, 6, 4, 4, 3, 3, 2, 2, 2, 2, 2, 2, 1.5, 1, 0.8, 0.2, 0.2, 0.1, 0.1]
    words = ["the", "and", "of", "to", "a", "in", "he", "was", "that", "it", "his", "her", "said"]
    while len(words) < 20_000:
        words.append("".join(rng.choices(letters, weights, k=rng.randint(2, 10))))
    cum, total = [], 0.0
    for rank in range(1, len(words) + 1):
        total += 1 / rank
        cum.append(total)
    return words, cum


def _sentence(rng: random.Random, vocab, seconds: float) -> str:
    words, cum = vocab
    text = " ".join(rng.choices(words, cum_weights=cum, k=max(3, round(seconds * 2.6))))
    text = text[0].upper() + text[1:]
    if rng.random() < 0.2:  # dialogue: curly quotes, escaped as \\u201c in the JSON
        text = f"\u201c{text},\u201d he said"
    return text + rng.choice([".", ".", ".", "?", "!", ";"])


def _asr(text: str) -> str:
    return " ".join("".join(ch for ch in w if ch.isalnum() or ch == "'") for w in text.upper().split())


def generate(path: Path, lines: int, seed: int = 0) -> None:
    """Write `lines` cuts in the Libriheavy format, recording after recording, gzip level 6."""
    rng = random.Random(seed)
    vocab = _vocabulary(rng)
    tmp = path.with_name(path.name + ".partial")
    written = 0
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz:
        rec_index = 0
        while written < lines:
            speaker = str(100 + rec_index // 12)
            book = f"{rng.choice(vocab[0])}_{rng.choice(vocab[0])}_{rec_index // 4}_librivox_64kb_mp3"
            rec = f"large/{speaker}/{book}/{rec_index % 4:02d}_{book[:12]}_64kb"
            rec_index += 1
            n = min(rng.randint(20, 80), lines - written)
            book_text, asr_text, start, cuts = "", "", rng.uniform(0.5, 3.0), []
            for k in range(n):
                duration = int(rng.uniform(2.0, 30.0) * 1000) / 1000  # floored to ms
                text = _sentence(rng, vocab, duration)
                texts, pre_texts = [text, _asr(text)], [book_text[-1000:], asr_text[-1000:]]
                cuts.append((f"{rec}_{k}", start, duration, texts, pre_texts, len(book_text)))
                book_text += text + " "
                asr_text += _asr(text) + " "
                start += duration + rng.uniform(0.1, 1.5) + rng.random() * 1e-7  # unrounded
            num_samples = int((start + 2.0) * 16000)
            text_path = f"download/librilight_text/output_text_large_cleaned/{book}/text.txt"
            rows = [
                manifest_line(
                    cut_id,
                    rec,
                    speaker,
                    at,
                    seconds,
                    texts,
                    pre_texts,
                    begin,
                    num_samples,
                    f"{PREFIX}{rec}.flac",
                    text_path,
                )
                for cut_id, at, seconds, texts, pre_texts, begin in cuts
            ]
            rng.shuffle(rows)  # cut numbers follow the aligner's choice, not time
            gz.write("".join(json.dumps(r) + "\n" for r in rows).encode())
            written += n
    os.replace(tmp, path)


def manifest(cache: Path, lines: int) -> Path:
    path = cache / f"libriheavy_cuts_bench{lines}-v{GENERATOR_VERSION}.jsonl.gz"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        generate(path, lines)
        print(
            f"generated {path} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.0f} s", file=sys.stderr
        )
    return path


def child(path: Path, work: Path, mode: str) -> dict:
    """One planning run in this (fresh) process, then (serial mode) its phases timed alone.
    `mode`: "serial" (blocks parsed in this process) or "parallel" (the default worker pool)."""
    from pipeline.plan.manifest import libriheavy_input
    from pipeline.plan.parse_pool import ProcessParsers, SerialParsers
    from pipeline.plan.subsets import plan_subset
    from storage.hashing import sha256_file

    parsers, workers_peak = SerialParsers() if mode == "serial" else ProcessParsers(), [0]
    cpu = _cpu_s()
    with parsers:
        t = time.perf_counter()
        plan = plan_subset(libriheavy_input(path), "bench", "train", work, 20.0, progress=False, parsers=parsers)
        total = time.perf_counter() - t
        if mode == "parallel":  # each worker's own high-water mark (ru_maxrss of children
            # would count the driver's memory at the time they were started)
            workers_peak = [_vm_hwm_mb(pid) for pid in parsers.pool._processes]
    cpu = _cpu_s() - cpu  # the workers' CPU counts once they have exited (the pool is shut)
    result = {
        "cpu_s": cpu,
        "units": len(plan.units),
        "cuts": sum(u.cuts for u in plan.units),
        "rejects": len(plan.rejects),
        "workers": parsers.workers,
        "plan_s": total,
        "units_sha": [u.sha256 for u in plan.units],
        "worker_rss_mb": max(workers_peak),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    t = time.perf_counter()
    plan_subset(libriheavy_input(path), "bench", "train", work, 20.0, progress=False)
    result["rerun_s"] = time.perf_counter() - t
    result.update(new_exclusions(path, Path(work), result["cuts"]))
    t = time.perf_counter()
    sha256_file(path)
    result["sha256_s"] = time.perf_counter() - t
    if mode == "serial":
        result.update(phases(path))
    return result


def new_exclusions(path: Path, work: Path, cuts: int) -> dict:
    """A subset of higher priority now keeps 1 % of the ids: planned again from the kept parse
    (no inflating, no parsing). Also the kept parse's size on disk against the unit files'."""
    from pipeline.plan import cut_ids
    from pipeline.plan.manifest import libriheavy_input
    from pipeline.plan.subsets import ids_path, plan_subset

    ids = cut_ids.load(ids_path(work, "bench"))
    taken = ids[::100]
    t = time.perf_counter()
    plan = plan_subset(
        libriheavy_input(path), "bench", "train", work, 20.0, progress=False, earlier=[("held-out", taken)]
    )
    seconds = time.perf_counter() - t
    if sum(u.cuts for u in plan.units) != cuts - len(taken):
        raise SystemExit(f"{path}: re-planned with new exclusions, the plan lost the wrong cuts")
    units_bytes = sum(f.stat().st_size for f in (work / "plan/bench").iterdir())
    return {
        "exclusions_s": seconds,
        "kept_mb": (work / "plan/bench.parsed/cuts.tsv").stat().st_size / 1e6,
        "units_mb": units_bytes / 1e6,
    }


def phases(path: Path) -> dict:
    """Inflating alone (Python's zlib, and ISA-L in line-aligned blocks as planning does: the
    serial part) and parsing alone on one core (the first SAMPLE_BLOCKS blocks)."""
    from pipeline.plan.manifest import LibriheavyLines, parse_block, read_blocks

    t = time.perf_counter()
    with open(path, "rb") as raw, gzip.GzipFile(fileobj=raw) as gz:
        while gz.read(BLOCK):
            pass
    zlib_s = time.perf_counter() - t
    t = time.perf_counter()
    lines, sample = 0, []
    for first, block in read_blocks(path):
        lines += block.count(b"\n") + 1
        if len(sample) < SAMPLE_BLOCKS:
            sample.append((first, block))
    inflate = time.perf_counter() - t
    t = time.perf_counter()
    sampled = sum(parse_block(block, first, LibriheavyLines(PREFIX), "bench")[0].lines for first, block in sample)
    return {
        "lines": lines,
        "zlib_s": zlib_s,
        "inflate_s": inflate,
        "parse_us": (time.perf_counter() - t) / sampled * 1e6,
    }


def _cpu_s() -> float:
    """CPU seconds of this process and its exited children (user + system)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def ids_child(n: int) -> dict:
    """Step 2 of planning at full scale: sort n id digests, find duplicates, check membership
    against a 1 M-id subset of higher priority. Returns seconds and peak RSS."""
    import numpy as np

    from pipeline.plan import cut_ids

    digests = bytearray(16 * n)  # as planning holds them: one bytearray, 16 bytes an id
    rows = cut_ids.as_rows(digests)
    rows[:] = np.random.default_rng(0).integers(0, 2**64, size=rows.shape, dtype=np.uint64)
    t = time.perf_counter()
    unique, groups = cut_ids.sort_ids(rows)
    other, _ = cut_ids.sort_ids(rows[::12].copy())
    hits = int(cut_ids.member(other, rows).sum())
    return {
        "ids": n,
        "seconds": time.perf_counter() - t,
        "unique": len(unique),
        "hits": hits,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def old_path_us_per_line(path: Path, n: int) -> float:
    from sample.manifest_reference import lhotse_compact_cut

    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = [next(f) for _ in range(n)]
    t = time.perf_counter()
    for line in lines:
        lhotse_compact_cut(line, PREFIX)
    return (time.perf_counter() - t) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, action="append", help="manifest sizes (two or more)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "valle-bench-plan")
    parser.add_argument(
        "--old-sample", type=int, default=20_000, help="lines timed through the old lhotse path (0: skip)"
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--ids-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child[0]), Path(args.child[1]), args.child[2])))
        return
    if args.ids_child:
        print(json.dumps(ids_child(args.ids_child)))
        return
    sizes = sorted(args.lines or [250_000, 1_000_000])
    rows = []
    for n in sizes:
        path = manifest(args.cache, n)
        runs = {}
        for mode in ("serial", "parallel"):
            with tempfile.TemporaryDirectory(dir=args.cache) as work:
                res = subprocess.run(
                    [sys.executable, __file__, "--child", str(path), work, mode],
                    check=True,
                    capture_output=True,
                    text=True,
                )
            runs[mode] = json.loads(res.stdout.splitlines()[-1])
        serial, parallel = runs["serial"], runs["parallel"]
        if parallel["units_sha"] != serial["units_sha"]:
            raise SystemExit(f"{path}: the parallel plan differs from the serial plan")
        rows.append(
            {
                "gz_mb": path.stat().st_size / 1e6,
                **serial,
                "parallel_s": parallel["plan_s"],
                "parallel_cpu_s": parallel["cpu_s"],
                "workers": parallel["workers"],
                "parallel_rss_mb": parallel["peak_rss_mb"],
                "worker_rss_mb": parallel["worker_rss_mb"],
            }
        )

    print(
        f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs "
        f"(1-minute; other jobs share the cores)"
    )
    print(
        "| lines | manifest (gz) | units | sha256 | inflate: zlib / ISA-L | parse, 1 core | "
        "plan serial | plan parallel | speed-up | CPU: serial / parallel | re-run | new exclusions | "
        "kept parse / unit files | peak RSS: serial / parallel driver + worker |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['lines']:,} | {r['gz_mb']:.0f} MB | {r['units']} | {r['sha256_s']:.1f} s | "
            f"{r['zlib_s']:.1f} / {r['inflate_s']:.1f} s | {r['parse_us']:.1f} us/line | "
            f"{r['plan_s']:.1f} s | {r['parallel_s']:.1f} s ({r['workers']} workers) | "
            f"{r['plan_s'] / r['parallel_s']:.2f}x | {r['cpu_s']:.1f} / {r['parallel_cpu_s']:.1f} s | "
            f"{r['rerun_s']:.1f} s | {r['exclusions_s']:.1f} s | {r['kept_mb']:.0f} / {r['units_mb']:.0f} MB | "
            f"{r['peak_rss_mb']:.0f} / {r['parallel_rss_mb']:.0f} + {r['worker_rss_mb']:.0f} MB |"
        )
    print("(the parallel plan's units and their sha256 equal the serial plan's at every size)")
    small, big = rows[0], rows[-1]
    scale = FULL_SCALE / big["lines"]
    slope = (big["peak_rss_mb"] - small["peak_rss_mb"]) / max(1, big["lines"] - small["lines"])
    rss = big["peak_rss_mb"] + slope * (FULL_SCALE - big["lines"])
    res = subprocess.run(
        [sys.executable, __file__, "--ids-child", str(FULL_SCALE)], check=True, capture_output=True, text=True
    )
    ids = json.loads(res.stdout.splitlines()[-1])
    print(
        f"\nduplicate-id step alone on {ids['ids']:,} ids (sort, duplicates, membership against "
        f"1 M): {ids['seconds']:.1f} s, peak RSS {ids['peak_rss_mb']:.0f} MB (process total)"
    )
    # At small sizes the parse phase sets the peak, at 12 M the id step does: a linear fit would
    # miss that, so the bound adds the id step at full scale to the plan's peak at the larger size.
    bound = max(big["peak_rss_mb"], big["parallel_rss_mb"]) + ids["peak_rss_mb"]
    workers = big["workers"] * big["worker_rss_mb"]
    print(
        f"extrapolated to {FULL_SCALE:,} lines: plan {big['plan_s'] * scale / 60:.1f} min serial, "
        f"{big['parallel_s'] * scale / 60:.1f} min parallel on {os.cpu_count()} CPUs (goal < 10); "
        f"inflating alone (the serial floor) {big['inflate_s'] * scale / 60:.1f} min; "
        f"{big['workers']} workers' parsing alone "
        f"{big['parse_us'] * FULL_SCALE / 1e6 / big['workers'] / 60:.1f} min; "
        f"worker processes {workers:.0f} MB in all (not growing with the manifest); "
        f"re-run with nothing changed {big['rerun_s'] * scale:.0f} s, with new exclusions "
        f"{big['exclusions_s'] * scale / 60:.1f} min (kept parse {big['kept_mb'] * scale / 1e3:.1f} GB "
        f"on disk), peak RSS "
        f"<= {bound:.0f} MB (goal < 2048; linear fit alone: {rss:.0f} MB, "
        f"{slope * 1e6:.0f} MB per million lines), manifest {big['gz_mb'] * scale / 1e3:.1f} GB "
        f"gz (real: 7.12 GB)"
    )
    if args.old_sample:
        us = old_path_us_per_line(manifest(args.cache, sizes[0]), args.old_sample)
        print(
            f"old path (lhotse MonoCut.from_dict per line, parse only): {us:.0f} us/line -> "
            f"{us * FULL_SCALE / 1e6 / 60:.0f} min for {FULL_SCALE:,} lines"
        )


if __name__ == "__main__":
    main()
