"""Codec throughput on one device: EnCodec's bare encoder at batch 1, 8, 32, 128, each codec of
--codecs by batch size, the whole pipeline on the same device, utilization, where the time goes,
and the fast modes' code agreement.

    python bench/bench_codec_gpu.py                       # the GPU if there is one, else CPU
    python bench/bench_codec_gpu.py --utterance-seconds 10 --pipeline-minutes 60   # on a GPU

- bare: `CodecEncoder.encode` on B utterances of --utterance-seconds each, one forward pass per
  call (batch_seconds = B x utterance), after a warm-up; audio seconds encoded per second, and
  the share spent padding on the host versus on the device. Per --precisions mode.
- each codec (--codecs: EnCodec, DAC, Mimi): audio s/s by padded seconds per forward pass
  (--codec-batch-seconds) on --codec-audio-seconds of 2-20 s utterances, per --codec-precisions
  (bench/bench_codecs.py's `throughput`, which measures the same on CPU).
- agreement: each fast mode's codes against exact on the batch-32 utterances: the share of
  identical codes per codebook (a code that differs in codebook k changes every later one's
  residual, so later codebooks agree less).
- pipeline: `run()` on a generated look-alike corpus (--pipeline-minutes), units on an embedded
  Ray (or --executor local) with the codec on the same device: audio s/s from nothing to
  index.json, the device's busy share (seconds inside forward passes / wall), utilization
  (nvidia-smi samples on a GPU; CPU use of all processes on CPU), and seconds per step summed
  over the codec worker and the unit tasks.
On a CPU the defaults are small (2 s utterances, 3 minutes of corpus) so it runs in minutes;
the table has the same rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import ray
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_codecs import markdown, throughput, utterances  # noqa: E402

from pipeline.dag import load_dag  # noqa: E402
from pipeline.executors.local import LocalExecutor  # noqa: E402
from pipeline.runner import run  # noqa: E402
from sample.compare import code_agreement  # noqa: E402
from sample.lookalike import synthetic_chapters, write_corpus  # noqa: E402
from tokens.codec import CodecEncoder  # noqa: E402
from tokens.codec_settings import CodecConfig  # noqa: E402
from tokens.codec_weights import resolve_weights  # noqa: E402
from tokens.codecs import SPECS  # noqa: E402


class Utilization(threading.Thread):
    """GPU utilization from nvidia-smi, or CPU use of this process tree, sampled every 0.2 s."""

    def __init__(self, gpu: bool):
        super().__init__(daemon=True)
        self.gpu, self.samples, self.stop = gpu, [], threading.Event()

    def run(self) -> None:
        import psutil  # Ray's bundled copy: importing ray (above) put it on the path

        me, known = psutil.Process(), {}  # pid -> Process: cpu_percent needs the same object twice
        while not self.stop.wait(0.2):
            if self.gpu:
                try:
                    out = subprocess.run(
                        [
                            "nvidia-smi",
                            "--query-gpu=utilization.gpu",
                            "--format=csv,noheader,nounits",
                            "-i",
                            os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0],
                        ],
                        capture_output=True,
                        text=True,
                        timeout=5,
                    )
                    self.samples.append(float(out.stdout.split()[0]))
                except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                    return
            else:
                total = 0.0
                for p in [me, *me.children(recursive=True)]:
                    p = known.setdefault(p.pid, p)
                    try:
                        total += p.cpu_percent()  # since the previous sample (0.0 the first time)
                    except psutil.Error:
                        pass
                self.samples.append(total / (os.cpu_count() or 1))

    def mean(self) -> str:
        values = self.samples[1:]  # the first CPU sample has no baseline
        what = "GPU (nvidia-smi)" if self.gpu else f"CPU, all {os.cpu_count()} cores"
        return f"{np.mean(values):.0f}% {what}" if values else "n/a"


def bare(device: str, state, precisions: list[str], batches: list[int], seconds: float, repeat: int):
    rng = np.random.default_rng(0)
    n = int(seconds * 24000)
    waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for _ in range(max(batches))]
    rows, codes = [], {}
    for precision in precisions:
        for b in batches:
            cfg = CodecConfig(weights="random", device=device, batch_seconds=b * seconds, precision=precision)
            enc = CodecEncoder(cfg, state)
            enc.encode(waves[:1])  # warm-up: model on the device, kernels chosen
            prepare = total = 0.0
            for _ in range(repeat):
                t0 = time.perf_counter()
                prepared = enc.prepare(waves[:b])
                t1 = time.perf_counter()
                out = enc.run(prepared)  # returns once the codes are back on the host
                t2 = time.perf_counter()
                prepare, total = prepare + t1 - t0, total + t2 - t0
            codes[precision, b] = out
            rows.append(
                {
                    "precision": precision,
                    "batch": b,
                    "audio_s_per_s": b * seconds * repeat / total,
                    "host_pad_share": prepare / total,
                }
            )
    return rows, codes


def corpus_dag(minutes: float, root: Path, device: str, weights: str, per_chapter: int = 30) -> Path:
    chapters = max(2, round(minutes * 60 / (3.5 * per_chapter)))
    files = write_corpus(
        synthetic_chapters(
            n_speakers=chapters, chapters_per_speaker=1, utterances_per_chapter=per_chapter, seconds=(2.0, 5.0)
        ),
        root,
    )
    dag = yaml.safe_load((REPO / "dags/sample.yaml").read_text())
    dag.update(
        name="bench-codec",
        subsets={"train": sorted(files.manifests)},
        source={
            "manifest_base_url": (root / "manifests").as_uri() + "/",
            "audio_base_url": (root / "audio").as_uri() + "/",
            "audio_archives": ["small.tar"],
            "checksums": None,
        },
        plan={"unit_hours": round(minutes / 60 / 8, 6)},  # ~8 units
        codec={"weights": weights, "device": device},
    )
    path = root / "bench.yaml"
    path.write_text(yaml.safe_dump(dag))
    return path


def pipeline(dag_path: Path, out: Path, gpu: bool, executor: str) -> dict:
    dag = load_dag(dag_path, out=str(out))
    meter = Utilization(gpu)
    meter.start()
    started = time.perf_counter()
    summary = run(dag, progress=False, executor=LocalExecutor() if executor == "local" else None)
    wall = time.perf_counter() - started
    meter.stop.set()
    meter.join()
    stats = summary.codec_stats
    audio = stats.get("audio", 0.0)
    return {
        "wall_s": wall,
        "units_wall_s": summary.units_wall_s,
        "audio_s": audio,
        "units": summary.units,
        "audio_s_per_s": audio / wall,
        "units_audio_s_per_s": audio / summary.units_wall_s,
        "device_busy": stats.get("device", 0.0) / summary.units_wall_s,
        "utilization": meter.mean(),
        "codec_worker_s": {k: v for k, v in stats.items() if k != "audio"},
        "unit_tasks_s": summary.unit_seconds,
    }


def main() -> None:
    gpu_here = torch.cuda.is_available()
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--weights", default="random", help="codec.weights for the pipeline run")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--utterance-seconds", type=float, default=10.0 if gpu_here else 2.0)
    parser.add_argument("--repeat", type=int, default=3 if gpu_here else 1)
    parser.add_argument("--precisions", nargs="+", default=["exact", "tf32", "bf16"] if gpu_here else ["exact", "bf16"])
    parser.add_argument("--pipeline-minutes", type=float, default=30.0 if gpu_here else 3.0)
    parser.add_argument("--executor", choices=["ray", "local"], default="ray")
    parser.add_argument("--codecs", nargs="+", choices=sorted(SPECS), default=sorted(SPECS))
    parser.add_argument(
        "--codec-batch-seconds", type=float, nargs="+", default=[30.0, 120.0, 600.0] if gpu_here else [5.0, 30.0]
    )
    parser.add_argument("--codec-audio-seconds", type=float, default=600.0 if gpu_here else 30.0)
    parser.add_argument("--codec-precisions", nargs="+", default=["exact", "bf16"] if gpu_here else ["exact"])
    args = parser.parse_args()
    device = ("cuda" if gpu_here else "cpu") if args.device == "auto" else args.device
    gpu = device.startswith("cuda")
    name = (
        torch.cuda.get_device_name(0)
        if gpu
        else f"CPU ({os.cpu_count()} cores, {len(os.sched_getaffinity(0))} lanes of one thread)"
    )

    state = resolve_weights(CodecConfig(weights="random"))
    rows, codes = bare(device, state, args.precisions, args.batches, args.utterance_seconds, args.repeat)
    codecs = []
    for codec_name in args.codecs:
        waves = utterances(codec_name, args.codec_audio_seconds, 2.0, 20.0)
        given = state if codec_name == "encodec_24khz" else None
        for p in args.codec_precisions:
            batches = args.codec_batch_seconds
            codecs += throughput(codec_name, batches, waves, device, p, repeat=args.repeat, state=given)
    agreement = {
        p: code_agreement(
            codes["exact", 32 if 32 in args.batches else args.batches[-1]],
            codes[p, 32 if 32 in args.batches else args.batches[-1]],
        )
        for p in args.precisions
        if p != "exact" and "exact" in args.precisions
    }

    work = Path(tempfile.mkdtemp(prefix="valle-bench-codec-"))
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if args.executor == "ray":
        ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    dag_path = corpus_dag(args.pipeline_minutes, work / "corpus", device, args.weights)
    pipe = pipeline(dag_path, work / "out", gpu, args.executor)
    if args.executor == "ray":
        ray.shutdown()
    shutil.rmtree(work)

    print(
        f"$ python bench/bench_codec_gpu.py --device {args.device} --utterance-seconds {args.utterance_seconds:g} "
        f"--repeat {args.repeat} --pipeline-minutes {args.pipeline_minutes:g} --executor {args.executor} "
        f"--codecs {' '.join(args.codecs)} --codec-audio-seconds {args.codec_audio_seconds:g} "
        f"--codec-batch-seconds {' '.join(f'{b:g}' for b in args.codec_batch_seconds)}"
    )
    print(f"device: {name}; random-init weights (same architecture and cost as pretrained)")
    print(f"\nbare encoder, {args.utterance_seconds:g} s utterances, one forward pass per batch")
    print(f"{'precision':<9} {'batch':>5} {'audio s/s':>11} {'x real time':>11} {'host padding':>13}")
    for r in rows:
        print(
            f"{r['precision']:<9} {r['batch']:>5} {r['audio_s_per_s']:>11.1f} {r['audio_s_per_s']:>10.0f}x "
            f"{r['host_pad_share']:>12.0%}"
        )
    print(f"\neach codec, 2-20 s utterances, {args.codec_audio_seconds:g} s of audio per row\n")
    print(markdown(codecs))
    for p, shares in agreement.items():
        print(f"\n{p} vs exact, identical codes per codebook: " + " ".join(f"{s:.3f}" for s in shares))
    print(f"\nwhole pipeline, {pipe['audio_s']:.0f} s of audio in {pipe['units']} units, {args.executor} executor")
    largest = rows[len(args.batches) - 1]["audio_s_per_s"]
    print(f"{'end to end, run() (audio s/s)':<40} {pipe['audio_s_per_s']:.1f} (wall {pipe['wall_s']:.1f} s)")
    print(
        f"{'units phase: workers up to done':<40} {pipe['units_audio_s_per_s']:.1f} (wall {pipe['units_wall_s']:.1f} s)"
    )
    print(
        f"{'ratio to bare at the largest batch':<40} {pipe['audio_s_per_s'] / largest:.2f} end to end, "
        f"{pipe['units_audio_s_per_s'] / largest:.2f} units phase"
    )
    print(f"{'device busy (forward passes / units phase)':<40} {pipe['device_busy']:.0%}")
    print(f"{'utilization':<40} {pipe['utilization']}")
    print("where the time goes (seconds, summed over threads and tasks; they overlap):")
    for who, steps in (("codec worker", pipe["codec_worker_s"]), ("unit tasks", pipe["unit_tasks_s"])):
        print(f"  {who:<13} " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(steps.items()) if k != "forward_passes"))
    print(json.dumps({"bare": rows, "codecs": codecs, "agreement": agreement, "pipeline": pipe}))


if __name__ == "__main__":
    main()
