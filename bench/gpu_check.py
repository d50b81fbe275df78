"""The GPU check in one command: what a GPU node does with valle-corpus, in one table and one JSON.

    python bench/gpu_check.py [--json gpu_check.json]          # on one GPU: about 8 minutes
    python bench/gpu_check.py --tiny --json /tmp/check.json     # on CPU, seconds (the test runs it)

1. codec exactness: EnCodec's batched codes equal its one-by-one codes, on this device, in the
   exact mode (float32, TF32 off): every code of utterances of many lengths, batched together;
2. codec throughput: audio seconds encoded per second by batch size and precision (exact, tf32,
   bf16), and the fast modes' agreement with exact (share of identical codes per codebook);
3. the whole pipeline, end to end on a generated look-alike corpus: x real time;
4. training: ar-base with G=1 and G=2 and nar-base (tiny presets with --tiny): model positions
   per second, MFU (the device's dense bf16 peak, trainer/metrics.py), peak device memory, the
   attention (SDPA) backends this device offers, and ar-base with torch.compile against without.
Random-init EnCodec weights: the same architecture and cost as the pretrained ones. Our goals on
an H100: the pipeline at >= 10,000x real time end to end; ar-base at >= 45 % MFU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from bench_codec_gpu import bare, corpus_dag, pipeline  # noqa: E402

from tokens.codec import CodecEncoder  # noqa: E402
from tokens.codec_settings import CodecConfig  # noqa: E402
from tokens.codec_weights import resolve_weights  # noqa: E402
from trainer.metrics import peak_flops  # noqa: E402
from trainer.models import ARModel, NARModel, base, tiny  # noqa: E402

GOALS = {"pipeline_x_real_time": 10_000, "ar_base_mfu": 0.45}


def sizes(tiny_run: bool, gpu: bool) -> dict:
    if tiny_run:
        return {
            "batches": [1, 4],
            "seconds": 1.0,
            "repeat": 1,
            "minutes": 0.5,
            "per_chapter": 5,  # 2 chapters of 5 utterances: ~35 s of audio
            "steps": 2,
            "batch": 2,
            "frames": 150,
            "text": 20,
            "preset": tiny,
        }
    return {
        "batches": [1, 8, 32, 128],
        "seconds": 10.0 if gpu else 2.0,
        "repeat": 3 if gpu else 1,
        "minutes": 30.0 if gpu else 3.0,
        "per_chapter": 30,
        "steps": 20,
        "batch": 16 if gpu else 2,
        "frames": 1100,
        "text": 60,
        "preset": base,
    }


def exactness(device: str, state) -> dict:
    """Batched against one-by-one, exact mode: the share of identical codes (1.0 is the claim)."""
    rng = np.random.default_rng(1)
    lengths = [24000, 23999, 7 * 320, 320 * 50 + 1, 12345, 48000, 6000, 31999]
    waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]
    encoder = CodecEncoder(CodecConfig(weights="random", device=device, batch_seconds=60.0), state)
    together = encoder.encode(waves)
    alone = [encoder.encode([w])[0] for w in waves]
    same = sum(int((a == b).sum()) for a, b in zip(together, alone))
    total = sum(a.size for a in alone)
    return {"identical_share": same / total, "codes": total, "utterances": len(waves)}


def sdpa_backends(device: torch.device) -> list[str]:
    """The attention kernels that run here for the models' shapes (bf16 on a GPU)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q = torch.randn(2, 16, 128, 64, device=device, dtype=dtype)
    mask = torch.ones(2, 1, 128, 128, device=device, dtype=torch.bool)
    found = []
    for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
        backend = getattr(SDPBackend, name, None)
        if backend is None:
            continue
        try:
            with sdpa_kernel(backend):
                torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=mask)
            found.append(name.lower())
        except RuntimeError:  # not for these shapes, dtype or masks on this device
            pass
    return found


