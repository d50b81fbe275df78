"""Verify: check a finished corpus against its index and the schemas, without trusting either.

In: OUT. Out: a list of problems, each naming the file and what is wrong (empty = valid).
Checks the index against its schema (schemas/index.v2.json, or v1 for a corpus written before
v2); every shard's size and sha256; every sample's metadata against schemas/sample.v<N>.json
(Parquet: the columns of parquet.v<N>.json), its codes decoded (v2: the .npy member or the
list<list<uint16>> column; v1: the packed bytes) with their codebooks and range, its tokens
against the BPE vocabulary, frames against duration (75 per second); counts and hours per
shard; ids unique within a format and the same across formats; the rejects file against the
index's counts.
lhotse Shar shards are read as lhotse pairs them (pipeline.shar.read_shard, without lhotse): a
shard's cuts file with its codes file, each cut with its `<id>.npy` and duration = frames / 75.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from pipeline import shar
from pipeline.fsutil import sha256_file
from tokens.constants import FRAME_RATE


def verify(out: Path) -> list[str]:
    problems: list[str] = []
    index_path = out / "index.json"
    try:
        index = json.loads(index_path.read_text())
        version = index.get("version") if isinstance(index, dict) else None
        if version not in schemas.READABLE_VERSIONS:
            return [f"{index_path}: index version {version!r}, this valle-prep checks versions "
                    f"{list(schemas.READABLE_VERSIONS)}"]
        schemas.validate(f"index.v{version}", index, where=str(index_path))
    except FileNotFoundError:
        return [f"{index_path}: missing (the run did not finish; run the DAG again)"]
    except (ValueError, schemas.SchemaError) as err:
        return [f"{index_path}: {err}"]

    bpe = index["provenance"]["bpe"]
    bpe_path = out / bpe["model"]
    if not bpe_path.is_file() or sha256_file(bpe_path) != bpe["sha256"]:
        problems.append(f"{bpe_path}: missing or sha256 differs from the index")
    expect = {"codebooks": index["codes"]["codebooks"], "vocab": bpe["vocab_size"], "version": version}

    lengths, lengths_problems = _read_lengths(out, index)
    problems += lengths_problems
    ids_by_format: dict[str, Counter] = {}
    shar_codes = {s["id"]: s for s in index["shards"] if s["format"] == shar.FORMAT and s.get("field") == "codes"}
    for shard in index["shards"]:
        path = out / shard["path"]
        where = shard["path"]
        if not path.is_file():
            problems.append(f"{where}: missing")
            continue
        raw = path.read_bytes()  # read once: hashed, then parsed
        if len(raw) != shard["bytes"]:
            problems.append(f"{where}: {len(raw)} bytes, index says {shard['bytes']}")
        if hashlib.sha256(raw).hexdigest() != shard["sha256"]:
            problems.append(f"{where}: sha256 differs from the index")
        if shard.get("field") == "codes":
            continue  # read with its cuts file
        try:
            rows = list(_read_rows(out, shard, raw, shar_codes, version))
        except Exception as err:  # any unreadable shard is a finding, not a crash
            problems.append(f"{where}: unreadable: {type(err).__name__}: {err}")
            continue
        for meta, codes in rows:
            problems += [f"{where}: sample {meta.get('id')!r}: {p}" for p in _check_sample(meta, codes, expect)]
        ids_by_format.setdefault(shard["format"], Counter()).update(m.get("id") for m, _ in rows)
        if len(rows) != shard["samples"]:
            problems.append(f"{where}: {len(rows)} samples, index says {shard['samples']}")
        actual = ([_frames(m, c) for m, c in rows], [len(m.get("text_tokens", [])) for m, _ in rows])
        if lengths is not None and lengths.get(shard["id"]) != actual:
            problems.append(f"{where}: sample lengths differ from {index['lengths']['path']} row {shard['id']!r}")
        hours = sum(m.get("duration", 0) for m, _ in rows) / 3600
        if abs(hours - shard["hours"]) > 1e-5:
            problems.append(f"{where}: {hours:.6f} h of audio, index says {shard['hours']}")

    for fmt, ids in ids_by_format.items():
        dup = [i for i, n in ids.items() if n > 1]
        if dup:
            problems.append(f"{fmt}: {len(dup)} duplicated sample ids, e.g. {dup[0]!r}")
    if len(ids_by_format) > 1 and len({frozenset(c) for c in ids_by_format.values()}) > 1:
        problems.append(f"the {' and '.join(sorted(ids_by_format))} shards hold different sample ids")

    problems += _check_rejects(out, index)
    return problems


def _read_lengths(out: Path, index: dict):
    """{shard id: (frames, text tokens)} from lengths.parquet, or None with the problems found."""
    path = out / index["lengths"]["path"]
    if not path.is_file():
        return None, [f"{path}: missing"]
    if sha256_file(path) != index["lengths"]["sha256"]:
        return None, [f"{path}: sha256 differs from the index"]
    table = pq.read_table(path)
    if not schemas.matches_columns("lengths.v1", table.schema):
        return None, [f"{path}: columns differ from schemas/lengths.v1.json"]
    rows = table.to_pylist()
    problems = []
    if {r["shard"] for r in rows} != {s["id"] for s in index["shards"]}:
        problems.append(f"{path}: its shard ids differ from the index's")
    return {r["shard"]: (r["frames"], r["text_tokens"]) for r in rows}, problems


def _read_rows(out: Path, shard: dict, raw: bytes, shar_codes: dict, version: int):
    if shard["format"] == "webdataset":
        return _read_webdataset(raw, version)
    if shard["format"] == "parquet":
        return _read_parquet(raw, version)
    if shard["id"] not in shar_codes:
        raise ValueError("the index lists no codes file for this Shar shard")
    return _read_shar(raw, (out / shar_codes[shard["id"]]["path"]).read_bytes())


def _read_shar(cuts_raw: bytes, codes_raw: bytes):
    for meta, codes in shar.read_shard(cuts_raw, codes_raw):
        try:
            yield meta, schemas.check_codes(codes, f"{meta['id']}.npy")
        except schemas.SchemaError as err:
            yield meta, err


def _read_webdataset(raw: bytes, version: int):
    """(metadata, codes) per sample, codes decoded (an array) or the SchemaError that refused
    them; members must pair up as <key>.json + <key>.codes.npy (v1: <key>.codes)."""
    codes_member = schemas.CODES_MEMBER if version >= 2 else schemas.CODES_MEMBER_V1
    members: dict[str, dict[str, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        for info in tar:
            if not info.isfile():
                raise ValueError(f"member {info.name!r} is not a regular file")
            key, _, ext = info.name.partition(".")
            members.setdefault(key, {})[ext] = tar.extractfile(info).read()
    for key, fields in members.items():
        if set(fields) != {"json", codes_member}:
            raise ValueError(f"sample {key!r} has fields {sorted(fields)}, expected json and {codes_member}")
        meta = json.loads(fields["json"])
        try:
            if version >= 2:
                codes = schemas.codes_from_npy(fields[codes_member], f"{key}.{codes_member}")
            else:
                codes = schemas.unpack_codes(fields[codes_member], *meta["codes_shape"])
        except (schemas.SchemaError, KeyError, TypeError, ValueError) as err:
            codes = err if isinstance(err, schemas.SchemaError) else schemas.SchemaError(f"codes: {err!r}")
        yield meta, codes


def _read_parquet(raw: bytes, version: int):
    table = pq.read_table(pa.BufferReader(raw))
    if table.schema != schemas.arrow_schema(f"parquet.v{version}"):
        raise ValueError(f"columns differ from schemas/parquet.v{version}.json: {table.schema}")
    if version >= 2:
        codes = schemas.codes_from_arrow(table.column("codes"))  # raises for ragged or out-of-range codes
        for row, array in zip(table.drop_columns(["codes"]).to_pylist(), codes):
            yield row, array
        return
    for row in table.to_pylist():
        packed = row.pop("codes")
        row["codes_shape"] = [row.pop("codes_codebooks"), row.pop("codes_frames")]
        row["codes_format"] = schemas.CODES_FORMAT_V1
        try:
            yield row, schemas.unpack_codes(packed, *row["codes_shape"])
        except schemas.SchemaError as err:
            yield row, err


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
    if abs(t - meta["duration"] * FRAME_RATE) > 1:
        problems.append(f"{t} frames for {meta['duration']} s (expected ~{meta['duration'] * FRAME_RATE:.1f})")
    if max(meta["text_tokens"]) >= expect["vocab"]:
        problems.append(f"token id {max(meta['text_tokens'])} outside the BPE vocabulary of {expect['vocab']}")
    return problems


def _check_rejects(out: Path, index: dict) -> list[str]:
    path = out / index["rejects"]["path"]
    if not path.is_file():
        return [f"{path}: missing"]
    try:
        reasons = Counter(json.loads(line)["reason"] for line in path.open() if line.strip())
    except (ValueError, KeyError) as err:
        return [f"{path}: unreadable line: {err}"]
    if sum(reasons.values()) != index["rejects"]["total"] or dict(reasons) != index["rejects"]["by_reason"]:
        return [f"{path}: counts {dict(reasons)} differ from the index {index['rejects']['by_reason']}"]
    return []
