"""A tiny Emilia look-alike: tars laid out as Amphion publishes Emilia on Hugging Face.

A test and benchmark helper, not part of the installed package (tests/ and bench/ import it
from the repository).

Out: `write_emilia(folder)` writes `EN-B000000.tar`, `EN-B000001.tar`, ... under `folder`, each
holding per utterance `<id>.json` then `<id>.mp3` (WebDataset: members paired by key), with
ids `EN_B00000_S00000_W000000` and speakers `EN_B00000_S00000`, 24 kHz mono MP3 (libsndfile's
LAME) of one to two seconds of tones; the json is {"id", "wav", "text", "duration", "speaker",
"language", "dnsmos"} as in the real tars. It returns an `EmiliaFiles`: the tar paths and the
truth per utterance (its json, its tar, and its planted defect, if any).

Defects (in the first tar, `defects=True`): one utterance scored below 3 (low_dnsmos), one json
whose mp3 is absent (missing_audio), one json that is not JSON (bad_manifest_line), one mp3
without its json (missing_json). Every byte is deterministic (tar mtime 0, fixed order).
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 24000
LOW_DNSMOS = 2.4  # the planted low-quality utterance; real Emilia scores are ~3 to 3.6
SENTENCES = (
    "The river was quiet in the early morning.",
    "She packed the books into a wooden crate.",
    "Nobody expected the train to arrive on time.",
    "A small dog followed them across the bridge.",
    "We talked about the weather for an hour.",
    "His letter reached the village two weeks later.",
)


@dataclass
class Truth:
    tar: str
    meta: dict  # the utterance's json, as written (unreadable ones: what it would have been)
    defect: str | None = None  # low_dnsmos, missing_audio, bad_manifest_line, missing_json


@dataclass
class EmiliaFiles:
    folder: Path
    tars: dict[str, Path] = field(default_factory=dict)  # tar name -> path
    utterances: dict[str, Truth] = field(default_factory=dict)  # id -> truth

    def kept(self) -> dict[str, Truth]:
        return {uid: t for uid, t in self.utterances.items() if t.defect is None}


def tone(seconds: float, seed: int) -> np.ndarray:
    """float32 mono at 24 kHz: two tones and a little noise, different for every seed."""
    t = np.arange(int(round(seconds * SAMPLE_RATE))) / SAMPLE_RATE
    rng = np.random.default_rng(seed)
    f = 150 + 40 * (seed % 7)
    x = 0.3 * np.sin(2 * np.pi * f * t) + 0.1 * np.sin(2 * np.pi * 3.1 * f * t) + 0.02 * rng.standard_normal(t.size)
    return x.astype(np.float32)


def mp3_bytes(audio: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, SAMPLE_RATE, format="MP3")
    return buffer.getvalue()


def write_emilia(
    folder: Path, tars: int = 2, speakers: int = 2, per_speaker: int = 2, defects: bool = True
) -> EmiliaFiles:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = EmiliaFiles(folder)
    for b in range(tars):
        name = f"EN-B{b:06d}.tar"
        members: list[tuple[str, bytes]] = []
        utterances = [(s, w) for s in range(speakers) for w in range(per_speaker)]
        if defects and b == 0:
            utterances += [(0, per_speaker + k) for k in range(4)]  # the four defects, speaker 0
        for n, (s, w) in enumerate(utterances):
            speaker = f"EN_B{b:05d}_S{s:05d}"
            uid = f"{speaker}_W{w:06d}"
            seconds = round(1.0 + 0.25 * ((b + s + w) % 5), 3)
            defect = None
            if defects and b == 0 and w >= per_speaker:
                defect = ("low_dnsmos", "missing_audio", "bad_manifest_line", "missing_json")[w - per_speaker]
            meta = {
                "id": uid,
                "wav": f"{uid}.mp3",
                "text": SENTENCES[(b * 3 + n) % len(SENTENCES)],
                "duration": seconds,
                "speaker": speaker,
                "language": "en",
                "dnsmos": LOW_DNSMOS if defect == "low_dnsmos" else round(3.1 + 0.05 * n, 4),
            }
            files.utterances[uid] = Truth(name, meta, defect)
            if defect != "missing_json":
                body = json.dumps(meta, ensure_ascii=False).encode()
                members.append((f"{uid}.json", body[: len(body) // 2] if defect == "bad_manifest_line" else body))
            if defect != "missing_audio":
                members.append((f"{uid}.mp3", mp3_bytes(tone(seconds, seed=b * 1000 + n))))
        path = folder / name
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for member, data in members:
                info = tarfile.TarInfo(member)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
        files.tars[name] = path
    return files
