"""CPU encoding layouts side by side: what chose the CPU default (docs/benchmarks.md).

    python bench/bench_cpu_layout.py                       # the default set of layouts, 2 runs each
    python bench/bench_cpu_layout.py --layouts 2:1:1:0:fast 1:2:1:0:fast --audio-seconds 300

A layout is PROCESSES:LANES:THREADS:BATCH:ELU[:nomkldnn]
- PROCESSES: codec workers (spawned processes), each with its own model, started together;
- LANES: threads per worker running forward passes at once (tokens.codec's CPU lanes), each pass
  on one torch thread; with THREADS > 1 a worker runs its passes one after another on THREADS
  torch threads instead (the layout before lanes);
- BATCH: padded seconds per forward pass (codec.batch_seconds), 0 for one utterance per pass;
- ELU: `fast` (tokens.cpu_kernels.FastELU, the CPU default) or `stock` (torch's nn.ELU);
- `nomkldnn`: oneDNN off (torch.backends.mkldnn.enabled = False).
Every layout pads EnCodec's convolutions with tokens.cpu_kernels.reflect_pad (the same values as
torch's reflect padding, faster), so `stock` differs from encodec's own network by the ELU alone.
Every layout encodes the same utterances (seeded noise, uniform 2-5 s: Libriheavy's cuts are
2-20 s, mostly short), split round-robin between the processes, in the exact mode with EnCodec's
random-init weights (its architecture, so its cost). The time is from a barrier after every
process has loaded its model and warmed up to the last process's end: model loading is paid
once per worker per run and is not what is compared. Prints audio seconds per second and each
layout's codes digest: layouts whose digests agree made the same codes.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from bench_codecs import utterances as codec_utterances  # noqa: E402

DEFAULT_LAYOUTS = [
    "1:1:2:120:stock",  # the CPU default before: one worker, every core as torch threads, 120 s batches
    "1:1:2:0:stock",
    "2:1:1:0:stock",  # the simplest tokenizer's layout: a process per core, one cut at a time
    "1:1:2:0:fast",
    "2:1:1:0:fast",
    "1:2:1:0:fast",  # the default now: one worker, a lane per core, one utterance per pass
    "1:2:1:5:fast",
    "1:2:1:10:fast",
    "1:2:1:30:fast",
    "1:2:1:0:fast:nomkldnn",
]


def utterances(seconds: float) -> list[np.ndarray]:
    """The seeded noise utterances every layout encodes: 2-5 s at 24 kHz."""
    return codec_utterances("encodec_24khz", seconds, 2.0, 5.0)


def _worker(layout: dict, index: int, audio_seconds: float, barrier, results) -> None:
    import torch
    from torch import nn

    from tokens.codec import CodecEncoder
    from tokens.codec_settings import CodecConfig
    from tokens.cpu_kernels import FastELU

    torch.backends.mkldnn.enabled = layout["mkldnn"]
    cfg = CodecConfig(weights="random", device="cpu", threads=layout["lanes"], batch_seconds=layout["batch"] or None)
    encoder = CodecEncoder(cfg)
    encoder.setup()
    if layout["elu"] == "stock":
        for parent in encoder._model.encoder.modules():
            for name, child in parent.named_children():
                if isinstance(child, FastELU):
                    setattr(parent, name, nn.ELU())
    if layout["threads"] > 1:  # passes one after another on several torch threads
        encoder.close()
        encoder._lanes = None
        torch.set_num_threads(layout["threads"])
    waves = utterances(audio_seconds)[index :: layout["processes"]]
    encoder.encode(waves[:2])  # warm-up
    barrier.wait()
    started = time.perf_counter()
    codes = encoder.encode(waves)
    results.put((index, time.perf_counter() - started, [c.tobytes() for c in codes]))


def parse(text: str) -> dict:
    parts = text.split(":")
    if len(parts) not in (5, 6) or parts[4] not in ("fast", "stock") or parts[5:] not in ([], ["nomkldnn"]):
        raise SystemExit(f"bad layout {text!r}: PROCESSES:LANES:THREADS:BATCH:fast|stock[:nomkldnn]")
    processes, lanes, threads = (int(p) for p in parts[:3])
    return {
        "name": text,
        "processes": processes,
        "lanes": lanes,
        "threads": threads,
        "batch": float(parts[3]),
        "elu": parts[4],
        "mkldnn": parts[5:] != ["nomkldnn"],
    }


def measure(layout: dict, audio_seconds: float) -> tuple[float, str]:
    """(wall seconds, digest of the codes in utterance order) for one run of `layout`."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(layout["processes"]), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(layout, i, audio_seconds, barrier, results))
        for i in range(layout["processes"])
    ]
    for p in procs:
        p.start()
    got = sorted(results.get() for _ in procs)
    for p in procs:
        p.join()
    codes = {}
    for index, _, arrays in got:
        for k, array in enumerate(arrays):
            codes[index + k * layout["processes"]] = array
    digest = hashlib.sha256(b"".join(codes[i] for i in sorted(codes))).hexdigest()[:12]
    return max(seconds for _, seconds, _ in got), digest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layouts", nargs="+", default=DEFAULT_LAYOUTS)
    parser.add_argument("--audio-seconds", type=float, default=150.0)
    parser.add_argument("--repeat", type=int, default=2, help="runs per layout; the fastest counts")
    args = parser.parse_args()
    layouts = [parse(text) for text in args.layouts]
    audio = sum(len(w) for w in utterances(args.audio_seconds)) / 24000
    print(f"$ python bench/bench_cpu_layout.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"{os.cpu_count()} cores; {audio:.0f} s of 2-5 s utterances; best of {args.repeat}\n")
    print("| layout (processes:lanes:threads:batch s:ELU) | audio s/s | codes |")
    print("|---|---:|---|")
    best = {layout["name"]: (float("inf"), "") for layout in layouts}
    for _ in range(args.repeat):  # round-robin, so that a noisy minute touches every layout
        for layout in layouts:
            seconds, digest = measure(layout, args.audio_seconds)
            best[layout["name"]] = min(best[layout["name"]], (seconds, digest))
    for name, (seconds, digest) in best.items():
        print(f"| {name} | {audio / seconds:.1f} | {digest} |")


if __name__ == "__main__":
    main()
