"""Peak memory of a whole run (driver + every Ray process) against the size of a unit.

    python bench/bench_memory.py                       # 10 and 60 minutes, goal: ratio <= 1.3
    python bench/bench_memory.py --minutes 5 20 --repo /path/to/another/checkout

For each size a Libriheavy look-alike corpus is generated (chapters of ~3.5 min, so a larger
corpus has more recordings, not longer ones) and `plan.unit_hours` is set so that ONE unit holds
the whole corpus: a unit's size is what must not matter. Each run is a fresh process
(`valle-prep run` with an embedded Ray, random-init codec); this script samples the resident
memory of that process and all its descendants (GCS, raylet, unit tasks, the codec actor) every
0.1 s: the peak of their sum (RSS; shared pages such as the object store count once per process
that maps them) and of PSS (shared pages split between the processes), and the largest single
process. `--repo` runs another checkout's pipeline on the same corpora (e.g. the commit before
streaming) for a before/after comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import ray  # noqa: F401  (puts Ray's bundled psutil on the path)
import yaml

psutil = __import__("psutil")  # Ray's bundled copy: importable once ray is (import sorting keeps this after)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sample.lookalike import synthetic_chapters, write_corpus  # noqa: E402

UTTERANCES_PER_CHAPTER = 60  # ~3.5 s each: ~3.5 min recordings


def make_corpus(minutes: float, root: Path) -> tuple[Path, float]:
    """A corpus of about `minutes` of speech and a DAG whose single unit holds all of it."""
    chapters = max(2, round(minutes * 60 / (3.5 * UTTERANCES_PER_CHAPTER)))
    files = write_corpus(
        synthetic_chapters(
            n_speakers=chapters,
            chapters_per_speaker=1,
            utterances_per_chapter=UTTERANCES_PER_CHAPTER,
            seconds=(2.0, 5.0),
        ),
        root,
    )
    hours = sum(t.available_samples for t in files.cuts.values()) / 16000 / 3600
    dag = yaml.safe_load((REPO / "dags/sample.yaml").read_text())
    dag.update(
        name=f"memory-{minutes:g}min",
        source={
            "manifest_base_url": (root / "manifests").as_uri() + "/",
            "audio_base_url": (root / "audio").as_uri() + "/",
            "audio_archives": ["small.tar"],
            "checksums": None,
        },
        subsets={"train": sorted(files.manifests)},
        plan={"unit_hours": round(hours * 1.5, 6)},  # one unit: the whole corpus
        codec={"weights": "random"},
    )
    path = root / "memory.yaml"
    path.write_text(yaml.safe_dump(dag))
    return path, hours * 3600


def kind(cmdline: list[str]) -> str:
    """What a process of the run is, from its command line (Ray sets worker titles)."""
    text = " ".join(cmdline)
    for needle, name in (
        ("CodecActor", "codec actor"),
        ("_unit_task", "unit tasks"),
        ("pipeline.cli", "driver"),
        ("ray::IDLE", "idle Ray workers"),
    ):
        if needle in text:
            return name
    return "Ray system (GCS, raylet, ...)"


class TreeSampler(threading.Thread):
    """Peak RSS / PSS summed over a process and its descendants, sampled every `interval` s,
    with the RSS of each kind of process at the moment of the peak and the peak per kind."""

    def __init__(self, pid: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self.root, self.interval = psutil.Process(pid), interval
        self.peak_rss = self.peak_pss = 0
        self.at_peak: dict[str, int] = {}
        self.peak_by_kind: dict[str, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            rss = pss = 0
            by_kind: dict[str, int] = {}
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                break
            for p in procs:
                try:
                    info, cmdline = p.memory_full_info(), p.cmdline()
                except psutil.Error:
                    continue
                rss += info.rss
                pss += getattr(info, "pss", info.rss)
                k = kind(cmdline)
                by_kind[k] = by_kind.get(k, 0) + info.rss
            for k, v in by_kind.items():
                self.peak_by_kind[k] = max(self.peak_by_kind.get(k, 0), v)
            if rss > self.peak_rss:
                self.peak_rss, self.at_peak = rss, by_kind
            self.peak_pss = max(self.peak_pss, pss)
            self.stop.wait(self.interval)


def measure(dag: Path, out: Path, repo: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(repo), "RAY_AUTH_MODE": "disabled"}
    cmd = [sys.executable, "-m", "pipeline.cli", "run", str(dag), "--out", str(out), "--no-progress"]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    stdout, stderr = proc.communicate()
    sampler.stop.set()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{stderr[-3000:]}")
    units = len(list((out / "ledger").glob("*.json")))
    mb = lambda d: {k: round(v / 2**20) for k, v in sorted(d.items())}  # noqa: E731
    return {
        "wall_s": time.perf_counter() - started,
        "units": units,
        "peak_rss_mb": sampler.peak_rss / 2**20,
        "peak_pss_mb": sampler.peak_pss / 2**20,
        "rss_at_peak_mb": mb(sampler.at_peak),
        "peak_by_kind_mb": mb(sampler.peak_by_kind),
        "summary": stdout.strip().splitlines()[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, nargs="+", default=[10, 60])
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose pipeline runs")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="valle-bench-memory-"))
    rows = []
    for minutes in args.minutes:
        dag, seconds = make_corpus(minutes, work / f"corpus-{minutes:g}")
        row = {"minutes": minutes, "audio_s": seconds, **measure(dag, work / f"out-{minutes:g}", args.repo)}
        assert row["units"] == 1, f"expected one unit holding the whole corpus, got {row['units']}"
        rows.append(row)
    print(
        f"$ python bench/bench_memory.py --minutes {' '.join(f'{m:g}' for m in args.minutes)}"
        + (f" --repo {args.repo}" if args.repo != REPO else "")
    )
    print(f"{'corpus':>8} {'audio s':>8} {'units':>5} {'wall s':>7} {'peak RSS MB':>12} {'peak PSS MB':>12}")
    for r in rows:
        print(
            f"{r['minutes']:>6g} m {r['audio_s']:>8.0f} {r['units']:>5} {r['wall_s']:>7.1f} "
            f"{r['peak_rss_mb']:>12.0f} {r['peak_pss_mb']:>12.0f}"
        )
        print(f"{'':>10}peak RSS MB by process: " + ", ".join(f"{k} {v}" for k, v in r["peak_by_kind_mb"].items()))
    if len(rows) >= 2:
        big, small = rows[-1], rows[0]
        print(
            f"peak RSS ratio {big['minutes']:g} min / {small['minutes']:g} min: "
            f"{big['peak_rss_mb'] / small['peak_rss_mb']:.2f} (goal <= 1.3); "
            f"PSS ratio {big['peak_pss_mb'] / small['peak_pss_mb']:.2f}"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
