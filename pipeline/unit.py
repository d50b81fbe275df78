"""Unit: turn one planned unit (whole recordings) into committed codes and shards.

In: a `UnitJob` (the unit's plan, where its audio is, the settings and their fingerprints) and
an `encode_async` function (the codec: local, or a Ray actor). Out: `OUT/work/codes/<unit>.npz`
(every kept cut's codes), the unit's shard files, and its ledger entry, committed in that order.

Two stages, so that text changes never cost audio work:
- codes: decode + slice + resample + EnCodec. Redone only when the audio settings change, the
  codes file is gone, or the cuts the text stage wants are not all covered.
- shards: tokenize + write shards from the codes file. Redone when text or output settings change.
Plain Python, no Ray: the runner supplies the codec and the parallelism.
"""
from __future__ import annotations

import hashlib
import io
import os
from dataclasses import asdict, dataclass
from itertools import groupby
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline import ledger
from pipeline.fsutil import fsync_dir, json_digest, sha256_file
from pipeline.plan import UnitPlan, read_unit_cuts
from pipeline.segment import reject, segment_recording
from pipeline.shards import FORMAT_DIRS, LAYOUT_VERSION, Sample, partial, write_unit_shards
from pipeline.text import Tokenizer, select_text, text_problem

# encode_async(waves) starts encoding and returns a function that waits for the codes.
EncodeAsync = Callable[[list[np.ndarray]], Callable[[], list[np.ndarray]]]


@dataclass
class UnitJob:
    out: Path
    unit: UnitPlan
    audio_store: object  # pipeline.audio_store.TarAudioStore or DirAudioStore
    min_duration: float
    max_duration: float
    text_field: str
    tokenizer: Tokenizer
    formats: list[str]
    target_shard_bytes: float
    audio_fingerprint: str  # codec + segment settings, from the runner
    text_fingerprint: str  # text field, normalization, BPE model
    encode_chunk_seconds: float = 120.0

    @property
    def codes_fingerprint(self) -> str:
        return json_digest({"audio": self.audio_fingerprint, "unit": self.unit.sha256})

    def shards_fingerprint(self, codes_content: str) -> str:
        return json_digest({"codes": codes_content, "text": self.text_fingerprint,
                            "formats": self.formats, "target": self.target_shard_bytes,
                            "layout": LAYOUT_VERSION})

    @property
    def codes_rel(self) -> str:
        return f"work/codes/{self.unit.name}.npz"


def is_current(job: UnitJob, entry: dict | None = None) -> bool:
    """True when the ledger says codes and shards exist for exactly the current settings."""
    entry = ledger.read_entry(job.out, job.unit.name) if entry is None else entry
    codes_rec, shards_rec = entry.get("codes"), entry.get("shards")
    return bool(codes_rec and codes_rec["fingerprint"] == job.codes_fingerprint
                and shards_rec
                and shards_rec["fingerprint"] == job.shards_fingerprint(codes_rec["content_sha256"])
                and ledger.files_present(job.out, [codes_rec] + shards_rec["files"]))


def run_unit(job: UnitJob, encode_async: EncodeAsync) -> dict:
    """Bring the unit up to date; returns what was done: skip, shards or codes (+ shards)."""
    out, name = job.out, job.unit.name
    entry = ledger.read_entry(out, name)
    codes_rec, shards_rec = entry.get("codes"), entry.get("shards")
    if is_current(job, entry):
        return _result(job, "skip", shards_rec)

    cuts, selection_rejects, texts = _select(job, read_unit_cuts(out, job.unit))
    codes = _load_codes(job, codes_rec)
    action = "shards"
    if codes is None or not set(texts) <= set(codes) | {r["cut_id"] for r in codes_rec["rejects"]}:
        codes_rec, codes = _encode(job, cuts, encode_async)
        entry = {"unit": name, "subset": job.unit.subset, "codes": codes_rec}
        ledger.write_entry(out, name, entry)
        action = "codes"

    fingerprint = job.shards_fingerprint(codes_rec["content_sha256"])
    if (shards_rec and shards_rec["fingerprint"] == fingerprint
            and ledger.files_present(out, shards_rec["files"])):
        return _result(job, action, shards_rec)
    shards_rec = _write_shards(job, cuts, texts, codes, selection_rejects, fingerprint)
    ledger.write_entry(out, name, {**entry, "shards": shards_rec})
    _remove_stale_shards(job, shards_rec)
    return _result(job, action, shards_rec)


def _select(job: UnitJob, cuts: list[dict]) -> tuple[list[dict], list[dict], dict[str, str]]:
    """Drop duplicate ids and empty texts before any audio work; texts of the cuts kept."""
    kept, rejects, texts, seen = [], [], {}, set()
    for cut in cuts:
        if cut["id"] in seen:
            rejects.append(reject(cut, "duplicate_cut_id", f"in recording {cut['recording_id']}"))
            continue
        seen.add(cut["id"])
        text = select_text(cut["texts"], job.text_field)
        if problem := text_problem(text, job.text_field):  # empty_text, no_words
            rejects.append(reject(cut, *problem))
            continue
        texts[cut["id"]] = text
        kept.append(cut)
    return kept, rejects, texts


