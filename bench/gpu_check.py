"""The GPU check in one command: what a GPU node does with valle-corpus, in one table and one JSON.

    python bench/gpu_check.py [--json gpu_check.json]          # on one GPU: about 8 minutes
    python bench/gpu_check.py --tiny --json /tmp/check.json     # on CPU, seconds (the test runs it)

1. codec exactness: EnCodec's batched codes equal its one-by-one codes, on this device, in the
   exact mode (float32, TF32 off): every code of utterances of many lengths, batched together;
2. codec throughput: audio seconds encoded per second by batch size and precision (exact, tf32,
   bf16), and the fast modes' agreement with exact (share of identical codes per codebook); then
   each codec of --codecs (EnCodec, DAC, Mimi) by batch size (padded seconds per forward pass) on
   utterances of 2-20 s (bench/bench_codecs.py's measure);
3. codec faults: a batch that runs out of device memory (injected into a real encode: the
   encoder network allocates, then fails) is split, the splits are counted, nothing of the
   failed attempts is alive when the halves run, and the share of codes equal to the unsplit
   batch's; a sticky device error (a real device-side assert on a GPU, staged on CPU) ends the
   codec worker's process with exit code 1, as the Ray actor does so that Ray restarts it;
4. the whole pipeline, end to end on a generated look-alike corpus: x real time;
5. training: ar-base with G=1 and G=2 and nar-base (tiny presets with --tiny): model positions
   per second, MFU (the device's dense bf16 peak, trainer/metrics.py), peak device memory, the
   attention (SDPA) backends this device offers, and ar-base with torch.compile against without.
Random-init EnCodec weights: the same architecture and cost as the pretrained ones. Our goals on
an H100: the pipeline at >= 10,000x real time end to end; ar-base at >= 45 % MFU.

Each step stands alone: the JSON (--json) and the table beside it (the same name, .md) are
rewritten after every step, and a step that fails records its error and the others go on, so
no figure of a run on a rented GPU is lost to a later one. Every step starts with the process's
CUDA kernel settings (cuDNN autotuning and determinism, TF32) as they were at the start; a step
that leaves them changed is named in the report, and they are restored before the next.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from bench_codec_gpu import bare, corpus_dag, pipeline  # noqa: E402
from bench_codecs import throughput, utterances  # noqa: E402

from storage.files import write_bytes_atomic, write_json_atomic  # noqa: E402
from tokens.codec import CodecEncoder, kernel_settings, set_kernel_settings  # noqa: E402
from tokens.codec_settings import CodecConfig  # noqa: E402
from tokens.codec_weights import resolve_weights  # noqa: E402
from tokens.codecs import SPECS  # noqa: E402
from trainer.metrics import peak_flops  # noqa: E402
from trainer.models import ARModel, NARModel, base, tiny  # noqa: E402

GOALS = {"pipeline_x_real_time": 10_000, "ar_base_mfu": 0.45}


def sizes(tiny_run: bool, gpu: bool) -> dict:
    if tiny_run:
        return {
            "batches": [1, 4],
            "seconds": 1.0,
            "repeat": 1,
            "oom_utterances": 4,  # 4 -> 2 + 2
            "minutes": 0.5,
            "per_chapter": 5,  # 2 chapters of 5 utterances: ~35 s of audio
            "steps": 2,
            "batch": 2,
            "frames": 150,
            "text": 20,
            "preset": tiny,
            # each codec: padded seconds per forward pass, utterance seconds, audio seconds
            "codec_batches": [1.0, 2.0],
            "utterance_seconds": (0.3, 1.0),
            "codec_audio": 2.0,
        }
    return {
        "batches": [1, 8, 32, 128],
        "seconds": 10.0 if gpu else 2.0,
        "repeat": 3 if gpu else 1,
        "oom_utterances": 8,  # 8 -> 4 + 4 -> 2 + 2 + 2 + 2
        "minutes": 30.0 if gpu else 3.0,
        "per_chapter": 30,
        "steps": 20,
        "batch": 16 if gpu else 2,
        "frames": 1100,
        "text": 60,
        "preset": base,
        "codec_batches": [30.0, 120.0, 600.0] if gpu else [5.0, 30.0],
        "utterance_seconds": (2.0, 20.0),
        "codec_audio": 600.0 if gpu else 30.0,
    }


def noise_waves() -> list[np.ndarray]:
    """Noise utterances of many lengths (a frame's edge, MIN_FRAMES, odd samples)."""
    rng = np.random.default_rng(1)
    lengths = [24000, 23999, 7 * 320, 320 * 50 + 1, 12345, 48000, 6000, 31999]
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]


