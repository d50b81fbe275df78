"""`valle-prep verify` at two corpus sizes: time and peak memory.

    python bench/bench_verify.py [--shards 40 320] [--jobs 1 2] [--per-shard 250] [--frames 1100]

Writes generated corpora (sample/corpora.py: real index, lengths.parquet and WebDataset
shards with random codes, ~15 s utterances), then runs pipeline.inspect.verify.verify on each in a fresh
process with each number of worker processes, and reports wall time, samples per second, the
problems found (none expected) and the peak RSS of the main process (VmHWM) and of its largest
worker. Goal: the peak does not grow with the corpus beyond the ~12 bytes a
sample of the duplicate-id check (~150 MB at libriheavy-large's 12 M cuts).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FULL_SCALE = 12_000_000

_MEASURE = """
import json, re, resource, sys, time
from pathlib import Path
from pipeline.inspect.verify import verify
if __name__ == "__main__":
    started = time.perf_counter()
    problems = verify(Path(sys.argv[1]), jobs=int(sys.argv[2]))
    peak_kb = int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1))
    worker_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"seconds": time.perf_counter() - started, "peak_rss_mb": peak_kb / 1024,
                      "worker_rss_mb": worker_kb / 1024, "problems": problems[:3], "count": len(problems)}))
"""


def build(root: Path, shards: int, per_shard: int, frames: int) -> tuple[Path, int]:
    """A generated corpus, with a placeholder BPE model file the index points to."""
    from sample.corpora import speaker_blocks, write_corpus

    root = write_corpus(root, speaker_blocks(shards, per_shard // 50, 50, frames=frames, text_tokens=45))
    index = json.loads((root / "index.json").read_text())
    model = root / index["provenance"]["bpe"]["model"]
    model.parent.mkdir(parents=True, exist_ok=True)
    model.write_bytes(b"placeholder")
    index["provenance"]["bpe"]["sha256"] = hashlib.sha256(b"placeholder").hexdigest()
    (root / "index.json").write_text(json.dumps(index))
    return root, sum(s["samples"] for s in index["subsets"].values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, nargs="+", default=[40, 320])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--per-shard", type=int, default=250)
    parser.add_argument("--frames", type=int, default=1100, help="codec frames per utterance (75/s)")
    args = parser.parse_args()
    print("| shards | samples | jobs | verify | samples/s | problems | peak RSS main / largest worker |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    rates = {}
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp:
        script = Path(tmp) / "measure.py"  # a file, so spawned workers can import the main module
        script.write_text(_MEASURE)
        for n in args.shards:
            root, samples = build(Path(tmp) / f"c{n}", n, args.per_shard, args.frames)
            for jobs in args.jobs:
                done = subprocess.run(
                    [sys.executable, str(script), str(root), str(jobs)],
                    cwd=REPO,
                    check=True,
                    stdout=subprocess.PIPE,
                    text=True,
                    env={**os.environ, "PYTHONPATH": str(REPO)},
                )
                r = json.loads(done.stdout.strip().splitlines()[-1])
                worker = f" / {r['worker_rss_mb']:.0f}" if jobs > 1 else ""
                print(
                    f"| {n} | {samples:,} | {jobs} | {r['seconds']:.1f} s | {samples / r['seconds']:,.0f} | "
                    f"{r['count']} | {r['peak_rss_mb']:.0f}{worker} MB |"
                )
                if r["problems"]:
                    print("  e.g. " + "; ".join(r["problems"]), file=sys.stderr)
                rates[jobs] = samples / r["seconds"]
    for jobs, rate in rates.items():
        print(
            f"libriheavy-large (~{FULL_SCALE / 1e6:.0f} M samples) at the largest size's rate with "
            f"{jobs} job(s): ~{FULL_SCALE / rate / 3600:.1f} h"
        )


if __name__ == "__main__":
    main()
