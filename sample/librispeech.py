"""A LibriSpeech test-clean look-alike: `LibriSpeech/test-clean/<speaker>/<chapter>/` with
`<speaker>-<chapter>-<nnnn>.flac` (16 kHz mono) and `<speaker>-<chapter>.trans.txt` (upper case,
no punctuation), packed as test-clean.tar.gz like OpenSLR's, for the evaluation-set tests (the
real 346 MB archive cannot be downloaded here). The speech is the bundled sample's espeak-ng
sentences, cut from sample/audio/small.tar at its manifest's windows."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zlib
from pathlib import Path

import soundfile as sf

from sample.lookalike import asr_text

SAMPLE = Path(__file__).resolve().parent


def sample_utterances() -> list[tuple[str, str, str, bytes]]:
    """(speaker, chapter, transcript, 16 kHz FLAC bytes) of the sample's well-formed small cuts."""
    with tarfile.open(SAMPLE / "audio" / "small.tar") as tar:
        audio = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".flac")}
    out = []
    with gzip.open(SAMPLE / "manifests" / "libriheavy_cuts_small.jsonl.gz", "rt") as lines:
        for line in lines:
            try:
                cut = json.loads(line)
            except json.JSONDecodeError:
                continue  # the sample's planted malformed line
            sup = cut["supervisions"][0]
            text = asr_text(sup["custom"]["texts"][0])
            flac = audio.get(sup["recording_id"] + ".flac")
            if not text or flac is None or cut["duration"] < 1.0:
                continue
            wave, rate = sf.read(io.BytesIO(flac), dtype="int16")
            window = wave[int(cut["start"] * rate) : int((cut["start"] + cut["duration"]) * rate)]
            if len(window) < rate:
                continue  # the planted window past the end of its file
            buf = io.BytesIO()
            sf.write(buf, window, rate, format="FLAC", subtype="PCM_16")
            chapter = str(zlib.crc32(sup["recording_id"].encode()) % 9000 + 1000)
            out.append((sup["speaker"], chapter, text, buf.getvalue()))
    return out


def write_test_clean(folder: Path) -> Path:
    """folder/test-clean.tar.gz; returns its path."""
    by_chapter: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
    for speaker, chapter, text, flac in sample_utterances():
        by_chapter.setdefault((speaker, chapter), []).append((text, flac))
    members: dict[str, bytes] = {}
    for (speaker, chapter), utts in sorted(by_chapter.items()):
        base = f"LibriSpeech/test-clean/{speaker}/{chapter}"
        lines = []
        for n, (text, flac) in enumerate(utts):
            stem = f"{speaker}-{chapter}-{n:04d}"
            members[f"{base}/{stem}.flac"] = flac
            lines.append(f"{stem} {text}\n")
        members[f"{base}/{speaker}-{chapter}.trans.txt"] = "".join(lines).encode()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "test-clean.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
