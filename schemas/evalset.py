"""Evaluation sets (evalset v1): held-out utterances with their ground-truth audio, text and codes.

Made once by `valle-prep evalset` (from a built corpus's subset, or from LibriSpeech test-clean)
and read by `valle-eval` and the training-time evaluation. A folder:

    evalset.json      written last (it marks a finished set): {"schema": "valle-corpus/evalset.v1",
                      "name", "source" (where the utterances came from; for a corpus's subset,
                      whether training saw them: pipeline.evalsets.held_out; its optional "reference":
                      {"field": what the references are, e.g. "asr transcript (texts[1])",
                      "LibriSpeech transcript" or "text" (the utterance's text: a lhotse or
                      Emilia corpus's), "fallbacks": how many utterances lacked it and hold
                      their text instead}; a set without it holds its text), "selection" (the
                      rules that chose them), "provenance" (codec, BPE and text settings, as
                      index.json's: the codes and tokens mean what the corpus's mean), "utterances",
                      "speakers"}
    utterances.jsonl  one utterance a line, sorted by id:
                      {"id", "speaker", "text" (normalized, what the models read), "reference"
                       (the transcript WER is scored against: source.reference says which),
                       "text_tokens" [BPE ids of text],
                       "duration" (s), "audio": "audio/<n>.wav", "codes": "codes/<n>.npy",
                       "prompt_id": the previous utterance of the same speaker (the cross-sentence
                       prompt, the first taking the last), or null when the speaker has only one}
    bpe.model         the corpus's SentencePiece model (provenance.bpe.model names it): the set
                      tokenizes prompt and text as the corpus did, without the corpus at hand
    audio/<n>.wav     the ground truth, mono 16-bit at the codec's sample rate (provenance.codec's
                      sample_rate, 24 kHz for every codec here: the rate the codec and models work at)
    codes/<n>.npy     its (codebooks, frames) uint16 codes (schemas.codes), made by the corpus's codec

Paths in utterances.jsonl are relative and must stay inside the folder; codes never unpickle.
Reading a set checks its structure (meta, every line); `check()` also opens each utterance's files
(headers only: cheap) so that a broken set stops a run before any model loads.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import numpy.lib.format as fmt
import soundfile as sf

from schemas.codes import DEFAULT_SPACE, CodesSpace, codes_from_npy, codes_to_npy
from schemas.contract import SchemaError
from storage.files import write_bytes_atomic, write_json_atomic

EVALSET_SCHEMA = "valle-corpus/evalset.v1"
# source.warning of a set whose subset training read (pipeline.evalsets.held_out), and what readers
# say of a set marked trained_on without one
TRAINED_ON = "this set's utterances were in the training data: scores are not held-out"
META, UTTERANCES, BPE_MODEL = "evalset.json", "utterances.jsonl", "bpe.model"
_META_FIELDS = ("name", "source", "selection", "provenance")
_PROVENANCE_KEYS = {"codec": ("model", "bandwidth_kbps", "codebooks", "weights_sha256"), "bpe": ("sha256",)}
_FIELDS = {"id", "speaker", "text", "reference", "text_tokens", "duration", "audio", "codes", "prompt_id"}


@dataclass(frozen=True)
class Utterance:
    id: str
    speaker: str
    text: str
    reference: str
    text_tokens: tuple[int, ...]
    duration: float
    audio: str
    codes: str
    prompt_id: str | None


class EvalSet:
    """A finished evaluation set, read: `meta`, `utterances` (sorted by id), and each one's audio
    and codes on demand."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        meta_path = self.folder / META
        try:
            self.meta = json.loads(meta_path.read_text())
        except FileNotFoundError:
            raise SchemaError(
                f"{self.folder} is not a finished evaluation set (no {META}); make one with valle-prep evalset"
            ) from None
        except json.JSONDecodeError as e:
            raise SchemaError(f"{meta_path}: not JSON ({e})") from None
        if self.meta.get("schema") != EVALSET_SCHEMA:
            raise SchemaError(f"{meta_path}: schema {self.meta.get('schema')!r}, this version reads {EVALSET_SCHEMA}")
        _check_meta(self.meta, meta_path)
        self.reference = _reference(self.meta, meta_path)
        self.utterances = [self._utterance(n, line) for n, line in enumerate(self._lines(), 1)]
        self.by_id = {u.id: u for u in self.utterances}
        if len(self.by_id) != len(self.utterances) or len(self.utterances) != self.meta.get("utterances"):
            raise SchemaError(f"{self.folder / UTTERANCES}: duplicate ids, or not the {META} count")
        for u in self.utterances:
            if u.prompt_id is not None and (u.prompt_id not in self.by_id or u.prompt_id == u.id):
                raise SchemaError(
                    f"{self.folder / UTTERANCES}: {u.id}'s prompt_id {u.prompt_id!r} is not another utterance"
                )

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def provenance(self) -> dict:
        return self.meta["provenance"]

    @property
    def space(self) -> CodesSpace:
        """The codec of the set's codes and audio (its sample rate), as its provenance records it."""
        return CodesSpace.of_record(self.provenance["codec"])

    @property
    def bpe_model(self) -> Path:
        return self.folder / BPE_MODEL

    def _lines(self):
        try:
            f = open(self.folder / UTTERANCES, encoding="utf-8")
        except FileNotFoundError:
            raise SchemaError(
                f"{self.folder / UTTERANCES} is missing: the set is incomplete; make it again with valle-prep evalset"
            ) from None
        with f:
            yield from (line for line in f if line.strip())

    def _utterance(self, n: int, line: str) -> Utterance:
        where = f"{self.folder / UTTERANCES}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SchemaError(f"{where}: not JSON ({e})") from None
        if not isinstance(row, dict) or set(row) != _FIELDS:
            raise SchemaError(f"{where}: fields must be {sorted(_FIELDS)}")
        for key in ("audio", "codes"):
            path = PurePosixPath(row[key])
            if path.is_absolute() or ".." in path.parts:
                raise SchemaError(f"{where}: {key} path {row[key]!r} leaves the set's folder")
        tokens = row["text_tokens"]
        if not isinstance(tokens, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in tokens
        ):
            raise SchemaError(f"{where}: text_tokens must be a list of BPE ids (integers >= 0)")
        if not isinstance(row["text"], str) or not isinstance(row["reference"], str):
            raise SchemaError(f"{where}: text and reference must be strings")
        return Utterance(**{**row, "text_tokens": tuple(tokens)})

    def check(self) -> None:
        """Every utterance's files are there and readable: its audio a mono wav at the codec's
        sample rate, its codes a 2-D uint16 .npy of the set's codebooks (headers only, nothing
        decoded). Raises SchemaError naming the first broken file."""
        codebooks = self.provenance["codec"]["codebooks"]
        for u in self.utterances:
            _check_wav(self.folder / u.audio, self.space.sample_rate)
            _check_npy_header(self.folder / u.codes, codebooks)

    def first(self, n: int | None) -> list[Utterance]:
        """n utterances spread over the speakers (`spread_over_speakers`), in id order; all of
        them when n is None."""
        if n is None or n >= len(self.utterances):
            return list(self.utterances)
        keep = set(spread_over_speakers((u.id, u.speaker) for u in self.utterances)[:n])
        return [u for u in self.utterances if u.id in keep]

    def audio(self, u: Utterance) -> np.ndarray:
        """float32 mono ground truth at the codec's sample rate."""
        wave, rate = sf.read(self.folder / u.audio, dtype="float32")
        if rate != self.space.sample_rate or wave.ndim != 1:
            raise SchemaError(
                f"{self.folder / u.audio}: expected mono {self.space.sample_rate} Hz, got {rate} Hz {wave.shape}"
            )
        return wave

    def codes(self, u: Utterance) -> np.ndarray:
        """(codebooks, frames) uint16, values < the codec's codebook size."""
        path = self.folder / u.codes
        return codes_from_npy(path.read_bytes(), str(path), self.space.codebook_size)


