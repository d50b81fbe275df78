"""Each codec's encoding throughput (audio seconds per second) by batch size, on CPU by default.

    python bench/bench_codecs.py                    # all three: one utterance, 5 / 30 / 120 s batches
    python bench/bench_codecs.py --codecs mimi --batch-seconds 0 30 --threads 8 --json /tmp/codecs.json

`CodecEncoder.encode` (padding on the host included) in the exact mode, seeded random weights
(the pretrained models' architecture, so their cost), on utterances of realistic lengths (uniform
in --min-seconds..--max-seconds, seeded noise: the cost does not depend on what is said). The
batch size is the padded audio seconds per forward pass (codec.batch_seconds): utterances are
batched longest first as the pipeline batches them, so a batch holds its longest utterance at
least; 0 is the CPU default, one utterance per pass (on CPU every pass runs on one thread, in
--threads lanes at once). Each cell encodes the same utterances after a warm-up; the best of --repeat runs counts.
Prints a markdown table; --json writes the rows too.

    python bench/bench_codecs.py --corpora out/sample out/sample-dac out/sample-mimi

instead reports what built corpora take on disk: per shard format, the shards' bytes (whole
files, as index.json lists them) per second of audio, beside the raw codes (frames x codebooks
x 2 bytes) per second. bench/bench_codec_gpu.py and
bench/gpu_check.py measure the same way on a GPU (`throughput`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tokens.codec import CodecEncoder  # noqa: E402
from tokens.codec_settings import CodecConfig  # noqa: E402
from tokens.codec_weights import resolve_weights  # noqa: E402
from tokens.codecs import SPECS, spec  # noqa: E402


def utterances(name: str, total_seconds: float, shortest: float, longest: float, seed: int = 0) -> list[np.ndarray]:
    """Noise utterances at the codec's rate, uniform lengths in [shortest, longest] s, until they
    add up to `total_seconds` (at least one)."""
    rng, rate = np.random.default_rng(seed), spec(name).sample_rate
    waves, total = [], 0.0
    while not waves or total < total_seconds:
        seconds = float(rng.uniform(shortest, longest))
        waves.append((0.1 * rng.standard_normal(int(seconds * rate))).astype(np.float32))
        total += seconds
    return waves


def throughput(
    name: str,
    batch_seconds: list[float],
    waves: list[np.ndarray],
    device: str = "cpu",
    precision: str = "exact",
    threads: int | None = None,
    repeat: int = 1,
    state=None,
) -> list[dict]:
    """One row per batch size: audio s/s of `CodecEncoder.encode(waves)`, the best of `repeat`.
    `state`: (state dict, CodecWeights) of random weights resolved once (else resolved here)."""
    cfg = CodecConfig(name=name, weights="random", device=device, precision=precision, threads=threads)
    state = state or resolve_weights(cfg)
    rate = spec(name).sample_rate
    audio = sum(len(w) for w in waves) / rate
    rows = []
    for seconds in batch_seconds:
        encoder = CodecEncoder(CodecConfig(**{**cfg.__dict__, "batch_seconds": seconds or None}), state)
        encoder.encode(waves[:1])  # warm-up: model on the device, kernels chosen
        best, passes = float("inf"), encoder.forward_passes
        for _ in range(repeat):
            started = time.perf_counter()
            encoder.encode(waves)  # returns once every code is on the host
            best = min(best, time.perf_counter() - started)
        rows.append(
            {
                "codec": name,
                "codebooks": encoder.n_q,
                "precision": precision,
                "batch_seconds": seconds,
                "utterances": len(waves),
                "audio_s": audio,
                "forward_passes": (encoder.forward_passes - passes) // repeat,
                "wall_s": best,
                "audio_s_per_s": audio / best,
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| codec | codebooks | precision | batch (padded s) | forward passes | audio s | audio s/s |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['codec']} | {r['codebooks']} | {r['precision']} | {r['batch_seconds'] or 'one utterance'} "
            f"| {r['forward_passes']} "
            f"| {r['audio_s']:.1f} | {r['audio_s_per_s']:,.1f} |"
        )
    return "\n".join(lines)


def disk_bytes(corpus: Path) -> dict:
    """Bytes per audio second of a built corpus's shards, per format, from its index.json."""
    import pyarrow.parquet as pq

    index = json.loads((corpus / "index.json").read_text())
    codec = index["provenance"]["codec"]
    size = {}
    for shard in index["shards"]:
        size[shard["format"]] = size.get(shard["format"], 0) + shard["bytes"]
    frames = pq.read_table(corpus / index["lengths"]["path"], columns=["frames"]).column("frames")
    audio = sum(sum(row) for row in frames.to_pylist()) / codec["frame_rate"]
    return {
        "corpus": str(corpus),
        "codec": codec.get("model", "encodec_24khz"),
        "codebooks": codec["codebooks"],
        "weights": codec["weights"],
        "audio_s": audio,
        "raw_codes_b_per_s": 2 * codec["codebooks"] * codec["frame_rate"],
        "b_per_s": {fmt: size[fmt] / audio for fmt in sorted(size)},
    }


def disk_markdown(rows: list[dict]) -> str:
    formats = sorted({fmt for r in rows for fmt in r["b_per_s"]})
    lines = [
        "| codec | codebooks | weights | audio s | raw codes B/s | " + " | ".join(f"{f} B/s" for f in formats) + " |",
        "|---|---:|---|---:|---:|" + "---:|" * len(formats),
    ]
    for r in rows:
        cells = " | ".join(f"{r['b_per_s'][f]:,.0f}" if f in r["b_per_s"] else "" for f in formats)
        lines.append(
            f"| {r['codec']} | {r['codebooks']} | {r['weights']} | {r['audio_s']:.0f} | "
            f"{r['raw_codes_b_per_s']:,.0f} | {cells} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--codecs", nargs="+", choices=sorted(SPECS), default=sorted(SPECS))
    parser.add_argument("--batch-seconds", type=float, nargs="+", default=[0.0, 5.0, 30.0, 120.0])
    parser.add_argument("--audio-seconds", type=float, default=120.0, help="audio encoded per cell")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="shortest utterance")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="longest utterance")
    parser.add_argument("--threads", type=int, help="codec.threads: CPU lanes (default one per core)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="exact", help="codec.precision: exact, tf32 or bf16")
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell; the fastest counts")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--corpora", type=Path, nargs="+", help="built corpora: report their bytes on disk instead")
    args = parser.parse_args(argv)
    if args.corpora:
        rows = [disk_bytes(corpus) for corpus in args.corpora]
        print(disk_markdown(rows))
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
        return rows
    rows = []
    for name in args.codecs:
        waves = utterances(name, args.audio_seconds, args.min_seconds, args.max_seconds)
        rows += throughput(name, args.batch_seconds, waves, args.device, args.precision, args.threads, args.repeat)
    lanes = args.threads or len(os.sched_getaffinity(0))
    where = (
        torch.cuda.get_device_name(torch.device(args.device))
        if args.device.startswith("cuda")
        else f"CPU ({os.cpu_count()} cores, {lanes} lanes of one thread)"
    )
    print(f"$ python bench/bench_codecs.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    print(
        f"{where}, torch {torch.__version__}; random-init weights; utterances {args.min_seconds:g}-"
        f"{args.max_seconds:g} s, {args.audio_seconds:g} s of audio per row; best of {args.repeat}\n"
    )
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps({"device": where, "torch": torch.__version__, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
