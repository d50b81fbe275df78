"""Resample: decoded audio at its source rate -> the codec's float32 at 24 kHz.

In: a window as decoded by pipeline.segment (int16 for 16-bit files, as LibriLight's FLACs are;
float32 otherwise) and its sample rate. Out: float32 mono at 24 kHz in [-1, 1].

This runs where the audio is encoded (pipeline.codec_worker), so audio crosses Ray's object store
as 16 kHz int16, a third of the bytes of 24 kHz float32. int16 / 32768 is exactly what libsndfile
returns when asked for float32 (tests/test_segment.py checks it), so the codes are those of
decoding straight to float32.
"""
from __future__ import annotations

import numpy as np
import soxr

from tokens.constants import SAMPLE_RATE as TARGET_RATE
RESAMPLER = f"soxr-{soxr.__version__}-HQ"  # recorded in the audio settings: it shapes the codes


def as_float32(audio: np.ndarray) -> np.ndarray:
    """int16 -> float32 in [-1, 1) the way libsndfile scales it; float input is kept."""
    if audio.dtype == np.int16:
        return audio.astype(np.float32) * np.float32(1 / 32768)  # a power of two: exact
    return audio.astype(np.float32, copy=False)


def resample(audio: np.ndarray, rate: int) -> np.ndarray:
    """(n,) float32 at `rate` -> float32 at 24 kHz with libsoxr's high-quality filter.

    soxr rather than torchaudio: several times faster, it releases the GIL (so a worker's
    threads resample in parallel), and it keeps torch out of the decoding workers.
    """
    if rate == TARGET_RATE:
        return audio
    return soxr.resample(audio, rate, TARGET_RATE, quality="HQ").astype(np.float32, copy=False)


def codec_input(audio: np.ndarray, rate: int) -> np.ndarray:
    """A decoded window -> what the codec encodes: float32 mono at 24 kHz."""
    return resample(as_float32(audio), rate)
