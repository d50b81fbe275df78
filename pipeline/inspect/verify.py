"""Verify: check a finished corpus against its index and the schemas, without trusting either.

In: OUT: a folder, or an http(s):// or s3:// location (read through storage.remote, as the
trainer reads it: e.g. a corpus after its upload). Out: a list of problems, each naming the file
and what is wrong (empty = valid).
Checks the index against its schema (schemas/index.v2.json, or v1 for a corpus written before
v2); every shard's size and sha256; every sample's metadata against schemas/sample.v<N>.json
(Parquet: the columns of parquet.v<N>.json), its codes decoded (v2: the .npy member or the
list<list<uint16>> column; v1: the packed bytes) with their codebooks and range, its tokens
against the BPE vocabulary, frames against duration (at the frame rate index.json records of the
codec: 75 per second for EnCodec) and code values against its recorded codebook size; counts and hours per
shard; each shard's frames, tokens, speakers and recordings against its lengths.parquet row; ids
unique over the corpus and the same in every format, shard by shard; the rejects file against the
index's counts. Shards are read one at a time in shard-id order, and what is kept across them is
~12 bytes a sample (the id check), so memory stays flat up to libriheavy-large.
Every shard is read by its format's strict reader in schemas/ (the trainer's readers): lhotse Shar
shards as lhotse pairs them (without lhotse): a shard's cuts file with its codes file, each cut
with its `<id>.npy` and duration = frames / the codec's frame rate.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
from array import array
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import groupby

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

import schemas
from schemas import lhotse_shar, parquet, webdataset
from schemas.codes import CodesSpace
from storage.remote import join, open_text, read_bytes


def verify(out, progress: bool = False, jobs: int = 1) -> list[str]:
    """Every problem found in the corpus at `out`; `jobs` processes check shards at once."""
    out = str(out)
    problems: list[str] = []
    index_path = join(out, "index.json")
    raw = _read(index_path)
    if raw is None:
        return [f"{index_path}: missing (the run did not finish; run the DAG again)"]
    try:
        index = json.loads(raw)
        version = index.get("version") if isinstance(index, dict) else None
        if version not in schemas.READABLE_VERSIONS:
            return [
                f"{index_path}: index version {version!r}, this valle-prep checks versions "
                f"{list(schemas.READABLE_VERSIONS)}"
            ]
        schemas.validate(f"index.v{version}", index, where=index_path)
    except (ValueError, schemas.SchemaError) as err:
        return [f"{index_path}: {err}"]

    bpe = index["provenance"]["bpe"]
    bpe_model = _read(join(out, bpe["model"]))
    if bpe_model is None or hashlib.sha256(bpe_model).hexdigest() != bpe["sha256"]:
        problems.append(f"{join(out, bpe['model'])}: missing or sha256 differs from the index")
    space = CodesSpace.of_index(index)
    if index["codes"]["frame_rate"] != space.frame_rate:
        problems.append(
            f"{index_path}: codes.frame_rate {index['codes']['frame_rate']} differs from the codec's "
            f"(provenance.codec.frame_rate {space.frame_rate})"
        )
    expect = {"codebooks": index["codes"]["codebooks"], "vocab": bpe["vocab_size"], "version": version, "space": space}

    lengths, lengths_problems = _Lengths.open(out, index)
    problems += lengths_problems
    formats = {s["format"] for s in index["shards"]}
    shar_codes_files = {
        s["id"]: s for s in index["shards"] if s["format"] == lhotse_shar.FORMAT and s.get("field") == "codes"
    }
    sample_ids = _SampleIds()
    # By shard id (lengths.parquet's order): a shard's files in every format are checked together,
    # and what is held at a time is one shard per process, whatever the corpus's size.
    by_id = sorted(index["shards"], key=lambda s: (s["id"], s["format"], s.get("field", "")))
    bar = tqdm(total=sum(s["bytes"] for s in by_id), unit="B", unit_scale=True, desc="verifying", disable=not progress)
    tasks = (
        _GroupTask(
            out,
            list(group),
            formats,
            lengths.row(shard_id) if lengths is not None else None,
            index["lengths"]["path"],
            expect,
        )
        for shard_id, group in groupby(by_id, key=lambda s: s["id"])
    )
    for task, (found, first, ids) in _in_order(_check_group, tasks, jobs):
        problems += found
        bar.update(sum(s["bytes"] for s in task.group))
        if first is not None:
            sample_ids.add(first, ids)
    bar.close()

    def ids_of(shard: dict) -> list:  # read again, only for shards whose id digests meet
        codes = shar_codes_files.get(shard["id"])
        rows = _read_rows(
            shard, _read(join(out, shard["path"])), codes and _read(join(out, codes["path"])), version, space
        )
        return [m.get("id") for m, _ in rows]

    problems += sample_ids.duplicates(ids_of)
    problems += _check_rejects(out, index)
    return problems


def default_jobs() -> int:
    """Processes for verify: the CPUs, up to 8 (each holds one shard; reading is the limit beyond)."""
    return max(1, min(8, os.cpu_count() or 1))


@dataclass
class _GroupTask:
    """One shard id: its file in every format, and what the index and lengths.parquet say."""

    out: str
    group: list[dict]
    formats: set[str]
    expected: dict | None
    lengths_name: str
    expect: dict


def _check_group(task: _GroupTask) -> tuple[list[str], dict | None, list | None]:
    """(problems, the file whose ids go to the duplicate check, its ids) for one shard id."""
    problems, ids_by_format, shard_id = [], {}, task.group[0]["id"]
    if {s["format"] for s in task.group} != task.formats:
        problems.append(
            f"shard {shard_id!r}: the index lists it in {sorted({s['format'] for s in task.group})}, "
            f"the corpus is in {sorted(task.formats)}"
        )
    shar_codes = None  # a Shar shard's codes file: first in the group (by field), read with its cuts file
    for shard in task.group:
        raw = _check_file(task.out, shard, problems)
        if raw is None:
            continue
        if shard.get("field") == "codes":
            shar_codes = raw
            continue
        rows = _check_samples(shard, raw, shar_codes, task.expect, task.expected, task.lengths_name, problems)
        if rows is not None:
            ids_by_format[shard["format"]] = [m.get("id") for m, _ in rows]
    if len({tuple(ids) for ids in ids_by_format.values()}) > 1:
        problems.append(
            f"shard {shard_id!r}: its {' and '.join(sorted(ids_by_format))} files hold different sample ids"
        )
    if not ids_by_format:
        return problems, None, None
    first = min(ids_by_format)
    return (
        problems,
        next(s for s in task.group if s["format"] == first and s.get("field") != "codes"),
        ids_by_format[first],
    )


def _in_order(fn, tasks, jobs: int):
    """(task, fn(task)) in the tasks' order; with jobs > 1 in that many processes, at most
    2 x jobs tasks submitted ahead, so memory does not grow with the number of tasks."""
    if jobs <= 1:
        yield from ((task, fn(task)) for task in tasks)
        return
    # spawn: a fresh interpreter per worker, nothing inherited from threads of this process
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = deque()
        for task in tasks:
            pending.append((task, pool.submit(fn, task)))
            if len(pending) >= 2 * jobs:
                task, future = pending.popleft()
                yield task, future.result()
        while pending:
            task, future = pending.popleft()
            yield task, future.result()


def _read(uri: str) -> bytes | None:
    """A file's bytes (local or remote), or None when it is not there."""
    try:
        return read_bytes(uri)
    except (FileNotFoundError, IsADirectoryError):
        return None


