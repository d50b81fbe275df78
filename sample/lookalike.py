"""A small Libriheavy look-alike corpus, laid out exactly like the real downloads.

A test and benchmark helper, not part of the installed package (tests/, bench/ and
sample/make_sample.py import it from the repository).

In:  a list of `Chapter`s (speaker, book folder, file stem, and `Utterance`s = book sentence +
     float32 mono 16 kHz audio), from `synthetic_chapters()` (fast tones, for tests and
     benchmarks) or from any TTS (sample/make_sample.py uses espeak-ng).
Out: `write_corpus()` writes, under `out_dir`,
       audio/<subset>.tar                        LibriLight layout: <subset>/<speaker>/<book_dir>/
                                                 <stem>.flac (the whole chapter) + <stem>.json
       manifests/libriheavy_cuts_<name>.jsonl.gz one lhotse MonoCut per line, real field shapes
     and returns a `CorpusFiles`: those paths plus ground truth per cut (window, text, defect).

The format follows shared/LIBRIHEAVY.md: cut id `<recording_id>_<n>` with n not in time order,
an unrounded float `start`, `duration` floored to milliseconds, one supervision whose texts are
[book text, ASR text], `recording.sources[0].source` under `download/librilight/`, and no
null-valued keys. Every byte is deterministic (tar mtime/uid 0, sorted members, gzip mtime 0 with
no file name, hash-based noise instead of an RNG) so checksums of a built corpus are stable.

Known real-data defects can be switched on one by one with `Defects` (all off by default).
"""

from __future__ import annotations

import gzip
import io
import json
import math
import random
import re
import tarfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000
AUDIO_PREFIX = "download/librilight"
# Added to every cut start so that, as in the real manifests, starts are not round numbers.
START_JITTER = 0.0000018310547
# The past-end defect: the manifest claims this much more audio than the FLAC holds.
PAST_END_SECONDS = 0.25
# The too-short defect: the cut is cut down to this length.
TOO_SHORT_SECONDS = 0.3
# The empty-text defect: NFKC turns these into plain spaces; collapsing whitespace leaves "".
EMPTY_TEXT = " \u00a0\u3000 "
DEFECT_NAMES = ("missing_audio", "past_end", "empty_text", "too_short", "asr_mismatch", "malformed_line")
# The asr_mismatch defect: the ASR heard this instead of the book sentence (a misaligned window).
MISMATCHED_ASR = "AND THEN THE WHOLE COMPANY WENT DOWN TO THE SHORE TO WAIT FOR THE BOAT"


@dataclass
class Utterance:
    text: str  # book sentence, cased and punctuated
    audio: np.ndarray  # float32 mono, 16 kHz, in [-1, 1]
    # texts[1], what a reader says ("DOCTOR" for "Dr."); None: asr_text(text), digits one by one
    spoken: str | None = None


@dataclass
class Chapter:
    subset: str  # audio subset = tar name: small / medium / large
    speaker: str
    book_dir: str
    stem: str
    utterances: list[Utterance]
    book_title: str = ""  # used in the sidecar JSON and custom.text_path; defaults from book_dir

    @property
    def recording_id(self) -> str:
        return f"{self.subset}/{self.speaker}/{self.book_dir}/{self.stem}"


@dataclass(frozen=True)
class Defects:
    """Real-data defects to plant. Each field names the manifest that gets one such cut (None = off).

    missing_audio:  an extra cut, copied from the manifest's first cut, whose recording is moved
                    to another subset (small -> medium/...), so its audio is in no tar we write.
    past_end:       the time-last cut of the manifest's first chapter runs PAST_END_SECONDS past
                    the real end of the FLAC; that recording's num_samples/duration claim the same
                    extra audio (the cut stays inside what the manifest claims).
    empty_text:     one cut's book text becomes EMPTY_TEXT (whitespace that NFKC + collapsing
                    makes empty); its ASR text is kept, as if the book text were lost.
    too_short:      one cut is shortened to TOO_SHORT_SECONDS (texts become its first word).
    asr_mismatch:   one cut's ASR text becomes MISMATCHED_ASR: its book text is not what was said.
    malformed_line: a truncated, non-JSON copy of the first line is inserted as the second line.
    """

    missing_audio: str | None = None
    past_end: str | None = None
    empty_text: str | None = None
    too_short: str | None = None
    asr_mismatch: str | None = None
    malformed_line: str | None = None

    def targets(self) -> dict[str, str]:
        """defect name -> manifest name, for the defects that are on."""
        return {d: getattr(self, d) for d in DEFECT_NAMES if getattr(self, d) is not None}


