"""Shards: write a unit's samples as WebDataset tars and/or Parquet files.

In: the unit's samples in order (metadata + codes), the formats, a target shard size.
Out: `OUT/<format>/<subset>/<unit>-<k>.{tar,parquet}` (lhotse Shar: `OUT/lhotse_shar/<subset>/<unit>/`
`cuts.<k>.jsonl.gz` + `codes.<k>.tar`, pipeline/shar.py) under temporary names (`*.partial`),
fsynced; the caller renames them into place when the unit commits, so a renamed shard is whole
on disk even after a power loss. Bytes are deterministic (fixed tar headers, fixed Parquet
settings), so a re-run writes identical files.

Schema v2: a WebDataset sample is two members, `<key>.json` (schemas/sample.v2.json) and
`<key>.codes.npy` (a uint16 (codebooks, frames) .npy array). Cut ids contain '/', '.' and
spaces, which WebDataset would split into fields, so the key is `<unit>_<n>` and the real id
lives in the JSON. A Parquet shard has the columns of schemas/parquet.v2.json, codes as a
list<list<uint16>> column, written a row group at a time.
"""
from __future__ import annotations

import json
import os
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from pipeline import shar
from pipeline.fsutil import add_tar_member, sha256_file

# Bumped whenever what the shards stage writes changes (files, fields, ledger record), so that
# committed units are re-written from their codes rather than trusted.
# 3: texts without a letter or digit are rejected (no_words).
# 4: transcript agreement (text_mismatch rejects, each sample's text_cer in lengths) and
#    schema v2, codes as .npy members and list<list<uint16>> columns (v1 corpora are
#    re-written from their committed codes on the next run, without encoding audio again).
LAYOUT_VERSION = 4
SUFFIX = {"webdataset": ".tar", "parquet": ".parquet"}
FORMAT_DIRS = (*SUFFIX, shar.FORMAT)  # OUT/<format>/<subset>/...
TAR_MEMBER_OVERHEAD = 1024  # header block + average padding, for size estimates
NPY_HEADER = 128  # bytes before the codes in a .npy member
# Samples per Parquet row group: ~4 h of Libriheavy audio, ~12 MB of codes on disk. Readers
# (datasets, the trainer) hold a row group at a time, and 1024 rows amortize the codes
# column's dictionary page (4 kB).
PARQUET_ROW_GROUP = 1024


@dataclass
class Sample:
    id: str
    speaker: str
    subset: str
    duration: float
    text: str
    text_tokens: list[int]
    codes: np.ndarray  # (codebooks, frames) uint16
    recording_id: str
    start: float
    text_cer: float | None = None  # book vs ASR transcript (pipeline.text_agreement); lengths only
    source_texts: list[str] = field(default_factory=list)  # Libriheavy's [book, ASR] texts, as given

    def metadata(self) -> dict:
        return {
            "id": self.id, "speaker": self.speaker, "subset": self.subset,
            "duration": self.duration, "text": self.text, "text_tokens": list(self.text_tokens),
            "recording_id": self.recording_id, "start": self.start,
        }


@dataclass
class ShardFile:
    id: str  # <unit>-<k>: the same samples under this id in every format
    format: str
    path: str  # relative to OUT
    subset: str
    unit: str
    samples: int
    hours: float
    bytes: int
    sha256: str
    field: str | None = None  # lhotse_shar: the Shar field this file holds (cuts or codes)

    def record(self) -> dict:
        """The ledger/index record (no `field` key for the formats that have one file a shard)."""
        return {k: v for k, v in asdict(self).items() if k != "field" or v is not None}


def unit_files(fmt: str, unit: str) -> str:
    """Glob, relative to OUT/<format>/<subset>, matching every file of `unit` in `fmt`."""
    return f"{unit}/*" if fmt == shar.FORMAT else f"{unit}-*"


def remove_file(out: Path, rel: str) -> None:
    """Delete a committed shard file; a Shar unit folder it leaves empty goes too."""
    path = out / rel
    path.unlink(missing_ok=True)
    if rel.startswith(shar.FORMAT + "/") and path.parent.is_dir() and not any(path.parent.iterdir()):
        path.parent.rmdir()


def shard_id(unit: str, k: int) -> str:
    return f"{unit}-{k:03d}"


def shard_path(fmt: str, subset: str, unit: str, k: int) -> str:
    return f"{fmt}/{subset}/{shard_id(unit, k)}{SUFFIX[fmt]}"


def partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def split_by_size(samples: Iterable[Sample], target_bytes: float) -> Iterator[list[Sample]]:
    """Consecutive groups of samples, each closed once its estimated size reaches the target
    (as a tar, the larger format: 2 bytes per code). A generator: only the group being filled is
    in memory."""
    current, size = [], 0
    for s in samples:
        current.append(s)
        size += s.codes.size * 2 + NPY_HEADER + len(s.text) * 3 + 2 * TAR_MEMBER_OVERHEAD
        if size >= target_bytes:
            yield current
            current, size = [], 0
    if current:
        yield current


