"""A broken GPU must not drain the queue: sticky device errors end the codec worker (Ray restarts
it and its units go elsewhere), a worker that fails units in a row is retired and those units
retried on the others, and running out of device memory splits the batch instead of failing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.encode.codec_worker import DeviceBroken, device_broken
from pipeline.executors.streaks import FailureStreaks
from tokens.codec import CodecEncoder
from tokens.codec_settings import CodecConfig


@pytest.mark.parametrize(
    "message, sticky",
    [
        ("CUDA error: an illegal memory access was encountered", True),
        ("CUDA error: uncorrectable ECC error encountered", True),
        ("CUDA error: unspecified launch failure", True),
        ("CUDA error: device-side assert triggered", True),
        ("Expected all tensors to be on the same device", False),
        ("shape mismatch", False),
    ],
)
def test_sticky_device_errors_are_told_from_the_others(message, sticky):
    assert device_broken(RuntimeError(message)) is sticky
    assert not device_broken(ValueError(message))


def test_a_worker_in_process_raises_a_broken_device_error(monkeypatch):
    from pipeline.encode.codec_worker import CodecWorker
    from tokens.codec_weights import resolve_weights

    cfg = CodecConfig(weights="random", device="cpu")
    worker = CodecWorker(cfg, *resolve_weights(cfg))

    def broken(prepared):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(worker.encoder, "run", broken)
    with pytest.raises(DeviceBroken, match="illegal memory access"):
        worker.encode([np.zeros(3200, np.int16)], [16000])


def test_the_actor_exits_so_that_ray_restarts_it(monkeypatch):
    import os

    from pipeline.executors.codec_actor import CodecActor

    class Exited(Exception):
        pass

    def exit_(code):
        raise Exited(code)

    monkeypatch.setattr(os, "_exit", exit_)
    fake = type("Fake", (), {"where": lambda self: "node abababab, cuda:0"})()
    with pytest.raises(Exited):
        CodecActor.device_broke(fake, RuntimeError("CUDA error: unspecified launch failure"))


def test_a_worker_that_fails_in_a_row_is_retired_and_its_units_tried_elsewhere():
    streaks = FailureStreaks(limit=3)
    assert streaks.failed("gpu0", "u1", "err") is None
    assert streaks.succeeded("gpu0") == [("u1", "err")]  # it finished another: u1 failed on its own
    assert streaks.failed("gpu1", "u2", "e") is None and streaks.failed("gpu1", "u3", "e") is None
    assert streaks.failed("gpu0", "u4", "e") is None  # streaks are per worker
    assert streaks.failed("gpu1", "u5", "e") == [("u2", "e"), ("u3", "e"), ("u5", "e")]  # retire gpu1
    assert streaks.leftover() == [("u4", "e")]


def test_out_of_device_memory_splits_the_batch_once_the_failed_attempt_is_freed():
    """The encoder network allocates its activations (here a 40 MiB block for 5 utterances) and
    then runs out of memory for batches above 2. When the halves run, nothing of the failed
    attempt may be alive: a retry inside the `except` keeps it through the traceback, and on a
    GPU the halves then run out of memory too, down to one utterance."""
    import weakref

    encoder = CodecEncoder(CodecConfig(weights="random", device="cpu", batch_seconds=10))
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (8000, 6000, 5000, 4000, 3000)]
    want = encoder.encode(waves)
    failed, alive_at_retries = [], []

    def little_memory(module, inputs, output):  # (B, 128, T / 320): the encoder network's output
        if failed:
            alive_at_retries.append(sum(ref() is not None for ref in failed))
        if output.shape[0] > 2:
            activations = torch.empty(output.shape[0], 2**21)  # 8 MiB per utterance
            failed.append(weakref.ref(activations))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    encoder._model.encoder.register_forward_hook(little_memory)
    got = encoder.encode(waves)
    assert len(failed) == 2 and alive_at_retries == [0, 0, 0, 0]  # 5 -> 2 + 3 -> 2 + 1 + 2
    assert encoder.oom_splits == 2
    assert all(np.array_equal(a, b) for a, b in zip(got, want))  # exact mode, on this CPU: see tokens/codec.py
