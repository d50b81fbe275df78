"""Build the bundled lhotse sample: espeak-ng speech in lhotse's own recipe output format.

Run once (its output is committed):   python sample/make_lhotse_sample.py
In:  the sentences below, spoken by espeak-ng (4 voices) through sox (sample/make_sample.py's
     `speak`), at 16 or 22.05 kHz.
Out: sample/lhotse/audio/<speaker>/<recording>.{flac,wav,mp3},
     sample/lhotse/manifests/lookalike_{recordings,supervisions}_{train,dev,test}.jsonl.gz (written
     by lhotse's own RecordingSet/SupervisionSet.to_file, as `lhotse prepare <recipe>` writes
     them, audio paths relative to sample/lhotse) and sample/lhotse/SHA256SUMS.

Each supervision's `text` is what was said, spelled out ("Doctor", "twelve"), and its
custom `orig_text` the written sentence ("Dr.", "12"), as lhotse's LibriTTS recipes keep them.
Parts: `train` and `dev` share three voices; `test` is a fourth voice heard in no other part.
What else is in it (see sample/README.md): 16 kHz FLAC, 22.05 kHz WAV and FLAC, one 22.05 kHz
MP3, one stereo FLAC whose supervision is on channel 1 (channel 0 holds only faint noise), one
long recording with three supervisions, and one recording whose file does not exist (bad path).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from lhotse import Recording, RecordingSet, SupervisionSegment, SupervisionSet, validate_recordings_and_supervisions

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the repository root: the generator is not installed

from sample.lookalike import SAMPLE_RATE, Chapter, Utterance, _hash_uniform, _layout, _seed, pcm16  # noqa: E402
from sample.make_sample import speak  # noqa: E402

PREFIX = "lookalike"
PARTS = ("train", "dev", "test")
LANGUAGE = "English"

# speaker id -> espeak-ng voice, words per minute, pitch (0-99), gender
VOICES = {
    "1580": ("en-us", 170, 45, "M"),
    "2961": ("en-gb+f3", 165, 60, "F"),
    "4446": ("en+m3", 160, 35, "M"),
    "6829": ("en-gb-scotland+f2", 165, 70, "F"),  # test only: a held-out voice
}


@dataclass(frozen=True)
class Rec:
    """One recording: part, id, speaker, rate, how it is stored, and its sentences as written.

    layout: "single" (the file is the utterance, as in LibriTTS), "long" (one file, the
    utterances with gaps between, one supervision each), "stereo" (the utterance on channel 1,
    faint noise on channel 0) or "missing" (a manifest entry whose file is not there: bad path).
    """

    part: str
    rec_id: str  # <speaker>_<number>
    rate: int
    fmt: str  # flac | wav | mp3
    written: tuple[str, ...]  # custom orig_text; what espeak-ng reads
    layout: str = "single"

    @property
    def speaker(self) -> str:
        return self.rec_id.split("_")[0]


# Written sentence -> what is said, spelled out (the supervision's text); other sentences are said
# as written.
SAID = {
    "Dr. Hale counted 12 gulls on the rail.": "Doctor Hale counted twelve gulls on the rail.",
    "Mr. Price owned the shop on Mill St.": "Mister Price owned the shop on Mill Street.",
    "The bridge was built in 1890.": "The bridge was built in eighteen ninety.",
    "St. Anne's bells rang 9 times.": "Saint Anne's bells rang nine times.",
}

LONG = (
    "The bridge was built in 1890.",
    "Its stones came from the quarry on the hill.",
    "Today, only the children use it.",
)
RECORDINGS = [
    Rec("train", "1580_0001", 16000, "flac", ("The ferry left the harbour before dawn.",)),
    Rec("train", "1580_0002", 16000, "flac", ("Dr. Hale counted 12 gulls on the rail.",)),
    Rec("train", "1580_0003", 22050, "mp3", ("A cold wind pushed the grey clouds east.",)),
    Rec("train", "1580_0004", 16000, "flac", ("Nobody on board had slept very well.",), "missing"),
    Rec("train", "2961_0001", 22050, "wav", ("She kept her letters in a tin box.",)),
    Rec("train", "2961_0002", 22050, "wav", ("Mr. Price owned the shop on Mill St.",)),
    Rec("train", "2961_0003", 22050, "flac", ("The kettle sang while the rain fell.",), "stereo"),
    Rec("train", "4446_0001", 22050, "flac", ("We walked along the canal until noon.",)),
    Rec("train", "4446_0100", 16000, "flac", LONG, "long"),
    Rec("dev", "1580_0005", 16000, "flac", ("The captain smiled and rang the bell.",)),
    Rec("dev", "2961_0004", 22050, "wav", ("Her brother never answered the door.",)),
    Rec("dev", "4446_0002", 22050, "flac", ("The lamps were lit at half past six.",)),
    # test: a voice heard in no other part
    Rec("test", "6829_0001", 16000, "flac", ("The garden gate creaked in the wind.",)),
    Rec("test", "6829_0002", 16000, "flac", ("St. Anne's bells rang 9 times.",)),
    Rec("test", "6829_0003", 22050, "flac", ("We will meet again by the river.",)),
]


def _write_audio(path: Path, audio: np.ndarray, rate: int, fmt: str) -> None:
    """int16 samples (frames x channels, or mono) to FLAC (level 8), 16-bit WAV or MP3."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "flac":
        sf.write(path, audio, rate, format="FLAC", subtype="PCM_16", compression_level=1.0)
    elif fmt == "wav":
        sf.write(path, audio, rate, format="WAV", subtype="PCM_16")
    elif fmt == "mp3":
        sf.write(path, audio, rate, format="MP3")
    else:
        raise ValueError(f"unknown audio format {fmt!r}")