def exactness(device: str, state) -> dict:
    """Batched against one-by-one, exact mode: the share of identical codes (1.0 is the claim)."""
    waves = noise_waves()
    encoder = CodecEncoder(CodecConfig(weights="random", device=device, batch_seconds=60.0), state)
    together = encoder.encode(waves)
    alone = [encoder.encode([w])[0] for w in waves]
    same = sum(int((a == b).sum()) for a, b in zip(together, alone))
    total = sum(a.size for a in alone)
    return {"identical_share": same / total, "codes": total, "utterances": len(waves)}


def oom_split(device: str, state, utterances: int) -> dict:
    """Out of device memory above 2 utterances (injected: the encoder network allocates 8 MiB an
    utterance, then raises), the exact mode: splits, failed attempts' MiB alive at the retries
    (0 is the claim), and the share of codes equal to the unsplit batch's (see tokens/codec.py)."""
    waves = noise_waves()[:utterances]
    encoder = CodecEncoder(CodecConfig(weights="random", device=device, batch_seconds=60.0), state)
    want = encoder.encode(waves)
    failed, alive = [], []

    def little_memory(module, inputs, output):  # output: (B, 128, frames)
        if failed:
            alive.append(sum(ref().nbytes for ref in failed if ref() is not None) / 2**20)
        if output.shape[0] > 2:
            activations = torch.empty(output.shape[0], 2**21, device=output.device)
            failed.append(weakref.ref(activations))
            raise torch.cuda.OutOfMemoryError(f"out of memory for {output.shape[0]} utterances (injected)")

    encoder.setup()
    hook = encoder._model.encoder.register_forward_hook(little_memory)
    try:
        got = encoder.encode(waves)
    finally:
        hook.remove()
    same = sum(int((a == b).sum()) for a, b in zip(got, want))
    total = sum(a.size for a in want)
    return {
        "utterances": len(waves),
        "splits": encoder.oom_splits,
        "failed_attempts": len(failed),
        "alive_mib_at_retries": max(alive, default=0.0),
        "identical_share": same / total,
        "codes": total,
    }


# A codec worker that exits as the Ray actor does (CodecActor.device_broke), without Ray.
BROKEN_DEVICE = """
import sys
import numpy as np
from pipeline.encode.codec_worker import CodecWorker
from pipeline.executors.codec_actor import CodecActor
from tokens.codec_settings import CodecConfig
from tokens.codec_weights import resolve_weights

class Worker(CodecWorker):
    device_broke = CodecActor.device_broke
    def where(self):
        return str(self.encoder.device)

def break_device(module, inputs, output):
    import torch
    if output.is_cuda:  # a real sticky error: an index past the end asserts on the device
        output.new_zeros(1)[torch.tensor([1 << 20], device=output.device)]
    else:
        raise RuntimeError("CUDA error: an illegal memory access was encountered (staged: no GPU)")

cfg = CodecConfig(weights="random", device=sys.argv[1])
worker = Worker(cfg, *resolve_weights(cfg))
worker.encoder._model.encoder.register_forward_hook(break_device)
try:
    worker.encode([np.zeros(16000, np.int16)], [16000])
    print("not exited: no error", flush=True)
except BaseException as err:
    print(f"not exited: {type(err).__name__}: {err}", flush=True)
sys.exit(2)
"""