@dataclass(frozen=True)
class CutTruth:
    """What one manifest line says, and what the audio really holds."""

    cut_id: str
    manifest: str
    recording_id: str
    start: float  # seconds, exactly as written
    duration: float  # seconds, exactly as written
    text: str  # texts[0] as written (book text)
    asr_text: str  # texts[1] as written
    first_sample: int  # round(start * 16000): where the window starts in the chapter FLAC
    available_samples: int  # samples of the window that exist in the FLAC (0: audio missing)
    chapter_index: int  # index into the chapters passed to write_corpus
    utterance_index: int  # index into that chapter's utterances (the audio inside the window)
    defect: str | None = None  # one of DEFECT_NAMES, or None for a clean cut


@dataclass
class CorpusFiles:
    root: Path
    tars: dict[str, Path]  # audio subset -> tar path
    manifests: dict[str, Path]  # manifest name -> jsonl.gz path
    cuts: dict[str, CutTruth]  # cut id -> truth, in manifest file order
    recording_samples: dict[str, int]  # recording id -> samples really in its FLAC
    malformed_lines: dict[str, int] = field(default_factory=dict)  # manifest -> 0-based line no.

    def clean_cuts(self, manifest: str) -> list[CutTruth]:
        return [c for c in self.cuts.values() if c.manifest == manifest and c.defect is None]


# ---------------------------------------------------------------- deterministic helpers


