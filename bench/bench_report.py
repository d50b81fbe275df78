"""Corpus report at two corpus sizes: time and peak memory of `collect` (the streaming pass).

    python bench/bench_report.py [--shards 40 160] [--per-shard 250] [--frames 1100]

Writes generated corpora (sample/corpora.py: real index, lengths.parquet and WebDataset
shards with random codes, ~15 s utterances, one speaker and book per 50 cuts) of each size, then
runs pipeline.inspect.report.collect on each in a fresh process and reports wall time, samples and audio
hours per second, and the process's peak RSS (VmHWM, Linux). Goal: the peak does not grow with the corpus
(the larger corpus within ~10 % of the smaller one's), so libriheavy-large's ~12 M cuts fit.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_MEASURE = r"""
import json, re, sys, time
from pathlib import Path
from pipeline.inspect.report import collect
started = time.perf_counter()
stats = collect(Path(sys.argv[1]), progress=False)
# VmHWM is this process's own peak; ru_maxrss would carry the parent's over fork and exec.
peak_kb = int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))
print(json.dumps({"seconds": time.perf_counter() - started, "peak_rss_mb": peak_kb / 1024,
                  "samples": stats["codes"]["samples"],
                  "hours": sum(s["hours"] for s in stats["subsets"].values())}))
"""


def build(root: Path, shards: int, per_shard: int, frames: int) -> Path:
    from sample.corpora import speaker_blocks, write_corpus

    return write_corpus(root, speaker_blocks(shards, per_shard // 50, 50, frames=frames, text_tokens=45))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, nargs="+", default=[40, 160])
    parser.add_argument("--per-shard", type=int, default=250)
    parser.add_argument("--frames", type=int, default=1100, help="codec frames per utterance (75/s)")
    args = parser.parse_args()
    print("| shards | samples | audio hours | collect | samples/s | peak RSS |")
    print("|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        for n in args.shards:
            root = build(Path(tmp) / f"c{n}", n, args.per_shard, args.frames)
            out = subprocess.run(
                [sys.executable, "-c", _MEASURE, str(root)], cwd=REPO, check=True, capture_output=True, text=True
            ).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(
                f"| {n} | {r['samples']:,} | {r['hours']:.1f} | {r['seconds']:.1f} s | "
                f"{r['samples'] / r['seconds']:,.0f} | {r['peak_rss_mb']:.0f} MB |"
            )


if __name__ == "__main__":
    main()
