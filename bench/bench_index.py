"""Building index.json, lengths.parquet and rejects.jsonl at Libriheavy-large scale: time and peak
memory on generated ledger entries.

    python bench/bench_index.py                      # 250 and 1,000 units, extrapolated to 2,540
    python bench/bench_index.py --units 100 400 --cuts-per-unit 2000

The last step of every run reads every unit's ledger entry. Each generated unit is what a real
20 h unit commits: ~4,900 cuts in one shard per format (WebDataset and Parquet), each with codec
frames, BPE tokens, speaker, recording id and transcript CER, and ~3 % of its cuts rejected.
libriheavy-large is ~12 M cuts: ~2,540 such units. Each size is built in a fresh process, so
the peak RSS is its own; the index's shard list is O(shards) by design, and everything per
sample (lengths, rejects) should stay flat in the number of units.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FULL_SCALE_UNITS = 2_540

_MEASURE = r"""
import json, re, sys, time
from pathlib import Path
from pipeline.output.index import build_index
from pipeline.plan.subsets import SubsetPlan, UnitPlan
from sample.corpora import PROVENANCE
out = Path(sys.argv[1])
plans = [SubsetPlan(**{**p, "units": [UnitPlan(**u) for u in p["units"]]})
         for p in json.loads((out / "plans.json").read_text())]
started = time.monotonic()
index = build_index(out, plans, "bench", "0" * 64, PROVENANCE, 8)
# VmHWM is this process's own peak; ru_maxrss would carry the parent's over fork and exec.
peak_kb = int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))
print(json.dumps({"seconds": time.monotonic() - started, "shards": len(index["shards"]),
                  "samples": sum(s["samples"] for s in index["subsets"].values()),
                  "rejects": index["rejects"]["total"], "lengths_mb": index["lengths"]["bytes"] / 1e6,
                  "peak_rss_mb": peak_kb / 1024}))
"""


def generate(out: Path, units: int, cuts: int, seed: int = 0) -> None:
    """`units` ledger entries under `out/ledger`, and their plans in `out/plans.json`."""
    from pipeline.output import ledger

    rng = random.Random(seed)
    plan_units = []
    for u in range(units):
        name = f"large-{u:06d}"
        speakers = [str(rng.randrange(7_000)) for _ in range(cuts // 200 + 1)]
        kept = [i for i in range(cuts) if rng.random() > 0.03]
        frames = [rng.randrange(150, 2_250) for _ in kept]  # 2-30 s at 75 frames/s
        lengths = {
            "shard": f"{name}-000",
            "frames": frames,
            "text_tokens": [f // 12 for f in frames],
            "speaker": [speakers[i // 200] for i in kept],
            "recording_id": [f"{speakers[i // 200]}/book_{i // 50:04d}/chapter_{i // 50:02d}" for i in kept],
            "text_cer": [round(rng.random() * 0.1, 4) for _ in kept],
        }
        hours = round(sum(frames) / 75 / 3600, 6)
        files = [
            {
                "id": f"{name}-000",
                "format": fmt,
                "path": f"{fmt}/large/{name}-000{suffix}",
                "subset": "large",
                "unit": name,
                "samples": len(kept),
                "hours": hours,
                "bytes": 50_000_000,
                "sha256": f"{u:064x}",
            }
            for fmt, suffix in (("webdataset", ".tar"), ("parquet", ".parquet"))
        ]
        kept_set = set(kept)
        rejects = [
            {"id": f"{name}/cut_{i:05d}", "reason": "text_mismatch", "text_cer": 0.4}
            for i in range(cuts)
            if i not in kept_set
        ]
        ledger.write_entry(
            out, name, {"shards": {"files": files, "lengths": [lengths], "samples": len(kept), "rejects": rejects}}
        )
        plan_units.append(
            {
                "name": name,
                "subset": "large",
                "recordings": cuts // 50,
                "cuts": cuts,
                "seconds": hours * 3600,
                "sha256": "0" * 64,
            }
        )
    plan = {"subset": "large", "role": "train", "fingerprint": "0" * 64, "cuts_in": units * cuts, "units": plan_units}
    (out / "plans.json").write_text(json.dumps([plan]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--units", type=int, nargs="+", default=[250, 1_000])
    parser.add_argument("--cuts-per-unit", type=int, default=4_900, help="~20 h of 14.7 s cuts")
    args = parser.parse_args()
    print("| units | samples | rejects | lengths.parquet | build | peak RSS |")
    print("|---:|---:|---:|---:|---:|---:|")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-index-") as tmp:
        for n in args.units:
            out = Path(tmp) / f"u{n}"
            t = time.monotonic()
            generate(out, n, args.cuts_per_unit)
            print(f"(generated {n} units in {time.monotonic() - t:.0f} s)", file=sys.stderr)
            r = json.loads(
                subprocess.run(
                    [sys.executable, "-c", _MEASURE, str(out)], cwd=REPO, check=True, stdout=subprocess.PIPE, text=True
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            rows.append((n, r))
            print(
                f"| {n:,} | {r['samples']:,} | {r['rejects']:,} | {r['lengths_mb']:.1f} MB | "
                f"{r['seconds']:.1f} s | {r['peak_rss_mb']:,.0f} MB |"
            )
    n, r = rows[-1]
    print(
        f"\n{FULL_SCALE_UNITS:,} units (libriheavy-large), scaled linearly from {n:,}: "
        f"build ~{r['seconds'] * FULL_SCALE_UNITS / n:.0f} s"
    )


if __name__ == "__main__":
    main()
