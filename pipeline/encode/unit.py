"""Unit: turn one planned unit (whole recordings) into committed codes and shards.

In: a `UnitJob` (the unit's plan, where its audio is, the settings and their fingerprints) and
an `encode_async` function (the codec worker: in process, or a Ray actor). Out:
`OUT/work/codes/<unit>.npz` (every kept cut's codes, pipeline.encode.codes_file), the unit's shard
files, and its ledger entry, committed in that order.

Two stages, so that text changes never cost audio work:
- codes: decode + slice here, then resample + the codec in the codec worker, a chunk at a time.
  Redone only when the audio settings change, the codes file is gone, or the cuts the text stage
  wants are not all covered.
- shards: tokenize + write shards from the codes file. Redone when text or output settings change.
Memory is bounded by a chunk of audio and one shard, whatever the unit's size: a chunk's audio is
dropped once it is sent, its codes go to disk as they come back, and shards are written from
the codes file cut by cut. Before each commit (codes file, shard files, ledger entry) the output
lock's guard is checked: a unit of a run whose lock was taken over commits nothing (`LockLost`).
Plain Python, no Ray: the executor supplies the codec and the parallelism.
"""

from __future__ import annotations

import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import numpy as np

from pipeline.encode.codes_file import CodesFile, CodesWriter
from pipeline.encode.segment import reject, segment_recording
from pipeline.output import ledger
from pipeline.output.shards import FORMAT_DIRS, LAYOUT_VERSION, partial, remove_file, unit_files, write_unit_shards
from pipeline.plan.subsets import UnitPlan, read_unit_cuts
from pipeline.text.agreement import agreement_problem, text_cer
from schemas import lhotse_shar as shar
from schemas.codes import DEFAULT_SPACE, CodesSpace
from schemas.sample import Sample
from storage.files import fsync_dir
from storage.hashing import json_digest, sha256_file
from storage.locks import LockGuard
from tokens.codec_settings import describe_stack, same_stack
from tokens.text import Tokenizer, select_text, text_problem

# encode_async(windows, rates) starts encoding a chunk of decoded windows (int16 at their file's
# rate) and returns a function that waits for their codes.
EncodeAsync = Callable[[list[np.ndarray], list[int]], Callable[[], list[np.ndarray]]]


@dataclass
class UnitJob:
    out: Path
    unit: UnitPlan
    audio_store: object  # pipeline.fetch.audio_store: TarAudioStore or DirAudioStore (read_bytes)
    min_duration: float
    max_duration: float
    text_field: str
    tokenizer: Tokenizer
    formats: list[str]
    target_shard_bytes: float
    audio_fingerprint: str  # codec + segment settings, from the runner
    text_fingerprint: str  # text field, normalization, BPE model, transcript filter
    max_text_cer: float | None = None  # filter.max_text_cer; None: off
    encode_chunk_seconds: float = 120.0
    # The compute stack of the codec worker encoding this unit (CodecWorker.stack: device type,
    # GPU model and compute capability, torch, cuDNN, precision), set by the executor; the
    # stacks the corpus's codes came from so far (the runner, from the ledger); whether a new one
    # may join them (--allow-stack-change).
    codec_stack: dict | None = None
    known_stacks: tuple = ()
    allow_new_stack: bool = False
    lock: LockGuard | None = None  # the output lock's guard (the runner's): checked before each commit
    codes_space: CodesSpace = DEFAULT_SPACE  # the codec's codebook size and frame rate, for the shards

    @property
    def codes_fingerprint(self) -> str:
        return json_digest({"audio": self.audio_fingerprint, "unit": self.unit.sha256})

    def shards_fingerprint(self, codes_content: str) -> str:
        return json_digest(
            {
                "codes": codes_content,
                "text": self.text_fingerprint,
                "formats": self.formats,
                "target": self.target_shard_bytes,
                "layout": LAYOUT_VERSION,
            }
        )

    @property
    def codes_rel(self) -> str:
        return f"work/codes/{self.unit.name}.npz"


def is_current(job: UnitJob, entry: dict | None = None) -> bool:
    """True when the ledger says codes and shards exist for exactly the current settings."""
    entry = ledger.read_entry(job.out, job.unit.name) if entry is None else entry
    codes_rec, shards_rec = entry.get("codes"), entry.get("shards")
    return bool(
        codes_rec
        and codes_rec["fingerprint"] == job.codes_fingerprint
        and shards_rec
        and shards_rec["fingerprint"] == job.shards_fingerprint(codes_rec["content_sha256"])
        and ledger.files_present(job.out, [codes_rec] + shards_rec["files"])
    )


