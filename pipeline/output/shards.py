"""Shards: a unit's samples written in every format asked for, durably, under temporary names.

In: the unit's samples in order (schemas.sample.Sample), the formats, a target shard size.
Out: `OUT/<format>/<subset>/<unit>-<k>.{tar,parquet}` (lhotse Shar: `OUT/lhotse_shar/<subset>/<unit>/`
`cuts.<k>.jsonl.gz` + `codes.<k>.tar`) under temporary names (`*.partial`), fsynced; the caller
renames them into place when the unit commits, so a renamed shard is whole on disk even after a
power loss. The bytes of each format are its module's in schemas/ (deterministic: fixed tar
headers, fixed Parquet settings), so a re-run writes identical files. Shard k of a unit holds the
same samples in every format, under the id `<unit>-<k>`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from functools import partial as bind
from pathlib import Path

from schemas import SAMPLE_VERSION, lhotse_shar, parquet, validate, webdataset
from schemas.codes import DEFAULT_SPACE, CodesSpace
from schemas.sample import Sample
from storage.files import write_durably
from storage.hashing import sha256_file

# Bumped whenever what the shards stage writes changes (files, fields, ledger record), so that
# committed units are re-written from their codes rather than trusted.
# 3: texts without a letter or digit are rejected (no_words).
# 4: transcript agreement (text_mismatch rejects, each sample's text_cer in lengths) and
#    schema v2, codes as .npy members and list<list<uint16>> columns (v1 corpora are
#    re-written from their committed codes on the next run, without encoding audio again).
LAYOUT_VERSION = 4
SUFFIX = {"webdataset": webdataset.SUFFIX, "parquet": parquet.SUFFIX}
FORMAT_DIRS = (*SUFFIX, lhotse_shar.FORMAT)  # OUT/<format>/<subset>/...


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
    return f"{unit}/*" if fmt == lhotse_shar.FORMAT else f"{unit}-*"


def remove_file(out: Path, rel: str) -> None:
    """Delete a committed shard file; a Shar unit folder it leaves empty goes too."""
    path = out / rel
    path.unlink(missing_ok=True)
    if rel.startswith(lhotse_shar.FORMAT + "/") and path.parent.is_dir() and not any(path.parent.iterdir()):
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
        size += s.codes.size * 2 + webdataset.NPY_HEADER + len(s.text) * 3 + 2 * webdataset.TAR_MEMBER_OVERHEAD
        if size >= target_bytes:
            yield current
            current, size = [], 0
    if current:
        yield current


def write_webdataset(
    samples: list[Sample], path: Path, unit: str, first_index: int, space: CodesSpace = DEFAULT_SPACE
) -> None:
    write_durably(path, lambda f: webdataset.write(samples, f, unit, first_index, space))


def write_parquet(samples: list[Sample], path: Path, space: CodesSpace = DEFAULT_SPACE) -> None:
    write_durably(path, lambda f: parquet.write(samples, f, space))


def write_unit_shards(
    samples: Iterable[Sample],
    out: Path,
    subset: str,
    unit: str,
    formats: list[str],
    target_bytes: float,
    space: CodesSpace = DEFAULT_SPACE,
) -> tuple[list[tuple[Path, ShardFile]], list[dict]]:
    """Write partial files for every format, codes checked against the codec's `space` (Shar:
    durations at its frame rate).

    Returns (partial path, final record) pairs, whose sha256 and sizes describe the partial
    files (renamed unchanged), and per shard the samples' lengths (codec frames, text tokens) in
    shard order, from which the trainer plans batches without reading shards. Shard k holds the
    same samples in every format. `samples` may be a generator: one shard's samples are in
    memory at a time.
    """
    written, lengths, first = [], [], 0
    for k, group in enumerate(split_by_size(_validated(samples, unit), target_bytes)):
        hours = round(sum(s.duration for s in group) / 3600, 6)
        lengths.append(
            {
                "shard": shard_id(unit, k),
                "frames": [s.codes.shape[1] for s in group],
                "text_tokens": [len(s.text_tokens) for s in group],
                "speaker": [s.speaker for s in group],
                "recording_id": [s.recording_id for s in group],
                "text_cer": [s.text_cer for s in group],
            }
        )
        for fmt in formats:
            if fmt == lhotse_shar.FORMAT:
                written += _write_shar(group, out, subset, unit, k, hours, space)
                continue
            rel = shard_path(fmt, subset, unit, k)
            tmp = partial(out / rel)
            tmp.parent.mkdir(parents=True, exist_ok=True)
            if fmt == "webdataset":
                write_webdataset(group, tmp, unit, first, space)
            else:
                write_parquet(group, tmp, space)
            written.append(_record(tmp, fmt, rel, subset, unit, k, group, hours))
        first += len(group)
    return written, lengths


def _write_shar(group: list[Sample], out: Path, subset: str, unit: str, k: int, hours: float, space: CodesSpace):
    """Shard k as lhotse Shar: one file per field, each its own record."""
    written = []
    for name, rel in lhotse_shar.shard_paths(subset, unit, k).items():
        tmp = partial(out / rel)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        write = lhotse_shar.write_cuts if name == "cuts" else lhotse_shar.write_codes
        write_durably(tmp, bind(write, group, space=space))
        written.append(_record(tmp, lhotse_shar.FORMAT, rel, subset, unit, k, group, hours, field=name))
    return written


def _record(
    tmp: Path,
    fmt: str,
    rel: str,
    subset: str,
    unit: str,
    k: int,
    group: list[Sample],
    hours: float,
    field: str | None = None,
) -> tuple[Path, ShardFile]:
    """A written partial file and the ledger/index record that describes it (its bytes, sha256)."""
    return tmp, ShardFile(
        id=shard_id(unit, k),
        format=fmt,
        path=rel,
        subset=subset,
        unit=unit,
        samples=len(group),
        hours=hours,
        bytes=tmp.stat().st_size,
        sha256=sha256_file(tmp),
        field=field,
    )


def _validated(samples: Iterable[Sample], unit: str) -> Iterator[Sample]:
    """Nothing off-schema is written (Parquet: the Arrow schema enforces types as well)."""
    for s in samples:
        validate(f"sample.v{SAMPLE_VERSION}", s.metadata(), where=f"{unit}: sample {s.id!r}")
        yield s
