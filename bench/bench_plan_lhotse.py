"""Planning lhotse's recordings + supervisions form at scale: time and peak memory.

    python bench/bench_plan_lhotse.py                    # 1 M supervisions, one recording each
    python bench/bench_plan_lhotse.py --lines 250000

Generates a per-utterance corpus in lhotse's line format (LibriTTS-like: one recording per
supervision, the worst case for the join: as many recordings as supervisions), then, in a fresh
process, opens it as the `lhotse` source kind does and plans it (`plan_subsets`, the default
worker pool): the recordings table is built (sqlite, on disk), then the supervisions are parsed
and joined. Reports the table build, the plan, the peak RSS of the driver and of the largest
worker, and the table's size. Compare with bench/bench_plan.py's Libriheavy figures.
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def generate(folder: Path, lines: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    recs, sups = folder / "bench_recordings_train.jsonl.gz", folder / "bench_supervisions_train.jsonl.gz"
    if recs.exists() and sups.exists():
        return
    with gzip.open(recs, "wt", compresslevel=1) as r, gzip.open(sups, "wt", compresslevel=1) as s:
        for n in range(lines):
            utt = f"{n % 2000}_{n // 2000:06d}_{n:08d}"
            duration = 2.0 + (n % 97) / 10
            source = {"type": "file", "channels": [0], "source": f"/data/LibriTTS_R/train/{n % 2000}/{utt}.wav"}
            rec = {"id": utt, "sources": [source], "sampling_rate": 24000, "num_samples": int(duration * 24000)}
            r.write(json.dumps({**rec, "duration": duration, "channel_ids": [0]}) + "\n")
            text = f"utterance number {n} of the benchmark, read by speaker {n % 2000}."
            sup = {"id": utt, "recording_id": utt, "start": 0.0, "duration": duration, "channel": 0, "text": text}
            custom = {"orig_text": text.upper(), "snr": 30.5}
            s.write(json.dumps({**sup, "language": "English", "speaker": str(n % 2000), "custom": custom}) + "\n")


def plan(folder: Path, out: Path) -> dict:
    from pipeline.dag import load_dag
    from pipeline.fetch.transfer_pools import ThreadTasks
    from pipeline.plan.subsets import plan_subsets
    from pipeline.sources import kind_of

    dag_path = out / "bench.yaml"
    dag = {"source": {"kind": "lhotse", "manifests": str(folder)}, "plan": {"unit_hours": 20}}
    dag_path.write_text(json.dumps(dag))
    dag = load_dag(dag_path, out=str(out))
    started = time.perf_counter()
    with kind_of(dag.source).open_source(dag, out, False, ThreadTasks()) as source:
        manifests = source.manifests()
        manifest = manifests["train"]  # builds the recordings table
        table_s = time.perf_counter() - started
        plans = plan_subsets({"train": manifest}, dag.subsets.roles(), out, 20, progress=False)
    total_s = time.perf_counter() - started
    table = next((out / "plan" / "lhotse").glob("*.sqlite"))
    return {
        "cuts": sum(u.cuts for u in plans[0].units),
        "units": len(plans[0].units),
        "table_s": round(table_s, 1),
        "plan_s": round(total_s - table_s, 1),
        "table_mb": round(table.stat().st_size / 1e6),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "bench_plan_lhotse")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = args.cache / f"{args.lines}"
    if args.child:
        print(json.dumps(plan(folder, args.child)))
        return
    started = time.perf_counter()
    generate(folder, args.lines)
    print(f"manifests: {args.lines:,} supervisions and recordings ({time.perf_counter() - started:.0f} s to write)")
    with tempfile.TemporaryDirectory() as out:
        done = subprocess.run(
            [sys.executable, __file__, "--lines", str(args.lines), "--cache", str(args.cache), "--child", out],
            check=True,
            capture_output=True,
            text=True,
        )
    print(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