_REMAKE = "make the set again with valle-prep evalset"


def _check_meta(meta: dict, where: Path) -> None:
    missing = [k for k in _META_FIELDS if not isinstance(meta.get(k), dict) and k != "name"]
    if not isinstance(meta.get("name"), str):
        missing.insert(0, "name")
    if missing:
        raise SchemaError(f"{where}: {', '.join(missing)} missing or not an object; {_REMAKE}")
    provenance = meta["provenance"]
    for section, keys in _PROVENANCE_KEYS.items():
        if not isinstance(provenance.get(section), dict) or any(k not in provenance[section] for k in keys):
            raise SchemaError(f"{where}: provenance.{section} must hold {', '.join(keys)}; {_REMAKE}")
    if not isinstance(provenance.get("text"), dict) or "normalization" not in provenance["text"]:
        raise SchemaError(f"{where}: provenance.text must hold normalization; {_REMAKE}")
    _check_held_out(meta["source"], where)


def _check_held_out(source: dict, where: Path) -> None:
    """source's trained_on / training_speakers / warning (absent in older sets), as valle-prep writes them."""
    kinds = {"trained_on": bool, "training_speakers": int, "warning": str}
    for key, kind in kinds.items():
        if key in source and not isinstance(source[key], kind):
            raise SchemaError(f"{where}: source.{key} must be a {kind.__name__}, got {source[key]!r}; {_REMAKE}")


def _reference(meta: dict, where: Path) -> dict:
    """source.reference, {"field", "fallbacks"}: what the utterances' references are. A set that
    does not say holds its text there (LibriSpeech sets: their transcript)."""
    ref = meta["source"].get("reference")
    if ref is None:
        librispeech = meta["source"].get("kind") == "librispeech"
        return {"field": "LibriSpeech transcript" if librispeech else "the set's text", "fallbacks": 0}
    if not isinstance(ref, dict) or not isinstance(ref.get("field"), str) or not isinstance(ref.get("fallbacks"), int):
        raise SchemaError(f"{where}: source.reference must hold field (a text) and fallbacks (a count); {_REMAKE}")
    return ref


