"""Generated corpora in the real output layout, for trainer tests and benchmarks.

In: a folder and, per shard, its samples' (speaker, recording, codec frames, text tokens). Out:
`index.json` (schemas/index.v2.json), `lengths.parquet` and WebDataset and/or Parquet shards
written by the pipeline's own writers (pipeline.output.shards, schemas.lengths), with random
codes and tokens from a seeded generator: any number of speakers, books and shards in seconds, without
audio or a codec. The codes mean nothing; `provenance.codec.weights` is "random".
`version=1` writes a schema v1 corpus instead (10-bit packed codes), as valle-corpus wrote them
before v2, so tests can check that v1 corpora stay readable.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from pipeline.output.shards import shard_id, shard_path, write_parquet, write_webdataset
from schemas.codes import CODEBOOK_BITS
from schemas.contract import SchemaError
from schemas.lengths import LengthsWriter
from schemas.sample import Sample
from storage.hashing import sha256_file

VOCAB = 128
# index.json's provenance for generated data: random codes, a placeholder BPE model.
PROVENANCE = {
    "bpe": {"model": "text/bpe.model", "model_type": "bpe", "sha256": "0" * 64, "vocab_size": VOCAB},
    "codec": {
        "bandwidth_kbps": 6.0,
        "codebook_size": 1024,
        "codebooks": 8,
        "frame_rate": 75,
        "model": "encodec_24khz",
        "sample_rate": 24000,
        "weights": "random",
        "weights_sha256": "0" * 64,
        "weights_source": "generated",
    },
    "text": {"field": "book", "normalization": "nfkc-ws-v1"},
}


@dataclass(frozen=True)
class Cut:
    speaker: str
    recording: str  # LibriLight style: <subset>/<speaker>/<book>/<chapter>
    frames: int
    text_tokens: int


def speaker_blocks(
    shards: int, speakers_per_shard: int, cuts_per_speaker: int, frames: int = 16, text_tokens: int = 4
) -> list[list[Cut]]:
    """Shards of consecutive cuts, one speaker (and book) after another, as Libriheavy's are."""
    out, n = [], 0
    for _ in range(shards):
        shard = []
        for _ in range(speakers_per_shard):
            speaker = str(n)
            shard += [Cut(speaker, f"large/{speaker}/book_{n}/chapter_{n}", frames, text_tokens)] * cuts_per_speaker
            n += 1
        out.append(shard)
    return out


def write_corpus(
    root: Path,
    shards: list[list[Cut]],
    *,
    formats=("webdataset",),
    dev: list[list[Cut]] = (),
    seed: int = 0,
    version: int = schemas.INDEX_VERSION,
) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    files, lengths, subsets = [], [], {}
    for subset, role, groups in (("large", "train", shards), ("dev", "dev", dev)):
        if not groups:
            continue
        count = 0
        for k, cuts in enumerate(groups):
            unit = f"{subset}-000000"
            samples = [
                Sample(
                    id=f"{c.recording}_{count + i}",
                    speaker=c.speaker,
                    subset=subset,
                    duration=c.frames / 75,
                    text="generated",
                    recording_id=c.recording,
                    start=0.0,
                    text_tokens=rng.integers(4, VOCAB, c.text_tokens).tolist(),
                    codes=rng.integers(0, 1024, (8, c.frames)).astype(np.uint16),
                )
                for i, c in enumerate(cuts)
            ]
            lengths.append(
                {
                    "shard": shard_id(unit, k),
                    "frames": [c.frames for c in cuts],
                    "text_tokens": [c.text_tokens for c in cuts],
                    "speaker": [c.speaker for c in cuts],
                    "recording_id": [c.recording for c in cuts],
                }
            )
            for fmt in formats:
                rel = shard_path(fmt, subset, unit, k)
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                writers = {
                    "webdataset": (write_webdataset, write_webdataset_v1),
                    "parquet": (write_parquet, write_parquet_v1),
                }
                write = writers[fmt][version == 1]
                if fmt == "webdataset":
                    write(samples, root / rel, unit, count)
                else:
                    write(samples, root / rel)
                files.append(
                    {
                        "id": shard_id(unit, k),
                        "format": fmt,
                        "path": rel,
                        "subset": subset,
                        "unit": unit,
                        "samples": len(cuts),
                        "hours": round(sum(c.frames for c in cuts) / 75 / 3600, 6),
                        "bytes": (root / rel).stat().st_size,
                        "sha256": sha256_file(root / rel),
                    }
                )
            count += len(cuts)
        subsets[subset] = {
            "role": role,
            "samples": count,
            "hours": round(sum(c.frames for g in groups for c in g) / 75 / 3600, 6),
        }
    write_lengths(root / "lengths.parquet", lengths)
    (root / "rejects.jsonl").write_text("")
    index = {
        "format": "valle-corpus-index",
        "version": version,
        "pipeline_version": "generated",
        "dag": {"name": "generated", "fingerprint": "0" * 64},
        "provenance": PROVENANCE,
        "codes": {
            "format": schemas.CODES_FORMAT if version == 2 else schemas.CODES_FORMAT_V1,
            "codebooks": 8,
            "frame_rate": 75,
        },
        "subsets": subsets,
        "shards": files,
        "lengths": {
            "path": "lengths.parquet",
            "bytes": (root / "lengths.parquet").stat().st_size,
            "sha256": sha256_file(root / "lengths.parquet"),
        },
        "rejects": {"path": "rejects.jsonl", "total": 0, "by_reason": {}},
    }
    (root / "index.json").write_text(json.dumps(index, indent=1, sort_keys=True))
    return root