def _check_file(out: str, shard: dict, problems: list[str]) -> bytes | None:
    """One file's bytes (read once: hashed here, parsed after), checked against the index; None
    when it is missing."""
    where = shard["path"]
    raw = _read(join(out, where))
    if raw is None:
        problems.append(f"{where}: missing")
        return None
    if len(raw) != shard["bytes"]:
        problems.append(f"{where}: {len(raw)} bytes, index says {shard['bytes']}")
    if hashlib.sha256(raw).hexdigest() != shard["sha256"]:
        problems.append(f"{where}: sha256 differs from the index")
    return raw


def _check_samples(
    shard: dict,
    raw: bytes,
    shar_codes: bytes | None,
    expect: dict,
    expected: dict | None,
    lengths_name: str,
    problems: list[str],
):
    """Check a shard's samples against the schemas, the index and its lengths row; returns its
    (metadata, codes) rows, or None when it could not be read."""
    where = shard["path"]
    try:
        rows = list(_read_rows(shard, raw, shar_codes, expect["version"], expect["space"]))
    except Exception as err:  # any unreadable shard is a finding, not a crash
        problems.append(f"{where}: unreadable: {type(err).__name__}: {err}")
        return None
    for meta, codes in rows:
        problems += [f"{where}: sample {meta.get('id')!r}: {p}" for p in _check_sample(meta, codes, expect)]
    if len(rows) != shard["samples"]:
        problems.append(f"{where}: {len(rows)} samples, index says {shard['samples']}")
    if expected is not None:
        differ = [column for column, actual in _lengths_of(rows, expected).items() if expected[column] != actual]
        if differ:
            problems.append(f"{where}: sample {', '.join(differ)} differ from {lengths_name} row {shard['id']!r}")
    hours = sum(m.get("duration", 0) for m, _ in rows) / 3600
    if abs(hours - shard["hours"]) > 1e-5:
        problems.append(f"{where}: {hours:.6f} h of audio, index says {shard['hours']}")
    return rows


