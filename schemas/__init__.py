"""The contract between the corpus pipeline and the trainer.

The JSON files beside this module are the language-neutral definition (JSON Schema for the
index and per-sample metadata, a column list for Parquet). This module is the reference reader:
it loads and validates against those files and packs/unpacks codes. Both halves import it; the
trainer never imports pipeline code.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

SCHEMA_DIR = Path(__file__).resolve().parent
INDEX_VERSION = 1
SAMPLE_VERSION = 1
PARQUET_VERSION = 1
LENGTHS_VERSION = 1

CODES_FORMAT = "uint10le"
CODEBOOK_BITS = 10  # 1024 entries per codebook


class SchemaError(ValueError):
    """Data that does not match its schema; the message names the input and the problem."""


@lru_cache(maxsize=None)
def load_schema(name: str) -> dict:
    """Load `schemas/<name>.json`, e.g. "index.v1", "sample.v1", "parquet.v1"."""
    path = SCHEMA_DIR / f"{name}.json"
    if not path.exists():
        raise SchemaError(f"schema {name!r} not found under {SCHEMA_DIR}")
    return json.loads(path.read_text())


@lru_cache(maxsize=None)
def _validator(name: str):
    import jsonschema

    return jsonschema.Draft202012Validator(load_schema(name))


def validate(name: str, obj: object, where: str = "") -> None:
    """Raise SchemaError naming every violation of JSON Schema `name` in `obj`."""
    validator = _validator(name)
    if validator.is_valid(obj):  # the fast path: one pass, no error objects
        return
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.path))
    if errors:
        lines = [f"{'/'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors[:10]]
        raise SchemaError(f"{where or 'data'} does not match schema {name}:\n  " + "\n  ".join(lines))


def arrow_schema(name: str = f"parquet.v{PARQUET_VERSION}", names: set[str] | None = None):
    """The pyarrow schema of a column-list schema file: Parquet shards by default, or
    "lengths.v1" (OUT/lengths.parquet). With `names`, optional columns not in it are left out
    (a file written before they were added)."""
    import pyarrow as pa

    types = {
        "string": pa.string(),
        "float64": pa.float64(),
        "int32": pa.int32(),
        "uint8": pa.uint8(),
        "binary": pa.binary(),
        "list<uint16>": pa.list_(pa.uint16()),
        "list<int32>": pa.list_(pa.int32()),
        "list<float32>": pa.list_(pa.float32()),
        "list<string>": pa.list_(pa.string()),
    }
    columns = [c for c in load_schema(name)["columns"]
               if names is None or not c.get("optional") or c["name"] in names]
    return pa.schema([pa.field(c["name"], types[c["type"]], nullable=c["nullable"]) for c in columns])


def matches_columns(name: str, schema) -> bool:
    """True if a pyarrow schema holds the columns of `name` (optional ones may be missing)."""
    return schema.equals(arrow_schema(name, set(schema.names)))


def pack_codes(codes: np.ndarray) -> bytes:
    """Pack a (codebooks, frames) array of values < 1024 into 10 bits each, little-endian.

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


def unpack_codes(data: bytes, codebooks: int, frames: int) -> np.ndarray:
    """Inverse of pack_codes: bytes -> uint16 array of shape (codebooks, frames)."""
    n = codebooks * frames
    if n % 4 or len(data) != n * CODEBOOK_BITS // 8:
        raise SchemaError(
            f"packed codes: {len(data)} bytes cannot hold shape ({codebooks}, {frames}) "
            f"at {CODEBOOK_BITS} bits per code"
        )
    raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, 5)
    padded = np.zeros((raw.shape[0], 8), dtype=np.uint8)
    padded[:, :5] = raw
    words = padded.view("<u8").reshape(-1)
    mask = np.uint64((1 << CODEBOOK_BITS) - 1)
    out = np.stack([(words >> np.uint64(s)) & mask for s in (0, 10, 20, 30)], axis=1)
    return out.reshape(codebooks, frames).astype(np.uint16)