def training(kind: str, group: int, device: torch.device, s: dict, compile_backend: str | None) -> dict:
    """Optimizer steps on a synthetic batch: positions/s, MFU, peak device memory."""
    torch.manual_seed(0)
    cfg = s["preset"](1024, group_size=group) if kind == "ar" else s["preset"](1024)
    model = (ARModel if kind == "ar" else NARModel)(cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b, frames, text = s["batch"], s["frames"], s["text"]
    batch = {
        "text": torch.randint(4, 1024, (b, text), device=device),
        "text_lens": torch.full((b,), text, device=device),
        "codes": torch.randint(0, 1024, (b, cfg.n_codebooks, frames), device=device),
        "code_lens": torch.full((b,), frames, device=device),
    }
    step = torch.compile(model.loss, backend=compile_backend) if compile_backend else model.loss
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )

    def one_step():
        with autocast:
            loss, _ = step(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    one_step()  # warm-up (and compilation)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(s["steps"]):
        one_step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    lens = (batch["text_lens"].cpu(), batch["code_lens"].cpu())
    positions = float(model.positions(*lens).sum()) * s["steps"]
    flops = model.train_flops(*lens) * s["steps"]
    peak = peak_flops(device)
    return {
        "model": f"{kind}-{s['preset'].__name__} G={group}" if kind == "ar" else f"nar-{s['preset'].__name__}",
        "compile": compile_backend or "off",
        "positions_per_s": positions / seconds,
        "mfu": flops / seconds / peak if peak else None,
        "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


def main(argv: list[str] | None = None) -> dict:
    gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes and models: a smoke run in seconds")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile's backend (eager: no codegen)")
    args = parser.parse_args(argv)
    s = sizes(args.tiny, gpu)
    device = torch.device("cuda" if gpu else "cpu")
    name = torch.cuda.get_device_name(device) if gpu else f"CPU ({os.cpu_count()} cores)"
    state = resolve_weights(CodecConfig(weights="random"))
    started = time.monotonic()

    report = {"device": name, "torch": torch.__version__, "tiny": args.tiny}
    report["exactness"] = exactness(device.type, state)
    precisions = ["exact", "tf32", "bf16"] if gpu else ["exact", "bf16"]
    rows, codes = bare(device.type, state, precisions, s["batches"], s["seconds"], s["repeat"])
    report["codec"] = rows
    largest = s["batches"][-1]
    report["agreement"] = {
        p: [
            float(np.mean([(a[k] == b[k]).mean() for a, b in zip(codes["exact", largest], codes[p, largest])]))
            for k in range(8)
        ]
        for p in precisions
        if p != "exact"
    }
    work = Path(tempfile.mkdtemp(prefix="valle-gpu-check-"))
    try:
        dag = corpus_dag(s["minutes"], work / "corpus", device.type, "random", s["per_chapter"])
        pipe = pipeline(dag, work / "out", gpu, "local")
        report["pipeline"] = {
            "audio_s": pipe["audio_s"],
            "x_real_time": pipe["audio_s_per_s"],
            "units_phase_x_real_time": pipe["units_audio_s_per_s"],
            "device_busy": pipe["device_busy"],
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["sdpa_backends"] = sdpa_backends(device)
    report["training"] = [
        training("ar", 1, device, s, None),
        training("ar", 2, device, s, None),
        training("nar", 1, device, s, None),
        training("ar", 1, device, s, args.compile_backend),
    ]
    report["seconds"] = time.monotonic() - started
    report["goals"] = GOALS
    print(markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return report


def markdown(r: dict) -> str:
    ex = r["exactness"]
    lines = [
        f"GPU check on {r['device']}, torch {r['torch']}{' (tiny sizes)' if r['tiny'] else ''}, {r['seconds']:.0f} s",
        "",
        "| check | result |",
        "|---|---|",
        f"| EnCodec batched = one by one (exact) | {ex['identical_share']:.6f} of {ex['codes']:,} codes identical |",
    ]
    for row in r["codec"]:
        lines.append(f"| codec {row['precision']}, batch {row['batch']} | {row['audio_s_per_s']:,.1f} audio s/s |")
    for p, shares in r["agreement"].items():
        lines.append(f"| {p} vs exact, identical codes per codebook | " + " ".join(f"{x:.3f}" for x in shares) + " |")
    pipe = r["pipeline"]
    lines.append(
        f"| pipeline end to end ({pipe['audio_s']:.0f} s of audio) | {pipe['x_real_time']:,.1f}x real time "
        f"(goal {r['goals']['pipeline_x_real_time']:,}x on an H100); device busy {pipe['device_busy']:.0%} |"
    )
    lines.append(f"| attention (SDPA) backends | {', '.join(r['sdpa_backends']) or 'none'} |")
    for t in r["training"]:
        mfu = f"{t['mfu']:.1%} MFU" if t["mfu"] is not None else "MFU n/a (no known peak)"
        memory = f", peak {t['peak_memory_gb']:.1f} GB" if t["peak_memory_gb"] is not None else ""
        lines.append(
            f"| {t['model']}, compile {t['compile']} | {t['positions_per_s']:,.0f} positions/s, {mfu}{memory} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