def _lengths_of(rows: list, expected: dict) -> dict:
    """The shard's own values of each lengths column that `expected` (its row) has, except
    text_cer, which the samples do not carry."""
    actual = {
        "frames": [_frames(m, c) for m, c in rows],
        "text_tokens": [len(m.get("text_tokens", [])) for m, _ in rows],
    }
    for column in ("speaker", "recording_id"):
        if column in expected:
            actual[column] = [m.get(column) for m, _ in rows]
    return actual


class _Lengths:
    """lengths.parquet by shard id, decoded a row group at a time (the last one is kept: shards
    are asked for in file order), so checking a corpus never holds all its lengths."""

    def __init__(self, raw: bytes):
        self.file = pq.ParquetFile(pa.BufferReader(raw))  # ~4 bytes a sample (47 MB for large)
        self.where: dict[str, tuple[int, int]] = {}  # shard id -> (row group, row): O(shards)
        self.duplicated: list[str] = []
        for g in range(self.file.num_row_groups):
            for i, shard in enumerate(self.file.read_row_group(g, columns=["shard"]).column(0).to_pylist()):
                if shard in self.where:
                    self.duplicated.append(shard)
                self.where[shard] = (g, i)
        self.group, self.rows = -1, []

    @classmethod
    def open(cls, out: str, index: dict):
        """(the lengths, the problems found), or (None, problems) when it cannot be used."""
        path = join(out, index["lengths"]["path"])
        raw = _read(path)
        if raw is None:
            return None, [f"{path}: missing"]
        if hashlib.sha256(raw).hexdigest() != index["lengths"]["sha256"]:
            return None, [f"{path}: sha256 differs from the index"]
        try:
            lengths = cls(raw)
        except (OSError, pa.ArrowException) as err:
            return None, [f"{path}: unreadable: {err}"]
        if not schemas.matches_columns("lengths.v1", lengths.file.schema_arrow):
            return None, [f"{path}: columns differ from schemas/lengths.v1.json"]
        problems = [f"{path}: shard {s!r} has more than one row" for s in lengths.duplicated[:1]]
        if set(lengths.where) != {s["id"] for s in index["shards"]}:
            problems.append(f"{path}: its shard ids differ from the index's")
        return lengths, problems

    def row(self, shard: str) -> dict | None:
        if shard not in self.where:
            return None
        group, i = self.where[shard]
        if group != self.group:
            self.group, self.rows = group, self.file.read_row_group(group).to_pylist()
        return self.rows[i]


