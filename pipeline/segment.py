"""Segment: decode one long LibriLight recording once and cut every window of it.

In: the cuts of one recording (compact dicts from pipeline.plan), a way to read its FLAC bytes,
duration bounds. Out: 24 kHz float32 waveforms for the kept cuts, and one reject (cut id,
reason, detail) for every cut dropped. Windows that run past the real end of the file by up to
PAST_END_TOLERANCE_S are clamped to what exists (the manifests' num_samples are sometimes
slightly off); further than that, the transcript no longer matches the audio: rejected.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable

import numpy as np
import soundfile as sf
import soxr

TARGET_RATE = 24000
# A window may end this far past the end of its file and be clamped; beyond, it is rejected
# (window_past_end): its transcript covers words the file does not hold.
PAST_END_TOLERANCE_S = 0.5


@dataclass
class Segment:
    cut: dict
    audio: np.ndarray  # (samples,) float32 at 24 kHz
    start: float  # seconds, as cut
    duration: float  # seconds actually present in the file (<= the manifest's)
    clamped: bool


def reject(cut: dict, reason: str, detail: str = "") -> dict:
    return {"cut_id": cut["id"], "reason": reason, "detail": detail}


def segment_recording(cuts: list[dict], read_bytes: Callable[[str], bytes],
                      min_duration: float, max_duration: float) -> tuple[list[Segment], list[dict]]:
    """Decode the recording all `cuts` share and slice each cut's window out of it."""
    audio_path = cuts[0]["audio"]
    try:
        data = read_bytes(audio_path)
    except LookupError as err:
        return [], [reject(c, "missing_audio", str(err)) for c in cuts]
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)  # (n, channels)
    except Exception as err:  # libsndfile reports corrupt files through several error types
        return [], [reject(c, "undecodable_audio", f"{audio_path}: {err}") for c in cuts]

    segments, rejects = [], []
    total = samples.shape[0]
    for cut in cuts:
        channel = cut["channel"] if cut["channel"] < samples.shape[1] else 0
        first = int(round(cut["start"] * rate))
        wanted = int(round((cut["start"] + cut["duration"]) * rate))
        last = min(wanted, total)
        if first >= total or last <= first or wanted - total > PAST_END_TOLERANCE_S * rate:
            rejects.append(reject(cut, "window_past_end",
                                  f"window {cut['start']:.3f}-{cut['start'] + cut['duration']:.3f}s; "
                                  f"{audio_path} lasts {total / rate:.3f}s"))
            continue
        duration = (last - first) / rate
        if duration < min_duration:
            rejects.append(reject(cut, "too_short", f"{duration:.3f}s < {min_duration}s"))
            continue
        if duration > max_duration:
            rejects.append(reject(cut, "too_long", f"{duration:.3f}s > {max_duration}s"))
            continue
        window = np.ascontiguousarray(samples[first:last, channel])
        segments.append(Segment(cut=cut, audio=resample(window, rate), start=cut["start"],
                                duration=round(duration, 6), clamped=last < wanted))
    return segments, rejects


RESAMPLER = f"soxr-{soxr.__version__}-HQ"  # recorded in the audio settings: it shapes the codes


def resample(audio: np.ndarray, rate: int) -> np.ndarray:
    """(n,) float32 at `rate` -> float32 at 24 kHz with libsoxr's high-quality filter.

    soxr rather than torchaudio: several times faster, and it keeps torch out of the decoding
    workers (which then start in a fraction of the time).
    """
    if rate == TARGET_RATE:
        return audio
    return soxr.resample(audio, rate, TARGET_RATE, quality="HQ").astype(np.float32, copy=False)