def run_unit(job: UnitJob, encode_async: EncodeAsync) -> dict:
    """Bring the unit up to date; returns what was done: skip, shards or codes (+ shards)."""
    out, name = job.out, job.unit.name
    entry = ledger.read_entry(out, name)
    codes_rec, shards_rec = entry.get("codes"), entry.get("shards")
    timings = Counter()  # seconds per step in this unit task: where the time goes
    if is_current(job, entry):
        return _result(job, "skip", shards_rec, timings)

    _still_holder(job)
    cuts, selection_rejects, texts, cers = _select(job, read_unit_cuts(out, job.unit))
    codes = _committed_codes(job, codes_rec)
    action = "shards"
    if codes is None or not set(texts) <= set(codes.cut_ids) | {r["cut_id"] for r in codes_rec["rejects"]}:
        check_stack(job)  # before any audio is decoded
        codes_rec, codes = _encode(job, cuts, encode_async, timings)
        # The shards record stays: it is current if the new codes are the old ones (a lost codes
        # file encoded again), and rewritten below if not (its fingerprint holds the codes' digest).
        entry = {**entry, "unit": name, "subset": job.unit.subset, "codes": codes_rec}
        _still_holder(job)
        ledger.write_entry(out, name, entry)
        action = "codes"

    fingerprint = job.shards_fingerprint(codes_rec["content_sha256"])
    if shards_rec and shards_rec["fingerprint"] == fingerprint and ledger.files_present(out, shards_rec["files"]):
        return _result(job, action, shards_rec, timings)
    started = time.perf_counter()
    shards_rec = _write_shards(job, cuts, texts, cers, codes, selection_rejects, fingerprint)
    _still_holder(job)
    ledger.write_entry(out, name, {**entry, "shards": shards_rec})
    _remove_stale_shards(job, shards_rec)
    timings["shards"] += time.perf_counter() - started
    return _result(job, action, shards_rec, timings)


def _still_holder(job: UnitJob) -> None:
    """Raise `LockLost` when the run's output lock was taken over by another run."""
    if job.lock is not None:
        job.lock.check()


class StackChanged(RuntimeError):
    """Codes would be made on a compute stack this corpus's codes were not made on."""


def check_stack(job: UnitJob) -> None:
    """Float kernels differ between devices and library versions, so codes made on another stack
    may differ at near-ties: a corpus does not take them silently."""
    if job.codec_stack is None or not job.known_stacks or job.allow_new_stack:
        return
    if any(same_stack(job.codec_stack, known) for known in job.known_stacks):
        return
    raise StackChanged(
        f"this corpus's codes were made on {' and '.join(describe_stack(s) for s in job.known_stacks)}; this codec "
        f"worker is {describe_stack(job.codec_stack)}. Run on that stack, or pass --allow-stack-change to let "
        "codes of this stack join them (valle-prep status lists every stack)"
    )


def _select(job: UnitJob, cuts: list[dict]) -> tuple[list[dict], list[dict], dict[str, str], dict]:
    """Drop duplicate ids, empty texts and transcripts that disagree before any audio work;
    the cuts kept, the rejects, and the kept cuts' texts and transcript CERs (None: no ASR text)."""
    kept, rejects, texts, cers, seen = [], [], {}, {}, set()
    for cut in cuts:
        if cut["id"] in seen:
            rejects.append(reject(cut, "duplicate_cut_id", f"in recording {cut['recording_id']}"))
            continue
        seen.add(cut["id"])
        if shar.FORMAT in job.formats and (problem := shar.id_problem(cut["id"])):
            rejects.append(reject(cut, "bad_cut_id", problem))  # never in Libriheavy; kept out of every format
            continue
        text = select_text(cut["texts"], job.text_field)
        if problem := text_problem(text, job.text_field):  # empty_text, no_words
            rejects.append(reject(cut, *problem))
            continue
        cer = text_cer(cut["texts"])
        if problem := agreement_problem(cer, cut["texts"], job.max_text_cer):  # text_mismatch
            rejects.append({**reject(cut, *problem), "text_cer": cer})
            continue
        texts[cut["id"]], cers[cut["id"]] = text, cer
        kept.append(cut)
    return kept, rejects, texts, cers


def _encode(job: UnitJob, cuts: list[dict], encode_async: EncodeAsync, timings: Counter) -> tuple[dict, CodesFile]:
    """Decode each recording once and send its windows in chunks; while one chunk is encoded the
    next is decoded. Codes go to disk as they return; then the codes file is committed."""
    target = job.out / job.codes_rel
    writer = CodesWriter(target, partial(target))
    try:
        rejects, in_flight, chunk = [], deque(), []
        for _, rec_cuts in groupby(cuts, key=lambda c: (c["recording_id"], c["audio"])):  # one file at a time
            started = time.perf_counter()
            segments, dropped = segment_recording(
                list(rec_cuts), job.audio_store.read_bytes, job.min_duration, job.max_duration
            )
            timings["read_decode_slice"] += time.perf_counter() - started
            rejects += dropped
            chunk += segments
            if sum(s.duration for s in chunk) >= job.encode_chunk_seconds:
                _still_holder(job)  # a run whose lock was taken over stops encoding too
                in_flight.append(_send(chunk, encode_async))
                chunk = []
                while len(in_flight) > 1:  # keep one chunk encoding while the next one decodes
                    _receive(writer, *in_flight.popleft(), timings)
        if chunk:
            in_flight.append(_send(chunk, encode_async))
        del chunk
        while in_flight:
            _receive(writer, *in_flight.popleft(), timings)
        started = time.perf_counter()
        _still_holder(job)
        totals = writer.commit()
        timings["commit_codes"] += time.perf_counter() - started
    except Exception:
        writer.abandon()
        raise
    record = {
        "stack": job.codec_stack,
        "fingerprint": job.codes_fingerprint,
        "path": job.codes_rel,
        "bytes": target.stat().st_size,
        "sha256": sha256_file(target),
        **totals,
        "rejects": rejects,
    }
    return record, CodesFile(target)