def broken_device(device: str) -> dict:
    """A sticky device error ends the codec worker's process with exit code 1 (Ray restarts the
    actor), in a child process so that this one keeps its device."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", BROKEN_DEVICE, device], capture_output=True, text=True, timeout=300, env=env
    )
    said = [line for line in done.stderr.splitlines() if "exiting so that Ray restarts it" in line]
    return {
        "error": "staged (no GPU)" if device == "cpu" else "device-side assert",
        "exit_code": done.returncode,
        "exited": done.returncode == 1 and bool(said),
        "said": said[-1] if said else (done.stdout + done.stderr).strip()[-500:],
    }


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
    parser.add_argument("--json", type=Path, help="also write the figures here (and the table beside it, .md)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile's backend (eager: no codegen)")
    parser.add_argument(
        "--codecs", nargs="+", choices=sorted(SPECS), default=sorted(SPECS), help="codecs measured by batch size"
    )
    args = parser.parse_args(argv)
    s = sizes(args.tiny, gpu)
    device = torch.device("cuda" if gpu else "cpu")
    state = resolve_weights(CodecConfig(weights="random"))
    report = {**describe_device(device), "torch": torch.__version__, "tiny": args.tiny, "goals": GOALS}
    report.update(kernel_settings=kernel_settings(), seconds=0.0, step_seconds={}, training=[])
    report.update(errors={}, settings_left={})
    started = time.monotonic()
    for name, step in steps(device, state, s, args.compile_backend, args.codecs):
        run_step(report, name, step)
        report["seconds"] = time.monotonic() - started
        if args.json:
            write_json_atomic(args.json, report)
            write_bytes_atomic(args.json.with_suffix(".md"), (markdown(report) + "\n").encode())
    print(markdown(report))
    return report


def describe_device(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"device": f"CPU ({os.cpu_count()} cores)"}
    major, minor = torch.cuda.get_device_capability(device)
    return {"device": torch.cuda.get_device_name(device), "capability": f"{major}.{minor}"}


def steps(device: torch.device, state, s: dict, compile_backend: str, codecs: list[str]):
    """(name, step) in order; a step adds its figures to the report."""
    precisions = ["exact", "tf32", "bf16"] if device.type == "cuda" else ["exact", "bf16"]

    def codec(report):
        rows, codes = bare(device.type, state, precisions, s["batches"], s["seconds"], s["repeat"])
        report["codec"], largest = rows, s["batches"][-1]
        report["agreement"] = {
            p: [
                float(np.mean([(a[k] == b[k]).mean() for a, b in zip(codes["exact", largest], codes[p, largest])]))
                for k in range(8)
            ]
            for p in precisions
            if p != "exact"
        }

    def each_codec(report):
        report["codecs"] = []
        for name in codecs:
            waves = utterances(name, s["codec_audio"], *s["utterance_seconds"])
            for precision in ["exact", "bf16"] if device.type == "cuda" else ["exact"]:
                given = state if name == "encodec_24khz" else None  # EnCodec's are loaded already
                batches, repeat = s["codec_batches"], s["repeat"]
                report["codecs"] += throughput(name, batches, waves, device.type, precision, repeat=repeat, state=given)

    def training_step(kind: str, group: int, backend: str | None):
        return lambda report: report["training"].append(training(kind, group, device, s, backend))

    return [
        ("codec exactness", lambda report: report.update(exactness=exactness(device.type, state))),
        ("codec throughput", codec),
        ("each codec's throughput", each_codec),
        ("codec OOM split", lambda report: report.update(oom_split=oom_split(device.type, state, s["oom_utterances"]))),
        ("broken device exit", lambda report: report.update(broken_device=broken_device(device.type))),
        ("pipeline", lambda report: report.update(pipeline=end_to_end(device, s))),
        ("attention backends", lambda report: report.update(sdpa_backends=sdpa_backends(device))),
        ("ar G=1", training_step("ar", 1, None)),
        ("ar G=2", training_step("ar", 2, None)),
        ("nar", training_step("nar", 1, None)),
        (f"ar G=1, torch.compile {compile_backend}", training_step("ar", 1, compile_backend)),
    ]


def run_step(report: dict, name: str, step) -> None:
    """One step; its error, if any, is recorded (type and message) and the run goes on. The CUDA
    kernel settings it leaves changed are recorded and restored, so that the next step starts
    as this one did."""
    before, started = kernel_settings(), time.monotonic()
    try:
        step(report)
    except Exception as err:  # a step's failure must not cost the other steps' figures
        report["errors"][name] = f"{type(err).__name__}: {err}"
        print(f"gpu_check: step {name!r} failed: {type(err).__name__}: {err}", file=sys.stderr)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    report["step_seconds"][name] = time.monotonic() - started
    after = kernel_settings()
    if after != before:
        report["settings_left"][name] = {k: v for k, v in after.items() if v != before[k]}
        set_kernel_settings(before)


def end_to_end(device: torch.device, s: dict) -> dict:
    work = Path(tempfile.mkdtemp(prefix="valle-gpu-check-"))
    try:
        dag = corpus_dag(s["minutes"], work / "corpus", device.type, "random", s["per_chapter"])
        pipe = pipeline(dag, work / "out", device.type == "cuda", "local")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "audio_s": pipe["audio_s"],
        "x_real_time": pipe["audio_s_per_s"],
        "units_phase_x_real_time": pipe["units_audio_s_per_s"],
        "device_busy": pipe["device_busy"],
    }


def markdown(r: dict) -> str:
    """The report as a table: the rows of the steps done so far, and each failed step's error."""
    where = f"{r['device']}{', compute capability ' + r['capability'] if 'capability' in r else ''}"
    lines = [
        f"GPU check on {where}, torch {r['torch']}{' (tiny sizes)' if r['tiny'] else ''}, {r['seconds']:.0f} s",
        "",
        "| check | result |",
        "|---|---|",
        "| CUDA kernel settings every step starts with | "
        + ", ".join(f"{k} {v}" for k, v in r["kernel_settings"].items())
        + " |",
    ]
    if "exactness" in r:
        ex = r["exactness"]
        lines.append(
            f"| EnCodec batched = one by one (exact) | {ex['identical_share']:.6f} of {ex['codes']:,} codes identical |"
        )
    for row in r.get("codec", []):
        lines.append(f"| codec {row['precision']}, batch {row['batch']} | {row['audio_s_per_s']:,.1f} audio s/s |")
    for row in r.get("codecs", []):
        lines.append(
            f"| {row['codec']} {row['precision']}, batch {row['batch_seconds']:g} s | {row['audio_s_per_s']:,.1f} "
            f"audio s/s ({row['forward_passes']} forward passes, {row['audio_s']:.0f} s of audio) |"
        )
    for p, shares in r.get("agreement", {}).items():
        lines.append(f"| {p} vs exact, identical codes per codebook | " + " ".join(f"{x:.3f}" for x in shares) + " |")
    if "oom_split" in r:
        oom = r["oom_split"]
        lines.append(
            f"| EnCodec out of memory above 2 utterances (injected), exact | {oom['splits']} splits of "
            f"{oom['utterances']} utterances; {oom['alive_mib_at_retries']:.0f} MiB of the failed attempts alive "
            f"at the retries; {oom['identical_share']:.6f} of {oom['codes']:,} codes equal to the unsplit batch's |"
        )
    if "broken_device" in r:
        broken = r["broken_device"]
        lines.append(
            f"| a sticky device error ({broken['error']}) ends the codec worker | "
            f"{'yes' if broken['exited'] else 'NO'}: exit code {broken['exit_code']}; {cell(broken['said'])} |"
        )
    if "pipeline" in r:
        pipe = r["pipeline"]
        lines.append(
            f"| pipeline end to end ({pipe['audio_s']:.0f} s of audio) | {pipe['x_real_time']:,.1f}x real time "
            f"(goal {r['goals']['pipeline_x_real_time']:,}x on an H100); device busy {pipe['device_busy']:.0%} |"
        )
    if "sdpa_backends" in r:
        lines.append(f"| attention (SDPA) backends | {', '.join(r['sdpa_backends']) or 'none'} |")
    for t in r.get("training", []):
        mfu = f"{t['mfu']:.1%} MFU" if t["mfu"] is not None else "MFU n/a (no known peak)"
        memory = f", peak {t['peak_memory_gb']:.1f} GB" if t["peak_memory_gb"] is not None else ""
        lines.append(
            f"| {t['model']}, compile {t['compile']} | {t['positions_per_s']:,.0f} positions/s, {mfu}{memory} |"
        )
    for name, changed in r["settings_left"].items():
        lines.append(f"| step {name} left kernel settings changed (restored) | {changed} |")
    for name, error in r["errors"].items():
        lines.append(f"| step {name} FAILED | {cell(error)} |")
    return "\n".join(lines)


def cell(text: str, limit: int = 300) -> str:
    """Text for one table cell: one line, no column bars, at most `limit` characters."""
    text = " ".join(text.split()).replace("|", "/")
    return text if len(text) <= limit else text[: limit - 3] + "..."


if __name__ == "__main__":
    main()
