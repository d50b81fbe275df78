"""The codec worker: int16 16 kHz windows in, the same codes as decoding to float32 and
resampling before sending (the pre-streaming path); weights handed over, not loaded again;
concurrent callers get exactly their own codes; the fast modes run and are measured."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
import soundfile as sf

from pipeline.encode.codec_worker import CodecWorker
from pipeline.encode.segment import segment_recording
from sample.compare import code_agreement
from tests.test_segment import cuts_by_recording, store  # noqa: F401  (fixtures)
from tokens import codec_weights as codec_module
from tokens.audio import resample
from tokens.codec import CodecEncoder
from tokens.codec_settings import CodecConfig
from tokens.codec_weights import resolve_weights


@pytest.fixture(scope="module")
def weights():
    return resolve_weights(CodecConfig(weights="random"))


@pytest.fixture(scope="module")
def worker(weights):
    return CodecWorker(CodecConfig(weights="random", device="cpu", batch_seconds=4), *weights, resample_threads=2)


def test_int16_windows_give_the_codes_of_the_float_path(worker, cuts_by_recording, store):
    """Before: decode to float32, slice, resample, send 24 kHz float32. Now: decode to int16,
    slice, send, resample in the worker. Same codes, bit for bit."""
    windows, rates, before = [], [], []
    for cuts in list(cuts_by_recording.values())[:3]:
        segments, _ = segment_recording(cuts, store.read_bytes, 0.5, 20.0)
        whole, rate = sf.read(io.BytesIO(store.read_bytes(cuts[0]["audio"])), dtype="float32")
        for seg in segments:
            first = int(round(seg.cut["start"] * rate))
            before.append(resample(whole[first : first + len(seg.audio)], rate, 24000))
            windows.append(seg.audio)
            rates.append(seg.rate)
    assert len(windows) >= 5 and {w.dtype for w in windows} == {np.dtype(np.int16)}
    reference = CodecEncoder(
        CodecConfig(weights="random", device="cpu", batch_seconds=4),
        (worker.encoder._model.state_dict(), worker.weights),
    )
    for got, want in zip(worker.encode(windows, rates), reference.encode(before)):
        np.testing.assert_array_equal(got, want)
    stats = worker.stats()
    assert stats["forward_passes"] > 0 and stats["audio"] == pytest.approx(
        sum(len(w) / r for w, r in zip(windows, rates))
    )
    assert all(stats[k] >= 0 for k in ("resample", "pad", "device", "device_wait"))


def test_concurrent_callers_get_their_own_codes(worker):
    rng = np.random.default_rng(3)
    calls = [
        [(rng.standard_normal(n) * 3000).astype(np.int16) for n in sizes]
        for sizes in ([8000, 4000, 12000], [2000, 15000], [6000])
    ]
    alone = [worker.encode(c, [16000] * len(c)) for c in calls]
    together = [None] * len(calls)

    def call(i):
        together[i] = worker.encode(calls[i], [16000] * len(calls[i]))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(alone, together):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def test_handed_over_weights_are_not_loaded_again(weights, monkeypatch):
    def no_loading(cfg):
        raise AssertionError("the worker loaded the weights itself")

    monkeypatch.setattr(codec_module, "load_model", no_loading)
    w = CodecWorker(CodecConfig(weights="random", device="cpu"), *weights)
    assert w.weights == weights[1]
    damaged = dict(weights[0])
    key = next(iter(damaged))
    damaged[key] = damaged[key] + 1
    with pytest.raises(RuntimeError, match="damaged on the way"):
        CodecWorker(CodecConfig(weights="random", device="cpu"), damaged, weights[1])


def test_fast_mode_runs_and_its_agreement_is_measured(weights):
    rng = np.random.default_rng(4)
    waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (24000, 9000, 30000)]
    exact = CodecEncoder(CodecConfig(weights="random", device="cpu"), weights).encode(waves)
    bf16 = CodecEncoder(CodecConfig(weights="random", device="cpu", precision="bf16"), weights).encode(waves)
    assert code_agreement(exact, exact) == [1.0] * 8
    agreement = code_agreement(exact, bf16)
    assert len(agreement) == 8 and all(0.0 <= a <= 1.0 for a in agreement)
    assert agreement[0] > 0.3  # bf16 moves latents a little: most first-codebook codes hold
    assert [b.shape for b in bf16] == [e.shape for e in exact]
    with pytest.raises(ValueError, match="codec.precision must be one of"):
        CodecEncoder(CodecConfig(precision="fp8"))