def _hash_uniform(n: int, seed: int) -> np.ndarray:
    """n floats in [-1, 1) from a counter hash: identical on every numpy version, unlike an RNG."""
    with np.errstate(over="ignore"):
        x = np.arange(n, dtype=np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return ((x >> np.uint64(11)).astype(np.float64) / float(1 << 53) * 2.0 - 1.0).astype(np.float32)


def _seed(*parts: object) -> int:
    return zlib.crc32("\x1f".join(map(str, parts)).encode())


def pcm16(audio: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> int16, the way the chapter FLACs store it."""
    return np.clip(np.round(np.asarray(audio, np.float64) * 32767.0), -32768, 32767).astype(np.int16)


def asr_text(text: str) -> str:
    """An ASR-style hypothesis: upper case, no punctuation, digits read one by one."""
    digits = ["ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE"]
    text = re.sub(r"\d", lambda m: f" {digits[int(m.group())]} ", text)
    text = re.sub(r"[^\w\s']|_", " ", text.replace("\u2019", "'"))
    return " ".join(w.strip("'") for w in text.upper().split() if w.strip("'"))


# ---------------------------------------------------------------- synthetic chapters

_SUBJECTS = [
    "The old captain",
    "My sister",
    "A tall stranger",
    "The miller's wife",
    "Young Thomas",
    "The village doctor",
    "Her father",
    "The little dog",
    "Nobody in the house",
]
_VERBS = [
    "walked slowly towards",
    "looked for a long while at",
    "spoke quietly about",
    "had never seen",
    "remembered",
    "ran across",
    "thought often of",
]
_OBJECTS = [
    "the harbour",
    "the narrow bridge",
    "an empty garden",
    "the river at dusk",
    "the letter from London",
    "the stone church",
    "a field of barley",
]
_ENDINGS = [".", ".", "!", "?", ", and said nothing.", ", though it was late."]


def _sentence(rng: random.Random) -> str:
    s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}{rng.choice(_ENDINGS)}"
    if rng.random() < 0.25:  # dialogue, as in novels
        s = f"\u201c{s[:-1]},\u201d she said." if s.endswith(".") else f"\u201c{s}\u201d"
    return s


def _speechlike(seconds: float, f0: float, seed: int) -> np.ndarray:
    """Voiced harmonics with a gliding pitch and a syllable-rate envelope, plus a little breath."""
    n = int(round(seconds * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    phase_jitter = float(_hash_uniform(1, seed)[0])
    pitch = f0 * (1.0 + 0.08 * np.sin(2 * np.pi * 0.7 * t + 3 * phase_jitter))
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 7))
    syllables = 0.5 - 0.5 * np.cos(2 * np.pi * (4.0 + phase_jitter) * t)  # ~4 syllables/s
    edge = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.05)  # 50 ms fade in/out
    audio = 0.25 * voiced * syllables * edge + 0.01 * _hash_uniform(n, seed + 1)
    return audio.astype(np.float32)


def synthetic_chapters(
    n_speakers: int = 3,
    chapters_per_speaker: int = 2,
    utterances_per_chapter: int = 3,
    seconds: tuple[float, float] = (1.0, 2.5),
    seed: int = 0,
    subset: str = "small",
) -> list[Chapter]:
    """Deterministic chapters of tone 'speech' (one pitch per speaker) and simple book sentences."""
    rng = random.Random(seed)
    chapters = []
    for s in range(n_speakers):
        speaker = str(100 + 37 * s + seed)
        f0 = 95.0 + 55.0 * (s % 4)
        for c in range(chapters_per_speaker):
            book_dir = f"Book_{s}__tales-of_the_sea_{c:02d}_librivox_64kb_mp3"
            stem = f"{c + 1:02d}_tales{s}_64kb"
            utts = []
            for u in range(utterances_per_chapter):
                dur = rng.uniform(*seconds)
                utts.append(Utterance(_sentence(rng), _speechlike(dur, f0, _seed(seed, s, c, u))))
            chapters.append(
                Chapter(subset, speaker, book_dir, stem, utts, book_title=f"Tales of the Sea, Book {s} Part {c + 1}")
            )
    return chapters


# ---------------------------------------------------------------- laying out one chapter


@dataclass
class _Layout:
    pcm: np.ndarray  # int16, the whole chapter
    offsets: list[int]  # first sample of each utterance
    lengths: list[int]  # samples of each utterance


def _layout(ch: Chapter) -> _Layout:
    """Utterances joined by 0.3-0.7 s gaps, with ~0.5 s lead-in and tail, over faint room noise."""
    base = _seed(ch.recording_id)
    u = _hash_uniform(len(ch.utterances) + 1, base)
    gaps = [int((0.5 + 0.2 * u[0]) * SAMPLE_RATE)]
    gaps += [int((0.5 + 0.2 * x) * SAMPLE_RATE) for x in u[1:]]  # last one is the tail
    pieces, offsets, lengths, pos = [], [], [], 0
    for gap, utt in zip(gaps, ch.utterances):
        audio = np.asarray(utt.audio, np.float32)
        if audio.ndim != 1 or audio.size == 0:
            raise ValueError(f"{ch.recording_id}: utterance audio must be non-empty mono, got {audio.shape}")
        pieces += [np.zeros(gap, np.float32), audio]
        offsets.append(pos + gap)
        lengths.append(audio.size)
        pos += gap + audio.size
    pieces.append(np.zeros(gaps[-1], np.float32))
    chapter = np.concatenate(pieces)
    noise = 0.0004 * _hash_uniform(chapter.size, base + 1)  # about +-13 LSB, as in a quiet room
    mask = np.ones(chapter.size, bool)
    for o, n in zip(offsets, lengths):  # keep utterance samples exact so slices compare cleanly
        mask[o : o + n] = False
    chapter[mask] += noise[mask]
    return _Layout(pcm16(chapter), offsets, lengths)


def _flac_bytes(pcm: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, pcm, SAMPLE_RATE, format="FLAC", subtype="PCM_16", compression_level=1.0)  # -8
    return buf.getvalue()


def _sidecar(ch: Chapter, lay: _Layout) -> bytes:
    """The LibriLight per-chapter JSON: speaker, book metadata, SNR, voice-activity spans."""
    title = ch.book_title or ch.book_dir.replace("_", " ").strip()
    speech = np.concatenate([lay.pcm[o : o + n] for o, n in zip(lay.offsets, lay.lengths)])
    mask = np.ones(lay.pcm.size, bool)
    for o, n in zip(lay.offsets, lay.lengths):
        mask[o : o + n] = False
    p_speech = float(np.mean(speech.astype(np.float64) ** 2))
    p_noise = float(np.mean(lay.pcm[mask].astype(np.float64) ** 2)) or 1.0
    meta = {
        "speaker": ch.speaker,
        "book_meta": {
            "id": str(_seed(ch.book_dir) % 20000),
            "title": title,
            "description": f"A LibriVox recording of {title}.",
            "url_text_source": f"http://www.gutenberg.org/etext/{_seed(title) % 60000}",
            "language": "English",
            "authors": [{"name": "Anonymous"}],
            "genre": ["Fiction"],
        },
        "snr": round(10 * math.log10(p_speech / p_noise), 4),
        "voice_activity": [
            [round(o / SAMPLE_RATE, 2), round((o + n) / SAMPLE_RATE, 2)] for o, n in zip(lay.offsets, lay.lengths)
        ],
    }
    return (json.dumps(meta, indent=2) + "\n").encode()


def _write_tar(path: Path, members: dict[str, bytes]) -> None:
    """Plain uncompressed tar, directories included, sorted, with fixed owner and mtime."""
    dirs = {str(Path(name).parents[i]) for name in members for i in range(len(Path(name).parts) - 1)}
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(dirs | set(members)):
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if name in members:
                info.mode, info.size = 0o644, len(members[name])
                tar.addfile(info, io.BytesIO(members[name]))
            else:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)


def _write_jsonl_gz(path: Path, lines: list[str]) -> None:
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write("".join(line + "\n" for line in lines).encode())


# ---------------------------------------------------------------- manifests


def _floor_ms(samples: int) -> float:
    return math.floor(samples * 1000 / SAMPLE_RATE) / 1000


def _permutation(m: int, key: str) -> list[int]:
    """Fixed, never-identity (for m > 1) order in which the 'aligner' numbered a chapter's cuts."""
    order = list(range(m))
    random.Random(_seed(key)).shuffle(order)
    if m > 1 and order == sorted(order):
        order = order[1:] + order[:1]
    return order  # order[i] = n of the utterance i


def manifest_line(
    cut_id: str,
    rec_id: str,
    speaker: str,
    start: float,
    duration: float,
    texts: list[str],
    pre_texts: list[str],
    begin: int,
    num_samples: int,
    source: str,
    text_path: str,
) -> dict:
    """One Libriheavy manifest line (a lhotse MonoCut with its keys in the real files' order):
    texts = [book, ASR], pre_texts the texts before it, begin its byte offset in the book."""
    return {
        "id": cut_id,
        "start": start,
        "duration": duration,
        "channel": 0,
        "supervisions": [
            {
                "id": cut_id,
                "recording_id": rec_id,
                "start": 0,
                "duration": duration,
                "channel": 0,
                "language": "English",
                "speaker": speaker,
                "custom": {
                    "texts": texts,
                    "pre_texts": pre_texts,
                    "begin_byte": begin,
                    "end_byte": begin + len(texts[0]),
                },
            }
        ],
        "recording": {
            "id": rec_id,
            "sources": [{"type": "file", "channels": [0], "source": source}],
            "sampling_rate": SAMPLE_RATE,
            "num_samples": num_samples,
            "duration": num_samples / SAMPLE_RATE,
            "channel_ids": [0],
        },
        "custom": {"text_path": text_path},
        "type": "MonoCut",
    }


def _text_path(ch: Chapter) -> str:
    return f"download/librilight_text/output_text_{ch.subset}_cleaned/{ch.book_title or ch.book_dir}/text.txt"


def _chapter_cuts(ci: int, ch: Chapter, lay: _Layout, manifest: str) -> list[tuple[dict, CutTruth]]:
    """Clean cuts of one chapter, ordered by their number n (which is not time order)."""
    rec_id = ch.recording_id
    perm = _permutation(len(ch.utterances), rec_id)
    book_so_far, asr_so_far, out = "", "", []
    for ui, utt in enumerate(ch.utterances):
        texts = [utt.text, utt.spoken or asr_text(utt.text)]
        cut_id = f"{rec_id}_{perm[ui]}"
        start = lay.offsets[ui] / SAMPLE_RATE + START_JITTER
        duration = _floor_ms(lay.lengths[ui])
        pre_texts = [book_so_far[-1000:].rstrip(), asr_so_far[-1000:].rstrip()]
        source = f"{AUDIO_PREFIX}/{rec_id}.flac"
        d = manifest_line(
            cut_id,
            rec_id,
            ch.speaker,
            start,
            duration,
            texts,
            pre_texts,
            len(book_so_far),
            lay.pcm.size,
            source,
            _text_path(ch),
        )
        truth = CutTruth(
            cut_id,
            manifest,
            rec_id,
            start,
            duration,
            texts[0],
            texts[1],
            lay.offsets[ui],
            round(duration * SAMPLE_RATE),
            ci,
            ui,
        )
        out.append((d, truth))
        book_so_far += utt.text + " "
        asr_so_far += texts[1] + " "
    out.sort(key=lambda pair: perm[pair[1].utterance_index])
    return out


def _set_duration(d: dict, duration: float) -> None:
    d["duration"] = d["supervisions"][0]["duration"] = duration


def _plant(defect: str, rows: list[list], lays: list[_Layout], claimed: dict[str, int]) -> None:
    """Turn one clean row [dict, truth] of a manifest into the given defect (in place)."""
    free = [r for r in rows if r[1].defect is None]
    if not free:
        raise ValueError(f"no clean cut left to plant defect {defect!r}: add utterances")
    if defect == "past_end":
        ci = free[0][1].chapter_index
        row = max((r for r in free if r[1].chapter_index == ci), key=lambda r: r[1].first_sample)
        d, t = row
        real = lays[ci].pcm.size
        claim = real + int(PAST_END_SECONDS * SAMPLE_RATE)
        claimed[t.recording_id] = claim
        duration = _floor_ms(claim - t.first_sample - 16)  # 1 ms inside the claimed end
        _set_duration(d, duration)
        row[1] = replace(t, duration=duration, available_samples=real - t.first_sample, defect=defect)
    elif defect == "empty_text":
        d, t = free[0]
        d["supervisions"][0]["custom"]["texts"][0] = EMPTY_TEXT
        free[0][1] = replace(t, text=EMPTY_TEXT, defect=defect)
    elif defect == "too_short":
        d, t = free[0]
        duration = _floor_ms(int(TOO_SHORT_SECONDS * SAMPLE_RATE))
        texts = [t.text.split()[0], t.asr_text.split()[0]]
        _set_duration(d, duration)
        d["supervisions"][0]["custom"]["texts"] = texts
        free[0][1] = replace(
            t,
            duration=duration,
            text=texts[0],
            asr_text=texts[1],
            available_samples=round(duration * SAMPLE_RATE),
            defect=defect,
        )
    elif defect == "asr_mismatch":
        d, t = free[0]
        d["supervisions"][0]["custom"]["texts"][1] = MISMATCHED_ASR
        free[0][1] = replace(t, asr_text=MISMATCHED_ASR, defect=defect)
    elif defect == "missing_audio":
        d, t = json.loads(json.dumps(rows[0][0])), rows[0][1]
        subset = t.recording_id.split("/", 1)[0]
        other = "medium" if subset != "medium" else "large"
        rec_id = other + t.recording_id[len(subset) :]
        n = t.cut_id.rsplit("_", 1)[1]
        cut_id = f"{rec_id}_{n}"
        d["id"] = d["supervisions"][0]["id"] = cut_id
        d["supervisions"][0]["recording_id"] = d["recording"]["id"] = rec_id
        d["recording"]["sources"][0]["source"] = f"{AUDIO_PREFIX}/{rec_id}.flac"
        rows.append([d, replace(t, cut_id=cut_id, recording_id=rec_id, available_samples=0, defect=defect)])
    else:
        raise ValueError(f"unknown defect {defect!r}; known: {DEFECT_NAMES}")


# ---------------------------------------------------------------- the builder


def write_corpus(
    chapters: list[Chapter],
    out_dir: Path,
    *,
    manifest_subsets: dict[str, list[str]] | None = None,
    defects: Defects = Defects(),
) -> CorpusFiles:
    """Write audio tars and cut manifests for `chapters` under `out_dir`; return paths + truth.

    manifest_subsets: manifest name -> recording ids whose cuts it holds (a `dev` manifest may
    point into small.tar). Default: one manifest per audio subset with all of its chapters.
    """
    out_dir = Path(out_dir)
    ids = [ch.recording_id for ch in chapters]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate recording ids among chapters: {sorted(ids)}")
    if manifest_subsets is None:
        manifest_subsets = {}
        for ch in chapters:
            manifest_subsets.setdefault(ch.subset, []).append(ch.recording_id)
    for name, rec_ids in manifest_subsets.items():
        unknown = sorted(set(rec_ids) - set(ids))
        if unknown:
            raise ValueError(f"manifest {name!r} lists recordings not among the chapters: {unknown}")
    for defect, name in defects.targets().items():
        if name not in manifest_subsets:
            raise ValueError(f"defect {defect!r} targets manifest {name!r}; manifests are {sorted(manifest_subsets)}")

    lays = [_layout(ch) for ch in chapters]

    # Audio: one tar per subset, a FLAC and a sidecar JSON per chapter.
    (out_dir / "audio").mkdir(parents=True, exist_ok=True)
    members: dict[str, dict[str, bytes]] = {}
    for ch, lay in zip(chapters, lays):
        m = members.setdefault(ch.subset, {})
        m[f"{ch.recording_id}.flac"] = _flac_bytes(lay.pcm)
        m[f"{ch.recording_id}.json"] = _sidecar(ch, lay)
    tars = {}
    for subset, m in sorted(members.items()):
        tars[subset] = out_dir / "audio" / f"{subset}.tar"
        _write_tar(tars[subset], m)

    # Manifests: clean cuts chapter by chapter, then the requested defects.
    (out_dir / "manifests").mkdir(parents=True, exist_ok=True)
    index = {rid: i for i, rid in enumerate(ids)}
    manifests, cuts, malformed = {}, {}, {}
    targets = defects.targets()
    for name, rec_ids in manifest_subsets.items():
        rows = [
            list(pair)
            for rid in rec_ids
            for pair in _chapter_cuts(index[rid], chapters[index[rid]], lays[index[rid]], name)
        ]
        claimed: dict[str, int] = {}
        # Order matters: missing_audio copies a still-clean first cut, and past_end claims the
        # chapter's last cut before empty_text/too_short/asr_mismatch take the first free ones.
        for defect in DEFECT_NAMES[:-1]:
            if targets.get(defect) == name:
                _plant(defect, rows, lays, claimed)
        for d, _ in rows:  # the past-end recording claims more samples in every cut of it
            if d["recording"]["id"] in claimed:
                d["recording"]["num_samples"] = claimed[d["recording"]["id"]]
                d["recording"]["duration"] = claimed[d["recording"]["id"]] / SAMPLE_RATE
        lines = [json.dumps(d) for d, _ in rows]
        if targets.get("malformed_line") == name:
            lines.insert(1, lines[0][: len(lines[0]) // 2])  # a truncated write
            malformed[name] = 1
        manifests[name] = out_dir / "manifests" / f"libriheavy_cuts_{name}.jsonl.gz"
        _write_jsonl_gz(manifests[name], lines)
        for _, t in rows:
            if t.cut_id in cuts:
                raise ValueError(f"cut {t.cut_id} would appear in two manifests; give each recording to one manifest")
            cuts[t.cut_id] = t
    return CorpusFiles(out_dir, tars, manifests, cuts, {rid: lay.pcm.size for rid, lay in zip(ids, lays)}, malformed)
