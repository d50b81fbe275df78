"""Synthesis cost: N samples of one utterance decoded as one batch (what valle-eval does for
best-of-N) against N one-by-one runs, for the AR (KV-cached, repetition-aware sampling) and the
NAR (codebooks 2..8), on random-init models of a preset sized for a codec's codes.

    python bench/bench_synthesis.py                          # tiny models, CPU, N = 5, 4 s of speech
    python bench/bench_synthesis.py --preset base --device cuda --samples 5 --seconds 8
    python bench/bench_synthesis.py --codec mimi             # Mimi's 2,048 codes at 12.5 frames/s

Every sample is held to exactly `--seconds` of output (the length guard's minimum and maximum set
to it), so both ways decode the same number of frames; the prompt is 3 s of random codes and the
text 40 BPE tokens. Prints seconds per utterance (all N samples) and per second of speech made.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokens.codecs import DEFAULT_CODEC, SPECS  # noqa: E402
from trainer.models import ARModel, NARModel  # noqa: E402
from trainer.models.config import PRESETS, codec_sizes  # noqa: E402
from trainer.sampling import SamplingConfig, generate_ar, generate_ar_samples  # noqa: E402


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--group-size", type=int, default=1)
    parser.add_argument("--codec", default=DEFAULT_CODEC, choices=sorted(SPECS), help="whose codes the models take")
    args = parser.parse_args()
    device = torch.device(args.device)
    codec = SPECS[args.codec]
    sizes = codec_sizes(codec.codebook_size, codec.frame_rate)
    torch.manual_seed(0)
    ar = ARModel(PRESETS[args.preset](1024, group_size=args.group_size, **sizes)).to(device).eval()
    nar = NARModel(PRESETS[args.preset](1024, **sizes)).to(device).eval()
    text = torch.randint(4, 1024, (1, 40), device=device)
    prompt = torch.randint(0, codec.codebook_size, (1, 8, codec.frames(3)), device=device)
    frames = codec.frames(args.seconds)
    cfg = SamplingConfig(max_frames=frames, min_frames=frames)
    gens = [torch.Generator().manual_seed(k) for k in range(args.samples)]

    generate_ar(ar, text, prompt[:, 0], SamplingConfig(max_frames=8, min_frames=8), gens[0])  # warm-up
    codes: list[torch.Tensor] = []
    batch_ar = timed(lambda: codes.extend(generate_ar_samples(ar, text, prompt[:, 0], cfg, gens)), device)
    one_ar = timed(lambda: [generate_ar(ar, text, prompt[:, 0], cfg, g) for g in gens], device)
    with torch.inference_mode():
        firsts = [c.to(device) for c in codes]
        batch_nar = timed(lambda: nar.predict_samples(text, prompt, firsts), device)
        one_nar = timed(lambda: [nar.predict(text, prompt, c[None]) for c in firsts], device)
    speech = args.samples * args.seconds
    print(f"{args.preset} G={args.group_size} on {device}, {codec.name}: {args.samples} samples x {args.seconds:g} s")
    print("| stage | one batch | one by one | speed-up |")
    print("|---|---:|---:|---:|")
    for name, batched, single in (("AR", batch_ar, one_ar), ("NAR", batch_nar, one_nar)):
        print(f"| {name} | {batched:.2f} s | {single:.2f} s | {single / batched:.1f}x |")
    total_b, total_1 = batch_ar + batch_nar, one_ar + one_nar
    print(f"| AR + NAR | {total_b:.2f} s | {total_1:.2f} s | {total_1 / total_b:.1f}x |")
    print(f"per utterance ({args.samples} samples): {total_b:.2f} s; per second of speech: {total_b / speech:.3f} s")


if __name__ == "__main__":
    main()
