"""Host memory of one loader worker reading shards: peak RSS above the process's baseline, by
format and interleave.

    python bench/bench_reader_memory.py [--shards 64] [--per-shard 1100] [--batches 400]

A generated corpus of `--shards` shards x `--per-shard` Libriheavy-like utterances (1-30 s,
~14 s median, random codes: sample/corpora.py), written as WebDataset and as Parquet (row groups
of 1,024 utterances). For each format and interleave (1 and 64: the shard streams a worker keeps
open at once), a fresh process opens the corpus, plans one epoch for one worker
(max_frames 40,000), then reads `--batches` batches in process, as a DataLoader worker does; it
reports its RSS before reading (the baseline: torch, the corpus's lengths) and the peak while
reading (VmHWM). Goal: at most 500 MB above the baseline at interleave 64, either format: a
worker's memory must not grow with interleave x row-group size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_MEASURE = r"""
import json, re, sys
from pathlib import Path
import numpy as np
from trainer.batching import BatchingConfig, plan_epoch
from trainer.corpus import open_corpus
from trainer.loader import make_loader

def rss_mb(field):
    return int(re.search(field + r":\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024

location, fmt, interleave, batches = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
samples = open_corpus(location, fmt=fmt, allow_random_codec=True).samples
cost = (samples.frames + samples.text_tokens).astype(np.int64)
plan = plan_epoch(cost, np.ones(len(cost), bool), samples.offsets, 0, 1, 1,
                  BatchingConfig(max_frames=40_000, interleave=interleave))
base = rss_mb("VmRSS")
read = 0
for batch in make_loader(samples, plan.ranks[0], None, 0):
    read += 1
    if read == batches:
        break
print(json.dumps({"baseline_mb": base, "peak_mb": rss_mb("VmHWM"), "batches": read}))
"""


def build(root: Path, shards: int, per_shard: int) -> Path:
    from sample.corpora import Cut, write_corpus

    rng = np.random.default_rng(0)
    seconds = np.clip(rng.lognormal(np.log(14.0), 0.45, shards * per_shard), 1.0, 30.0)
    cuts = [
        Cut(str(i // 50), f"large/{i // 50}/book_{i // 500}/chapter", int(s * 75), max(1, int(s * 3)))
        for i, s in enumerate(seconds)
    ]
    groups = [cuts[i : i + per_shard] for i in range(0, len(cuts), per_shard)]
    return write_corpus(root, groups, formats=("webdataset", "parquet"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, default=64)
    parser.add_argument("--per-shard", type=int, default=1100)
    parser.add_argument("--batches", type=int, default=400)
    args = parser.parse_args()
    print(
        f"$ python bench/bench_reader_memory.py --shards {args.shards} --per-shard {args.per_shard} "
        f"--batches {args.batches}"
    )
    print("| format | interleave | baseline RSS | peak RSS | peak above baseline | batches |")
    print("|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="bench-reader-") as tmp:
        root = build(Path(tmp) / "corpus", args.shards, args.per_shard)
        for fmt in ("webdataset", "parquet"):
            for interleave in (1, 64):
                done = subprocess.run(
                    [sys.executable, "-c", _MEASURE, str(root), fmt, str(interleave), str(args.batches)],
                    cwd=REPO,
                    check=True,
                    capture_output=True,
                    text=True,
                )
                r = json.loads(done.stdout.strip().splitlines()[-1])
                print(
                    f"| {fmt} | {interleave} | {r['baseline_mb']:.0f} MB | {r['peak_mb']:.0f} MB | "
                    f"{r['peak_mb'] - r['baseline_mb']:.0f} MB | {r['batches']} |"
                )


if __name__ == "__main__":
    main()