def _recording(rec: Rec, root: Path, tmp: Path):
    """Synthesize and write `rec` under root (or, for a bad path, under tmp only); return its
    lhotse Recording (read back from the file, path relative to root) and supervisions."""
    voice, wpm, pitch, gender = VOICES[rec.speaker]
    speech = [speak(text, voice, wpm, pitch, tmp, rate=rec.rate) for text in rec.written]
    rel = Path("audio", rec.speaker, f"{rec.rec_id}.{rec.fmt}")
    spans = [(0, speech[0].size)]  # (first sample, samples) of each utterance
    channel = 0
    if rec.layout == "long":
        if rec.rate != SAMPLE_RATE:
            raise ValueError(f"{rec.rec_id}: a long recording is laid out at {SAMPLE_RATE} Hz")
        utts = [Utterance(text, a) for text, a in zip(rec.written, speech)]
        lay = _layout(Chapter(rec.part, rec.speaker, "long", rec.rec_id, utts))
        audio, spans = lay.pcm, list(zip(lay.offsets, lay.lengths))
    elif rec.layout == "stereo":
        noise = pcm16(0.0004 * _hash_uniform(speech[0].size, _seed(rec.rec_id)))
        audio, channel = np.stack([noise, pcm16(speech[0])], axis=1), 1
    else:
        audio = pcm16(speech[0])
    path = (tmp if rec.layout == "missing" else root) / rel
    _write_audio(path, audio, rec.rate, rec.fmt)
    recording = Recording.from_file(path, recording_id=rec.rec_id, relative_path_depth=len(rel.parts))
    sups = []
    for i, (orig, (first, n)) in enumerate(zip(rec.written, spans)):
        single = len(rec.written) == 1
        sups.append(
            SupervisionSegment(
                id=rec.rec_id if single else f"{rec.rec_id}_{i}",
                recording_id=rec.rec_id,
                start=0.0 if single else first / rec.rate,
                duration=recording.duration if single else n / rec.rate,
                channel=channel,
                text=SAID.get(orig, orig),
                language=LANGUAGE,
                speaker=rec.speaker,
                gender=gender,
                custom={"orig_text": orig},
            )
        )
    return recording, sups


def _zero_gzip_mtime(path: Path) -> None:
    """lhotse's writer stamps the gzip header with the current time; 0 makes the bytes repeatable."""
    data = bytearray(path.read_bytes())
    if data[:3] != b"\x1f\x8b\x08":
        raise ValueError(f"{path}: not a gzip file")
    data[4:8] = b"\0\0\0\0"
    path.write_bytes(bytes(data))
    with gzip.open(path) as f:  # still a valid gzip stream
        f.read()


def build(out_dir: Path) -> dict[str, str]:
    """Synthesize, write audio, manifests and SHA256SUMS under out_dir; return {relative path: sha256}."""
    out_dir = Path(out_dir)
    by_part: dict[str, tuple[list, list]] = {part: ([], []) for part in PARTS}
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        for rec in RECORDINGS:
            recording, sups = _recording(rec, out_dir, Path(tmp))
            by_part[rec.part][0].append(recording)
            by_part[rec.part][1].extend(sups)
            if rec.layout != "missing":
                written.append(out_dir / recording.sources[0].source)
    (out_dir / "manifests").mkdir(parents=True, exist_ok=True)
    for part, (recordings, sups) in by_part.items():
        recs, sups = RecordingSet.from_recordings(recordings), SupervisionSet.from_segments(sups)
        validate_recordings_and_supervisions(recs, sups)  # as the recipes do before writing
        for name, manifest in (("recordings", recs), ("supervisions", sups)):
            path = out_dir / "manifests" / f"{PREFIX}_{name}_{part}.jsonl.gz"
            manifest.to_file(path)
            _zero_gzip_mtime(path)
            written.append(path)
    sums = {p.relative_to(out_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in written}
    (out_dir / "SHA256SUMS").write_text("".join(f"{h}  {p}\n" for p, h in sums.items()))
    return sums


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "lhotse", help="output folder (default: sample/lhotse/)")
    for path, digest in build(ap.parse_args().out).items():
        print(f"{digest}  {path}")


if __name__ == "__main__":
    main()
