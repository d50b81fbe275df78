"""Verify: check a finished corpus against its index and the schemas, without trusting either.

In: OUT. Out: a list of problems, each naming the file and what is wrong (empty = valid).
Checks the index against schemas/index.v1.json; every shard's size and sha256; every sample's
metadata against schemas/sample.v1.json, its codes' shape and range, its tokens against the BPE
vocabulary, frames against duration (75 per second); counts and hours per shard; ids unique
within a format and the same across formats; the rejects file against the index's counts.
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

import pyarrow as pa
import pyarrow.parquet as pq

import numpy as np

import schemas
from pipeline import shar
from pipeline.fsutil import sha256_file

FRAME_RATE = 75


def verify(out: Path) -> list[str]:
    problems: list[str] = []
    index_path = out / "index.json"
    try:
        index = json.loads(index_path.read_text())
        schemas.validate("index.v1", index, where=str(index_path))
    except FileNotFoundError:
        return [f"{index_path}: missing (the run did not finish; run the DAG again)"]
    except (ValueError, schemas.SchemaError) as err:
        return [f"{index_path}: {err}"]

    bpe = index["provenance"]["bpe"]
    bpe_path = out / bpe["model"]
    if not bpe_path.is_file() or sha256_file(bpe_path) != bpe["sha256"]:
        problems.append(f"{bpe_path}: missing or sha256 differs from the index")
    expect = {"codebooks": index["codes"]["codebooks"], "vocab": bpe["vocab_size"]}

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
            rows = list(_read_rows(out, shard, raw, shar_codes))
        except Exception as err:  # any unreadable shard is a finding, not a crash
            problems.append(f"{where}: unreadable: {type(err).__name__}: {err}")
            continue
        for meta, codes_bytes in rows:
            problems += [f"{where}: sample {meta.get('id')!r}: {p}" for p in _check_sample(meta, codes_bytes, expect)]
        ids_by_format.setdefault(shard["format"], Counter()).update(m.get("id") for m, _ in rows)
        if len(rows) != shard["samples"]:
            problems.append(f"{where}: {len(rows)} samples, index says {shard['samples']}")
        actual = ([m.get("codes_shape", [0, 0])[1] for m, _ in rows],
                  [len(m.get("text_tokens", [])) for m, _ in rows])
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


def _read_rows(out: Path, shard: dict, raw: bytes, shar_codes: dict):
    if shard["format"] == "webdataset":
        return _read_webdataset(raw)
    if shard["format"] == "parquet":
        return _read_parquet(raw)
    if shard["id"] not in shar_codes:
        raise ValueError("the index lists no codes file for this Shar shard")
    return _read_shar(raw, (out / shar_codes[shard["id"]]["path"]).read_bytes())


def _read_shar(cuts_raw: bytes, codes_raw: bytes):
    for meta, codes in shar.read_shard(cuts_raw, codes_raw):
        yield {**meta, "codes_format": schemas.CODES_FORMAT}, codes


def _read_webdataset(raw: bytes):
    """(metadata, packed codes) per sample; members must pair up as <key>.json + <key>.codes."""
    members: dict[str, dict[str, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        for info in tar:
            if not info.isfile():
                raise ValueError(f"member {info.name!r} is not a regular file")
            key, _, ext = info.name.partition(".")
            members.setdefault(key, {})[ext] = tar.extractfile(info).read()
    for key, fields in members.items():
        if set(fields) != {"json", "codes"}:
            raise ValueError(f"sample {key!r} has fields {sorted(fields)}, expected json and codes")
        yield json.loads(fields["json"]), fields["codes"]


def _read_parquet(raw: bytes):
    table = pq.read_table(pa.BufferReader(raw))
    if table.schema != schemas.arrow_schema():
        raise ValueError(f"columns differ from schemas/parquet.v1.json: {table.schema}")
    for row in table.to_pylist():
        codes = row.pop("codes")
        row["codes_shape"] = [row.pop("codes_codebooks"), row.pop("codes_frames")]
        row["codes_format"] = schemas.CODES_FORMAT
        yield row, codes


def _check_sample(meta: dict, codes_bytes: bytes, expect: dict) -> list[str]:
    try:
        schemas.validate("sample.v1", meta)
    except schemas.SchemaError as err:
        return [str(err)]
    problems = []
    k, t = meta["codes_shape"]
    if k != expect["codebooks"]:
        problems.append(f"{k} codebooks, the index says {expect['codebooks']}")
    if isinstance(codes_bytes, np.ndarray):  # decoded already (lhotse Shar)
        if codes_bytes.size and codes_bytes.max() >= 1 << schemas.CODEBOOK_BITS:
            problems.append(f"code {codes_bytes.max()} outside the codebook of {1 << schemas.CODEBOOK_BITS}")
    else:
        try:
            schemas.unpack_codes(codes_bytes, k, t)
        except schemas.SchemaError as err:
            problems.append(str(err))
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