def _send(segments, encode_async: EncodeAsync):
    """Start encoding; keep only what the codes file needs of each segment, not its audio."""
    wait = encode_async([s.audio for s in segments], [s.rate for s in segments])
    return [(s.cut["id"], s.duration, s.clamped) for s in segments], wait


def _receive(writer: CodesWriter, kept: list[tuple], wait, timings: Counter) -> None:
    started = time.perf_counter()
    codes = wait()
    timings["wait_for_codes"] += time.perf_counter() - started
    if len(codes) != len(kept):
        raise RuntimeError(f"codec returned {len(codes)} results for {len(kept)} inputs")
    for (cut_id, duration, clamped), c in zip(kept, codes):
        writer.add(cut_id, duration, clamped, c)


def _committed_codes(job: UnitJob, record: dict | None) -> CodesFile | None:
    """The unit's committed codes, or None when they must be (re)computed."""
    if not record or record["fingerprint"] != job.codes_fingerprint:
        return None
    return CodesFile.open_verified(job.out / record["path"], record["sha256"])


def _write_shards(job: UnitJob, cuts, texts, cers, codes: CodesFile, selection_rejects, fingerprint) -> dict:
    for fmt in FORMAT_DIRS:
        for leftover in (job.out / fmt / job.unit.subset).glob(unit_files(fmt, job.unit.name) + ".partial"):
            leftover.unlink()
    written, lengths = write_unit_shards(
        _samples(job, cuts, texts, cers, codes),
        job.out,
        job.unit.subset,
        job.unit.name,
        job.formats,
        job.target_shard_bytes,
        job.codes_space,
    )
    _still_holder(job)
    for tmp, record in written:
        os.replace(tmp, job.out / record.path)
        fsync_dir((job.out / record.path).parent)
    return {
        "fingerprint": fingerprint,
        "files": [r.record() for _, r in written],
        "lengths": lengths,
        "samples": sum(len(s["frames"]) for s in lengths),
        "rejects": selection_rejects,
    }


def _samples(job: UnitJob, cuts, texts, cers, codes: CodesFile) -> Iterator[Sample]:
    """The unit's samples in plan order, codes read from the file one cut at a time. The file
    holds the cuts kept when it was encoded, in plan order too: a superset when the text choice
    now drops some, which are passed over."""
    encoded = set(codes.cut_ids)
    wanted = (c for c in cuts if c["id"] in encoded)
    cut = next(wanted, None)
    for cut_id, duration, array in codes:
        if cut is None:
            break
        if cut_id != cut["id"]:
            continue
        text = texts[cut_id]
        yield Sample(
            id=cut_id,
            speaker=cut["speaker"],
            subset=job.unit.subset,
            duration=duration,
            text=text,
            text_tokens=job.tokenizer.encode(text),
            codes=array,
            recording_id=cut["recording_id"],
            start=cut["start"],
            text_cer=cers[cut_id],
            source_texts=cut["texts"] if isinstance(cut["texts"], list) else [],  # Libriheavy's pair
        )
        cut = next(wanted, None)
    if cut is not None:
        raise RuntimeError(
            f"unit {job.unit.name}: {job.codes_rel} is not in plan order at cut {cut['id']!r}; delete it and run again"
        )


def _remove_stale_shards(job: UnitJob, shards_rec: dict) -> None:
    """Files of this unit that the new entry does not name (e.g. a format no longer asked for)."""
    keep = {f["path"] for f in shards_rec["files"]}
    for fmt in FORMAT_DIRS:
        for path in (job.out / fmt / job.unit.subset).glob(unit_files(fmt, job.unit.name)):
            rel = path.relative_to(job.out).as_posix()
            if rel not in keep:
                remove_file(job.out, rel)


def _result(job: UnitJob, action: str, shards_rec: dict, timings: Counter) -> dict:
    return {
        "unit": job.unit.name,
        "action": action,
        "seconds": job.unit.seconds,
        "samples": shards_rec["samples"],
        "timings": dict(timings),
    }
