"""Codec worker: decoded windows in, codes out; one per GPU (or per 8 CPUs), shared by callers.

In: `encode(windows, rates)`: a chunk of windows as pipeline.encode.segment decodes them (int16 at the
file's rate for LibriLight) from one unit. Out: uint16 codes (n_q, frames) per window, in order.

Both executors use it: in process (pipeline.executors.local) or as a threaded Ray actor
(pipeline.executors.ray_cluster), where several units call it at once. Each call resamples its
windows to the codec's rate in a thread pool (libsoxr releases the GIL) and pads them into host
batches. On a GPU it then takes the device lock only to run them, so while one call's batches
are on the device, the next call's host work proceeds. On CPU the calls share the encoder's lanes
(`threads` of them, one torch thread each; tokens.codec), with no lock. Codes depend only on the
call's own windows (their batches are formed from them alone), never on what else runs at the
same time.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np

from tokens.audio import codec_input
from tokens.codec_settings import CodecConfig, CodecWeights


class CodecWorker:
    def __init__(
        self,
        cfg: CodecConfig,
        state: dict,
        weights: CodecWeights,
        threads: int | None = None,
        resample_threads: int = 1,
    ):
        # oneDNN (CPU convolutions) caches compiled kernels per input shape, 1024 by default, and
        # every batch has its own padded length: its cache would grow by megabytes per batch for
        # hours. Read when the first kernel is built, so set before this process encodes.
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")
        # torch is imported here, not at the top: a unit task holding a handle to this actor
        # never loads it.
        from tokens.codec import CodecEncoder

        # CPU: the encoder's lanes; GPU: torch's threads for host-side work.
        self.encoder = CodecEncoder(replace(cfg, threads=threads or cfg.threads), (state, weights))
        self.encoder.setup()
        self.weights = self.encoder.weights
        on_gpu = self.encoder.device.type == "cuda"
        self._device_lock = threading.Lock() if on_gpu else contextlib.nullcontext()
        self._stats_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max(1, resample_threads), thread_name_prefix="resample")
        self._seconds: Counter = Counter()  # where the time goes, summed over calls

    def encode(self, windows: list[np.ndarray], rates: list[int]) -> list[np.ndarray]:
        if len(windows) != len(rates):
            raise ValueError(f"encode: {len(windows)} windows but {len(rates)} rates")
        t0 = time.perf_counter()
        target = [self.encoder.spec.sample_rate] * len(rates)
        waves = list(self._pool.map(codec_input, windows, rates, target))
        t1 = time.perf_counter()
        prepared = self.encoder.prepare(waves)
        del waves
        t2 = time.perf_counter()
        with self._device_lock:
            t3 = time.perf_counter()
            try:
                codes = self.encoder.run(prepared)
            except Exception as err:
                if device_broken(err):
                    self.device_broke(err)
                raise
            t4 = time.perf_counter()
        del prepared
        _release_freed_memory()
        self._add(
            {
                "resample": t1 - t0,
                "pad": t2 - t1,
                "device_wait": t3 - t2,
                "device": t4 - t3,
                "audio": sum(len(w) / r for w, r in zip(windows, rates)),
            }
        )
        return codes

    def device_broke(self, err: BaseException) -> None:
        """A sticky device error: every later call here would fail at once. In process, the
        error is raised; the Ray actor (CodecActor) exits instead, so Ray restarts it and its
        units are retried on other workers."""
        raise DeviceBroken(f"codec worker on {self.encoder.device}: {type(err).__name__}: {err}") from err

    def _add(self, seconds: dict) -> None:
        with self._stats_lock:
            self._seconds.update(seconds)

    def stats(self) -> dict:
        """Forward passes, audio seconds encoded and seconds spent per step (summed over calls)."""
        with self._stats_lock:
            return {
                "forward_passes": self.encoder.forward_passes,
                "oom_splits": self.encoder.oom_splits,
                **self._seconds,
            }

    def stack(self) -> dict:
        """The compute stack these codes come from: float kernels differ between devices (GPU
        models, by their kernels and cuDNN's choice of them) and library versions, so codes are
        exactly reproducible only on the same stack. A CPU's names its vector instruction set."""
        import torch

        device = self.encoder.device
        stack = {
            "device": device.type,
            "torch": torch.__version__,
            "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
            "precision": self.encoder.cfg.precision,
        }
        if device.type == "cuda":
            major, minor = torch.cuda.get_device_capability(device)
            stack.update(gpu=torch.cuda.get_device_name(device), capability=f"{major}.{minor}")
        else:
            stack.update(cpu=torch.backends.cpu.get_cpu_capability(), cpu_pass=self.encoder.cpu_pass)
        return stack

    def device(self) -> str:
        return str(self.encoder.device)

    def close(self) -> None:
        self._pool.shutdown()
        self.encoder.close()


_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if ctypes.util.find_library("c") else None


def _release_freed_memory() -> None:
    """Hand freed heap memory back to the OS (glibc's malloc_trim). Each call frees buffers of
    new sizes (padded batches, resampled audio) from several threads' arenas, which glibc would
    otherwise keep: a process's memory would creep up with every batch."""
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


class DeviceBroken(RuntimeError):
    """The device failed in a way that fails every later call (see `device_broken`)."""


# What CUDA reports when the device or its context is gone for good: after one of these every
# later call on it fails at once, so a worker that stays up would fail each unit it takes in a
# second (while healthy workers take a minute) and drain the queue.
STICKY_DEVICE_ERRORS = (
    "illegal memory access",
    "illegal instruction",
    "misaligned address",
    "unspecified launch failure",
    "device-side assert",
    "uncorrectable ECC error",
    "ECC error",
    "GPU is lost",
    "fallen off the bus",
    "launch timed out",
    "CUDA driver error",
)


def device_broken(err: BaseException) -> bool:
    """True for an error after which the device cannot be used again in this process."""
    return isinstance(err, RuntimeError) and any(text in str(err) for text in STICKY_DEVICE_ERRORS)
