"""Training metrics over a log window, honest about what was computed and how long it took.

In: each micro-batch's loss and stats (device tensors, see the models' `loss`) and the CPU batch
(lengths). Out: one record per window: loss beside `unigram_loss`, the cross-entropy of the
window's own code frequencies (the best predictor that ignores all context); accuracy beside
`majority`, what always predicting the window's most frequent target code (per NAR stage) would
score; so a gain over guessing is visible;
tokens/s in model positions (one position per code group for G > 1), audio frames/s, MFU from
each batch's FLOPs at its real lengths, padding, distinct speakers per batch.
- No host sync per micro-batch: losses and counts add up on the device and are read at log time.
- Time counts training only: `pause()` before evaluation or checkpointing, `resume()` after.
"""

from __future__ import annotations

import time

import torch

# Dense bf16 tensor-core peak per GPU (vendor datasheets; half their with-sparsity figures), by a
# part of the name torch reports, the most specific first: "NVIDIA H100 80GB HBM3" is the SXM part.
PEAK_FLOPS = (
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200 NVL", 835e12),
    ("H200", 989e12),
    ("GB200", 2500e12),
    ("B200", 2250e12),
    ("A100", 312e12),
)


def peak_for(name: str) -> float | None:
    """The peak of a GPU by its name, or None for one not in the table (MFU is then not logged)."""
    return next((flops for part, flops in PEAK_FLOPS if part in name), None)


def peak_flops(device: torch.device) -> float | None:
    return peak_for(torch.cuda.get_device_name(device)) if device.type == "cuda" else None


class Window:
    def __init__(self, device: torch.device, histogram_shape: tuple[int, int]):
        self.device, self.histogram_shape = device, histogram_shape
        self.reset()

    def reset(self) -> None:
        zero = lambda: torch.zeros((), dtype=torch.float64, device=self.device)  # noqa: E731
        self.loss, self.correct, self.tokens = zero(), zero(), zero()
        self.histogram = torch.zeros(self.histogram_shape, dtype=torch.long, device=self.device)
        self.host = {"positions": 0.0, "frames": 0.0, "flops": 0.0, "padding": 0.0, "speakers": 0.0, "batches": 0.0}
        self.seconds, self.started = 0.0, time.perf_counter()

    def add(self, loss: torch.Tensor, stats: dict, batch: dict, positions: float, flops: float) -> None:
        self.loss += loss.detach().double() * stats["tokens"]
        self.correct += stats["correct"]
        self.tokens += stats["tokens"]
        self.histogram += stats["histogram"]
        for key, value in (
            ("positions", positions),
            ("frames", float(batch["code_lens"].sum())),
            ("flops", flops),
            ("padding", batch["padding"]),
            ("speakers", batch["speakers"]),
            ("batches", 1.0),
        ):
            self.host[key] += value

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def pause(self) -> None:
        self._sync()
        self.seconds += time.perf_counter() - self.started

    def resume(self) -> None:
        self.started = time.perf_counter()

    def record(self, run, step: int, lr: float, grad_norm: torch.Tensor, peak: float | None) -> dict:
        """Sum over ranks (every rank must call it), then start a new window."""
        self.pause()
        loss, correct, tokens = run.sum_tensor(torch.stack([self.loss, self.correct, self.tokens])).tolist()
        histogram = run.sum_tensor(self.histogram)
        host = dict(zip(self.host, run.sum(*self.host.values())))
        seconds = max(run.sum(self.seconds)[0] / run.world, 1e-9)
        majority = float(histogram.max(dim=1).values.sum()) / max(tokens, 1)
        counts = histogram.double()
        share = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
        unigram = float(-(counts * torch.where(counts > 0, share.log(), 0.0)).sum()) / max(tokens, 1)
        record = {
            "step": step,
            "loss": loss / max(tokens, 1),
            "unigram_loss": unigram,
            "accuracy": correct / max(tokens, 1),
            "majority": majority,
            "lr": lr,
            "grad_norm": float(grad_norm),
            "tokens_per_s": host["positions"] / seconds,
            "frames_per_s": host["frames"] / seconds,
            "mfu": host["flops"] / seconds / (peak * run.world) if peak else None,
            "padding": host["padding"] / max(host["batches"], 1),
            "speakers_per_batch": host["speakers"] / max(host["batches"], 1),
            "seconds": seconds,
        }
        self.reset()
        return record