def _v1_metadata(s: Sample) -> dict:
    return {**s.metadata(), "codes_shape": list(s.codes.shape), "codes_format": schemas.CODES_FORMAT_V1}


def write_webdataset_v1(samples: list[Sample], path: Path, unit: str, first_index: int) -> None:
    """A schema v1 tar: <key>.json (sample.v1) + <key>.codes (packed), as written before v2."""
    with tarfile.open(path, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for n, s in enumerate(samples, start=first_index):
            meta = json.dumps(_v1_metadata(s), ensure_ascii=False, sort_keys=True, separators=(",", ":"))
            for name, data in ((f"{unit}_{n:06d}.json", meta.encode()), (f"{unit}_{n:06d}.codes", pack_codes(s.codes))):
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))


def write_parquet_v1(samples: list[Sample], path: Path) -> None:
    """A schema v1 Parquet shard (parquet.v1: packed codes + codes_codebooks/codes_frames)."""
    rows = [
        {k: v for k, v in _v1_metadata(s).items() if k not in ("codes_shape", "codes_format")}
        | {"codes": pack_codes(s.codes), "codes_codebooks": s.codes.shape[0], "codes_frames": s.codes.shape[1]}
        for s in samples
    ]
    pq.write_table(
        pa.Table.from_pylist(rows, schema=schemas.arrow_schema("parquet.v1")),
        path,
        compression="zstd",
        row_group_size=max(1, len(rows)),
    )


def write_lengths(path: Path, rows: list[dict]) -> None:
    """lengths.parquet from rows in any order, one per shard (the pipeline streams them in order)."""
    rows = sorted(rows, key=lambda r: r["shard"])
    names = set.intersection(*(set(r) for r in rows)) if rows else set()
    with LengthsWriter(path, names) as writer:
        for row in rows:
            writer.add(row)


def pack_codes(codes: np.ndarray) -> bytes:
    """v1 codes: pack a (codebooks, frames) array of values < 1024 into 10 bits each, little-endian.

    Values are taken in row-major order (codebook by codebook) in groups of four, each group
    stored as one 40-bit little-endian integer in 5 bytes: 8 codebooks x T frames -> 10*T bytes.
    """
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise SchemaError(f"codes must be 2-D (codebooks, frames), got shape {codes.shape}")
    if codes.size and (codes.min() < 0 or codes.max() >= 1 << CODEBOOK_BITS):
        raise SchemaError(f"codes must lie in [0, {1 << CODEBOOK_BITS}), got {codes.min()}..{codes.max()}")
    flat = codes.astype(np.uint64).reshape(-1)
    if flat.size % 4:
        raise SchemaError(f"codes.size must be a multiple of 4, got {flat.size} (shape {codes.shape})")
    groups = flat.reshape(-1, 4)
    words = groups[:, 0] | (groups[:, 1] << 10) | (groups[:, 2] << 20) | (groups[:, 3] << 30)
    return words.astype("<u8").view(np.uint8).reshape(-1, 8)[:, :5].tobytes()