class _SampleIds:
    """Sample ids must be unique over the corpus. Held as 12 bytes a sample (a 64-bit digest of
    the id and its shard's number), not as strings: ~150 MB for libriheavy-large's 12 M. Equal
    digests are settled by reading those shards' ids again, so a digest collision is never
    reported as a duplicate."""

    def __init__(self):
        self.digests, self.shard_of, self.shards = array("Q"), array("I"), []

    def add(self, shard: dict, ids: list) -> None:
        self.digests.extend(_digest(i) for i in ids)
        self.shard_of.extend([len(self.shards)] * len(ids))
        self.shards.append(shard)

    def duplicates(self, read_ids) -> list[str]:
        digests = np.frombuffer(self.digests, dtype=np.uint64) if self.digests else np.zeros(0, np.uint64)
        ordered = np.sort(digests)  # 8 bytes a sample more, for the moment of the check
        suspects = set(ordered[1:][ordered[1:] == ordered[:-1]].tolist())
        del ordered
        if not suspects:
            return []
        holding = np.flatnonzero(np.isin(digests, np.fromiter(suspects, np.uint64, len(suspects))))
        shards = sorted(set(np.frombuffer(self.shard_of, dtype=np.uint32)[holding].tolist()))
        seen = Counter(i for k in shards for i in read_ids(self.shards[k]) if _digest(i) in suspects)
        dup = sorted(i for i, n in seen.items() if n > 1)
        if not dup:
            return []
        fmt = self.shards[0]["format"]
        return [f"{fmt}: {len(dup)} duplicated sample ids, e.g. {dup[0]!r}"]


def _digest(sample_id) -> int:
    return int.from_bytes(hashlib.blake2b(str(sample_id).encode(), digest_size=8).digest(), "little")


def _read_rows(shard: dict, raw: bytes, shar_codes: bytes | None, version: int, space: CodesSpace):
    """(metadata, codes or the SchemaError decoding them raised) per sample, by the format's own
    strict reader over the bytes already read (and hashed), checked against the recorded codec."""
    if shard["format"] == "webdataset":
        return webdataset.read(io.BytesIO(raw), version=version, bad_codes="yield", space=space)
    if shard["format"] == "parquet":
        return parquet.read(pq.ParquetFile(pa.BufferReader(raw)), version=version, bad_codes="yield", space=space)
    if shar_codes is None:
        raise ValueError("its codes file is missing, or not in the index")
    return lhotse_shar.read_shard(raw, shar_codes, bad_codes="yield", space=space)


def _frames(meta: dict, codes) -> int:
    return codes.shape[1] if isinstance(codes, np.ndarray) else meta.get("codes_shape", [0, 0])[1]


def _check_sample(meta: dict, codes, expect: dict) -> list[str]:
    """Problems of one sample; `codes` is its decoded array, or the SchemaError decoding raised."""
    try:
        schemas.validate(f"sample.v{expect['version']}", meta)
    except schemas.SchemaError as err:
        return [str(err)]
    if isinstance(codes, schemas.SchemaError):
        return [str(codes)]
    problems = []
    k, t = codes.shape
    if k != expect["codebooks"]:
        problems.append(f"{k} codebooks, the index says {expect['codebooks']}")
    rate = expect["space"].frame_rate
    if abs(t - meta["duration"] * rate) > 1:
        problems.append(
            f"{t} frames for {meta['duration']} s "
            f"(expected ~{meta['duration'] * rate:.1f} at the codec's {rate} frames/s)"
        )
    if max(meta["text_tokens"]) >= expect["vocab"]:
        problems.append(f"token id {max(meta['text_tokens'])} outside the BPE vocabulary of {expect['vocab']}")
    return problems


def _check_rejects(out: str, index: dict) -> list[str]:
    path = join(out, index["rejects"]["path"])
    try:
        with open_text(path) as lines:
            reasons = Counter(json.loads(line)["reason"] for line in lines if line.strip())
    except (FileNotFoundError, IsADirectoryError):
        return [f"{path}: missing"]
    except (ValueError, KeyError) as err:
        return [f"{path}: unreadable line: {err}"]
    if sum(reasons.values()) != index["rejects"]["total"] or dict(reasons) != index["rejects"]["by_reason"]:
        return [f"{path}: counts {dict(reasons)} differ from the index {index['rejects']['by_reason']}"]
    return []