def _write_durably(path: Path, write) -> None:
    """`write(file)` into a new file at `path`, then flush it to disk before anyone renames it."""
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def write_webdataset(samples: list[Sample], path: Path, unit: str, first_index: int) -> None:
    _write_durably(path, lambda f: _write_tar(samples, f, unit, first_index))


def _write_tar(samples: list[Sample], f, unit: str, first_index: int) -> None:
    with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for n, s in enumerate(samples, start=first_index):
            key = f"{unit}_{n:06d}"
            meta = json.dumps(s.metadata(), ensure_ascii=False, sort_keys=True,
                              separators=(",", ":")).encode()
            add_tar_member(tar, f"{key}.json", meta)
            add_tar_member(tar, f"{key}.{schemas.CODES_MEMBER}", schemas.codes_to_npy(s.codes))


def write_parquet(samples: list[Sample], path: Path) -> None:
    _write_durably(path, lambda f: _write_row_groups(samples, f))


def _write_row_groups(samples: list[Sample], f) -> None:
    """One row group per PARQUET_ROW_GROUP samples, each built and written before the next.

    Encodings, measured (bench/bench_code_bytes.py): a dictionary of the codes column (at most
    1,024 values) stores each code as a 10-bit index, 752 B per audio second for uniformly
    random codes, where plain uint16 + zstd takes 1,045 and byte-stream-split + zstd 794 (and
    less than both on the sample's low-entropy codes). Every Parquet reader decodes a
    dictionary; byte-stream-split on integers needs Arrow 16 or later."""
    schema = schemas.arrow_schema()
    with pq.ParquetWriter(f, schema, compression="zstd", use_dictionary=True) as writer:
        for start in range(0, len(samples), PARQUET_ROW_GROUP):
            group = samples[start:start + PARQUET_ROW_GROUP]
            columns = {
                "id": [s.id for s in group],
                "speaker": [s.speaker for s in group],
                "subset": [s.subset for s in group],
                "duration": [s.duration for s in group],
                "text": [s.text for s in group],
                "text_tokens": [list(s.text_tokens) for s in group],
                "codes": schemas.codes_to_arrow([s.codes for s in group]),
                "recording_id": [s.recording_id for s in group],
                "start": [s.start for s in group],
            }
            writer.write_table(pa.Table.from_pydict(columns, schema=schema), row_group_size=len(group))


def write_unit_shards(samples: Iterable[Sample], out: Path, subset: str, unit: str, formats: list[str],
                      target_bytes: float) -> tuple[list[tuple[Path, ShardFile]], list[dict]]:
    """Write partial files for every format.

    Returns (partial path, final record) pairs, whose sha256 and sizes describe the partial
    files (renamed unchanged), and per shard the samples' lengths (codec frames, text tokens) in
    shard order, from which the trainer plans batches without reading shards. Shard k holds the
    same samples in every format. `samples` may be a generator: one shard's samples are in
    memory at a time.
    """
    written, lengths, first = [], [], 0
    for k, group in enumerate(split_by_size(_validated(samples, unit), target_bytes)):
        hours = round(sum(s.duration for s in group) / 3600, 6)
        lengths.append({"shard": shard_id(unit, k), "frames": [s.codes.shape[1] for s in group],
                        "text_tokens": [len(s.text_tokens) for s in group],
                        "speaker": [s.speaker for s in group], "recording_id": [s.recording_id for s in group],
                        "text_cer": [s.text_cer for s in group]})
        for fmt in formats:
            if fmt == shar.FORMAT:
                written += _write_shar(group, out, subset, unit, k, hours)
                continue
            rel = shard_path(fmt, subset, unit, k)
            tmp = partial(out / rel)
            tmp.parent.mkdir(parents=True, exist_ok=True)
            if fmt == "webdataset":
                write_webdataset(group, tmp, unit, first)
            else:
                write_parquet(group, tmp)
            written.append((tmp, ShardFile(id=shard_id(unit, k), format=fmt, path=rel, subset=subset, unit=unit,
                                           samples=len(group), hours=hours,
                                           bytes=tmp.stat().st_size, sha256=sha256_file(tmp))))
        first += len(group)
    return written, lengths


def _write_shar(group: list[Sample], out: Path, subset: str, unit: str, k: int, hours: float):
    """Shard k as lhotse Shar: one file per field, each its own record."""
    written = []
    for name, rel in shar.shard_paths(subset, unit, k).items():
        tmp = partial(out / rel)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        write = shar.write_cuts if name == "cuts" else shar.write_codes
        _write_durably(tmp, lambda f: write(group, f))
        written.append((tmp, ShardFile(id=shard_id(unit, k), format=shar.FORMAT, path=rel, subset=subset,
                                       unit=unit, samples=len(group), hours=hours, bytes=tmp.stat().st_size,
                                       sha256=sha256_file(tmp), field=name)))
    return written


def _validated(samples: Iterable[Sample], unit: str) -> Iterator[Sample]:
    """Nothing off-schema is written (Parquet: the Arrow schema enforces types as well)."""
    for s in samples:
        schemas.validate(f"sample.v{schemas.SAMPLE_VERSION}", s.metadata(), where=f"{unit}: sample {s.id!r}")
        yield s
