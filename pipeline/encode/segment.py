"""Segment: decode one long LibriLight recording once and cut every window of it.

In: the cuts of one recording (compact dicts from pipeline.plan.subsets), a way to read its FLAC bytes,
duration bounds. Out: the kept cuts' windows at the file's own rate and sample type (int16 for
16-bit files such as LibriLight's 16 kHz FLACs), and one reject (cut id, reason, detail) for
every cut dropped. Windows that run past the real end of the file by up to PAST_END_TOLERANCE_S
are clamped to what exists (the manifests' num_samples are sometimes slightly off); further than
that, the transcript no longer matches the audio: rejected. Resampling to the codec's 24 kHz
happens where the audio is encoded (tokens.audio), so what travels is a third the size.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import soundfile as sf

# A window may end this far past the end of its file and be clamped; beyond, it is rejected
# (window_past_end): its transcript covers words the file does not hold.
PAST_END_TOLERANCE_S = 0.5


@dataclass
class Segment:
    cut: dict
    audio: np.ndarray  # (samples,) int16 (16-bit files) or float32, at `rate`
    rate: int
    start: float  # seconds, as cut
    duration: float  # seconds actually present in the file (<= the manifest's)
    clamped: bool


def reject(cut: dict, reason: str, detail: str = "") -> dict:
    return {"cut_id": cut["id"], "reason": reason, "detail": detail}


def segment_recording(
    cuts: list[dict], read_bytes: Callable[[str], bytes], min_duration: float, max_duration: float
) -> tuple[list[Segment], list[dict]]:
    """Decode the recording all `cuts` share and slice each cut's window out of it."""
    audio_path = cuts[0]["audio"]
    try:
        data = read_bytes(audio_path)
    except LookupError as err:
        return [], [reject(c, "missing_audio", str(err)) for c in cuts]
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            # 16-bit files decode to int16: half the memory of float32, and exactly as precise.
            dtype = "int16" if f.subtype == "PCM_16" else "float32"
            samples, rate = f.read(dtype=dtype, always_2d=True), f.samplerate  # (n, channels)
    except Exception as err:  # libsndfile reports corrupt files through several error types
        why = re.sub(r"^Error opening <[^>]*>: ", "", str(err))  # no memory address: details stay the same
        detail = f"{audio_path}: {audio_format(audio_path, data)} audio that libsndfile cannot decode: {why}"
        return [], [reject(c, "undecodable_audio", detail) for c in cuts]
    del data  # the compressed bytes are not needed once decoded

    segments, rejects = [], []
    total = samples.shape[0]
    for cut in cuts:
        channel = cut["channel"]
        if channel >= samples.shape[1]:
            rejects.append(reject(cut, "missing_channel", f"channel {channel}; {audio_path} has {samples.shape[1]}"))
            continue
        first = int(round(cut["start"] * rate))
        wanted = int(round((cut["start"] + cut["duration"]) * rate))
        last = min(wanted, total)
        if first >= total or last <= first or wanted - total > PAST_END_TOLERANCE_S * rate:
            rejects.append(
                reject(
                    cut,
                    "window_past_end",
                    f"window {cut['start']:.3f}-{cut['start'] + cut['duration']:.3f}s; "
                    f"{audio_path} lasts {total / rate:.3f}s",
                )
            )
            continue
        duration = (last - first) / rate
        if duration < min_duration:
            rejects.append(reject(cut, "too_short", f"{duration:.3f}s < {min_duration}s"))
            continue
        if duration > max_duration:
            rejects.append(reject(cut, "too_long", f"{duration:.3f}s > {max_duration}s"))
            continue
        window = np.ascontiguousarray(samples[first:last, channel])
        segments.append(
            Segment(
                cut=cut, audio=window, rate=rate, start=cut["start"], duration=round(duration, 6), clamped=last < wanted
            )
        )
    return segments, rejects


# Magic bytes of the formats a manifest may name (the file's name may not say, or may lie).
_MAGIC = (
    (b"fLaC", 0, "FLAC"),
    (b"OggS", 0, "Ogg"),
    (b"ID3", 0, "MP3"),
    (b"ftyp", 4, "MP4/M4A"),
    (b"\x1aE\xdf\xa3", 0, "Matroska/WebM"),
    (b"#!AMR", 0, "AMR"),
    (b"caff", 0, "CAF"),
    (b"FORM", 0, "AIFF"),
)


def audio_format(path: str, data: bytes) -> str:
    """What a file's bytes say it is (its name's extension when they say nothing known), so a
    reject names the format that could not be read."""
    if data[:4] in (b"RIFF", b"RF64") and data[8:12] == b"WAVE":
        codec = int.from_bytes(data[20:22], "little") if len(data) >= 22 else None
        return f"WAV (format tag {codec:#06x})" if codec not in (None, 1, 3) else "WAV"
    for magic, offset, name in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return "Ogg Opus" if name == "Ogg" and b"OpusHead" in data[:64] else name
    if len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0:
        return "MP3" if data[1] & 0x06 else "AAC (ADTS)"
    ext = path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else ""
    return f"unrecognised ({ext} by its name)" if ext else "unrecognised"
