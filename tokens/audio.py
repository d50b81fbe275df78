"""Audio as the codec takes it and gives it back: float32 mono at 24 kHz.

In: decoded audio at its source rate (int16 for 16-bit files, as LibriLight's FLACs are;
float32 otherwise), or an audio file (a synthesis prompt). Out: float32 mono at 24 kHz in
[-1, 1], what EnCodec encodes; and 16-bit mono 24 kHz wav files of what it decodes.

The pipeline resamples where the audio is encoded (pipeline.encode.codec_worker), so audio
crosses Ray's object store as 16 kHz int16, a third of the bytes of 24 kHz float32. int16 /
32768 is exactly what libsndfile returns when asked for float32 (tests/test_segment.py checks
it), so the codes are those of decoding straight to float32. Synthesis turns its prompt into
codec input here too, so a prompt becomes codes exactly as the corpus's audio did.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

RESAMPLER = f"soxr-{soxr.__version__}-HQ"  # recorded in the audio settings: it shapes the codes


def as_float32(audio: np.ndarray) -> np.ndarray:
    """int16 -> float32 in [-1, 1) the way libsndfile scales it; float input is kept."""
    if audio.dtype == np.int16:
        return audio.astype(np.float32) * np.float32(1 / 32768)  # a power of two: exact
    return audio.astype(np.float32, copy=False)


def resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    """(n,) float32 at `rate` -> float32 at `target` Hz with libsoxr's high-quality filter.

    soxr rather than torchaudio: several times faster, it releases the GIL (so a worker's
    threads resample in parallel), and it keeps torch out of the decoding workers.
    """
    if rate == target:
        return audio
    return soxr.resample(audio, rate, target, quality="HQ").astype(np.float32, copy=False)


def codec_input(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    """A decoded window -> what the codec encodes: float32 mono at its rate, `target` Hz."""
    return resample(as_float32(audio), rate, target)


def read_audio(path: str | Path, target: int) -> np.ndarray:
    """Any soundfile-readable file -> float32 mono at `target` Hz (channels averaged); ValueError
    when it cannot be read."""
    try:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)  # (samples, channels)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise ValueError(f"cannot read audio {path}: {e}") from None
    return np.ascontiguousarray(resample(audio.mean(axis=1), rate, target), dtype=np.float32)


def write_wav(path: Path, wave: np.ndarray, rate: int) -> None:
    """A 16-bit PCM mono wav at `rate` Hz (what players expect; libsndfile writes no timestamp into
    PCM files, so the same samples give the same bytes)."""
    sf.write(path, np.clip(wave, -1.0, 1.0), rate, subtype="PCM_16", format="WAV")