def _check_wav(path: Path, sample_rate: int) -> None:
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise SchemaError(f"{path}: not a readable wav ({e}); {_REMAKE}") from None
    if info.samplerate != sample_rate or info.channels != 1:
        raise SchemaError(f"{path}: expected mono {sample_rate} Hz, got {info.channels} ch {info.samplerate} Hz")


def _check_npy_header(path: Path, codebooks: int) -> None:
    try:
        with open(path, "rb") as f:
            read_header = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
            shape, _, dtype = read_header[fmt.read_magic(f)](f, max_header_size=4096)
    except FileNotFoundError:
        raise SchemaError(f"{path} is missing; {_REMAKE}") from None
    except (ValueError, OSError, KeyError) as e:
        raise SchemaError(f"{path}: not a readable .npy ({e}); {_REMAKE}") from None
    if dtype != np.uint16 or len(shape) != 2 or shape[0] != codebooks:
        raise SchemaError(f"{path}: expected ({codebooks}, frames) uint16 codes, got {shape} {dtype}; {_REMAKE}")


class EvalSetWriter:
    """Writes a set: `add` each utterance (any order), then `finish`. A set that was not finished
    has no evalset.json and is not read; writing again starts it over. `space`: the corpus's codec
    (audio written at its sample rate, codes checked against its codebook size)."""

    def __init__(self, folder: str | Path, space: CodesSpace = DEFAULT_SPACE):
        self.folder, self.space = Path(folder), space
        (self.folder / META).unlink(missing_ok=True)
        for sub in ("audio", "codes"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        self.rows: list[dict] = []

    def add(self, *, id: str, speaker: str, text: str, reference: str, text_tokens, audio: np.ndarray, codes) -> None:
        if reason := unusable_text(text, reference):
            raise SchemaError(
                f"{self.folder}: utterance {id}: {reason}; a set holds only utterances that can be scored"
            )
        n = f"{len(self.rows):06d}"
        wav, npy = f"audio/{n}.wav", f"codes/{n}.npy"
        sf.write(self.folder / wav, np.clip(audio, -1, 1), self.space.sample_rate, subtype="PCM_16")
        write_bytes_atomic(self.folder / npy, codes_to_npy(codes, self.space.codebook_size))
        self.rows.append(
            {
                "id": id,
                "speaker": str(speaker),
                "text": text,
                "reference": reference,
                "text_tokens": [int(t) for t in text_tokens],
                "duration": round(len(audio) / self.space.sample_rate, 6),
                "audio": wav,
                "codes": npy,
                "prompt_id": None,
            }
        )

    def finish(self, *, name: str, source: dict, selection: dict, provenance: dict, bpe_model: bytes) -> Path:
        """Pair cross-sentence prompts, write bpe.model and utterances.jsonl, then evalset.json."""
        rows = sorted(self.rows, key=lambda r: r["id"])
        if not rows:
            raise SchemaError(f"{self.folder}: no utterance was selected; nothing to write")
        pair_prompts(rows)
        write_bytes_atomic(self.folder / BPE_MODEL, bpe_model)
        provenance = {**provenance, "bpe": {**provenance["bpe"], "model": BPE_MODEL}}
        lines = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
        write_bytes_atomic(self.folder / UTTERANCES, lines.encode("utf-8"))
        meta = {
            "schema": EVALSET_SCHEMA,
            "name": name,
            "source": source,
            "selection": selection,
            "provenance": provenance,
            "utterances": len(rows),
            "speakers": len({r["speaker"] for r in rows}),
        }
        return write_json_atomic(self.folder / META, meta)


def unusable_text(text: str, reference: str) -> str | None:
    """Why an utterance cannot be evaluated on its text (nothing to read, or no word to score WER
    against), or None. Set makers skip (and count) such utterances; `EvalSetWriter.add` refuses them."""
    if not text.strip():
        return "empty text"
    if not any(c.isalnum() for c in reference):
        return "no words in the reference"
    return None


def spread_over_speakers(pairs: Iterable[tuple[str, str]], per_speaker: int | None = None) -> list[str]:
    """The ids of (id, speaker) pairs in the order a cap should take them: round-robin over the
    speakers (sorted), each speaker's ids sorted, at most `per_speaker` of each; so the first n
    hold as many voices as n allows, the same ones every time."""
    by_speaker: dict[str, list[str]] = {}
    for cut_id, speaker in sorted(pairs):
        by_speaker.setdefault(speaker, []).append(cut_id)
    queues = [ids[:per_speaker] for _, ids in sorted(by_speaker.items())]
    return [q[turn] for turn in range(max(map(len, queues), default=0)) for q in queues if turn < len(q)]


def pair_prompts(rows: list[dict]) -> None:
    """Each utterance's cross-sentence prompt, as VALL-E 2 pairs them: the previous utterance of its
    speaker in id order (the first takes the last), so each of a speaker's utterances is a prompt once."""
    by_speaker: dict[str, list[dict]] = {}
    for r in rows:
        by_speaker.setdefault(r["speaker"], []).append(r)
    for group in by_speaker.values():
        for i, r in enumerate(group):
            r["prompt_id"] = group[i - 1]["id"] if len(group) > 1 else None