def _encode(job: UnitJob, cuts: list[dict], encode_async: EncodeAsync) -> tuple[dict, dict]:
    """Decode each recording once, encode in chunks while the next recording decodes, commit."""
    target = job.out / job.codes_rel
    target.parent.mkdir(parents=True, exist_ok=True)
    partial(target).unlink(missing_ok=True)

    rejects, done, in_flight, chunk = [], [], [], []
    for _, rec_cuts in groupby(cuts, key=lambda c: c["recording_id"]):
        segments, dropped = segment_recording(list(rec_cuts), job.audio_store.read_bytes,
                                              job.min_duration, job.max_duration)
        rejects += dropped
        chunk += segments
        if sum(s.duration for s in chunk) >= job.encode_chunk_seconds:
            in_flight.append((chunk, encode_async([s.audio for s in chunk])))
            chunk = []
            while len(in_flight) > 1:  # keep one chunk encoding while the next one decodes
                done += _collect(*in_flight.pop(0))
    if chunk:
        in_flight.append((chunk, encode_async([s.audio for s in chunk])))
    for item in in_flight:
        done += _collect(*item)

    arrays = {
        "cut_ids": np.array([s.cut["id"] for s, _ in done], dtype=str),
        "durations": np.array([s.duration for s, _ in done], dtype=np.float64),
        "clamped": np.array([s.clamped for s, _ in done], dtype=bool),
        "frames": np.array([c.shape[1] for _, c in done], dtype=np.int64),
        "codes": (np.concatenate([c for _, c in done], axis=1) if done
                  else np.zeros((0, 0), dtype=np.uint16)),
    }
    with open(partial(target), "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial(target), target)
    fsync_dir(target.parent)
    record = {
        "fingerprint": job.codes_fingerprint, "path": job.codes_rel,
        "bytes": target.stat().st_size, "sha256": sha256_file(target),
        "content_sha256": _content_digest(arrays), "cuts": len(done),
        "seconds": round(float(arrays["durations"].sum()), 3),
        "clamped": int(arrays["clamped"].sum()), "rejects": rejects,
    }
    return record, _codes_by_id(arrays)


def _collect(segments, wait) -> list:
    codes = wait()
    if len(codes) != len(segments):
        raise RuntimeError(f"codec returned {len(codes)} results for {len(segments)} inputs")
    return list(zip(segments, codes))


def _load_codes(job: UnitJob, record: dict | None) -> dict | None:
    """The unit's committed codes by cut id, or None when they must be (re)computed."""
    if not record or record["fingerprint"] != job.codes_fingerprint:
        return None
    path = job.out / record["path"]
    if not path.is_file():
        return None
    raw = path.read_bytes()  # read once: hashed, then parsed
    if hashlib.sha256(raw).hexdigest() != record["sha256"]:
        return None
    with np.load(io.BytesIO(raw), allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    return _codes_by_id(arrays)


def _codes_by_id(arrays: dict) -> dict[str, tuple[np.ndarray, float]]:
    ends = np.cumsum(arrays["frames"])
    starts = ends - arrays["frames"]
    return {cid: (arrays["codes"][:, s:e], float(d))
            for cid, s, e, d in zip(arrays["cut_ids"].tolist(), starts, ends, arrays["durations"])}


def _write_shards(job: UnitJob, cuts, texts, codes, selection_rejects, fingerprint) -> dict:
    for fmt in FORMAT_DIRS:
        for leftover in (job.out / fmt / job.unit.subset).glob(f"{job.unit.name}-*.partial"):
            leftover.unlink()
    samples = [
        Sample(id=c["id"], speaker=c["speaker"], subset=job.unit.subset, duration=codes[c["id"]][1],
               text=texts[c["id"]], text_tokens=job.tokenizer.encode(texts[c["id"]]),
               codes=codes[c["id"]][0], recording_id=c["recording_id"], start=c["start"])
        for c in cuts if c["id"] in codes
    ]
    written, lengths = write_unit_shards(samples, job.out, job.unit.subset, job.unit.name,
                                         job.formats, job.target_shard_bytes)
    for tmp, record in written:
        os.replace(tmp, job.out / record.path)
        fsync_dir((job.out / record.path).parent)
    return {"fingerprint": fingerprint, "files": [asdict(r) for _, r in written],
            "lengths": lengths, "samples": len(samples), "rejects": selection_rejects}


def _remove_stale_shards(job: UnitJob, shards_rec: dict) -> None:
    """Files of this unit that the new entry does not name (e.g. a format no longer asked for)."""
    keep = {f["path"] for f in shards_rec["files"]}
    for fmt in FORMAT_DIRS:
        for path in (job.out / fmt / job.unit.subset).glob(f"{job.unit.name}-*"):
            if path.relative_to(job.out).as_posix() not in keep:
                path.unlink()


def _result(job: UnitJob, action: str, shards_rec: dict) -> dict:
    return {"unit": job.unit.name, "action": action, "seconds": job.unit.seconds,
            "samples": shards_rec["samples"]}


def _content_digest(arrays: dict) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()

