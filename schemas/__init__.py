"""The contract between the corpus pipeline and the trainer.

The JSON files beside this module are the language-neutral definition (JSON Schema for the
index and per-sample metadata, a column list for Parquet). This module is the reference reader:
it loads and validates against those files and turns codes into bytes and back. Both halves
import it; the trainer never imports pipeline code.

Codes, (codebooks, frames) arrays of values < 1024, are stored as:
- v2 (written now): a standard `.npy` member (uint16) in WebDataset tars, and a
  list<list<uint16>> column ([codebooks][frames]) in Parquet: stock readers decode both.
- v1 (still read): 10 bits per code packed in bytes ("uint10le", `pack_codes`/`unpack_codes`).
"""
from __future__ import annotations

import io
import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from tokens.constants import CODEBOOK_SIZE  # values < 1024: the token contract

SCHEMA_DIR = Path(__file__).resolve().parent
INDEX_VERSION = 2  # what the pipeline writes; READABLE_VERSIONS are what readers accept
SAMPLE_VERSION = 2
PARQUET_VERSION = 2
LENGTHS_VERSION = 1
READABLE_VERSIONS = (1, 2)

CODES_FORMAT = "uint16"  # v2: .npy member / list<list<uint16>> column
CODES_FORMAT_V1 = "uint10le"
CODES_MEMBER = "codes.npy"  # v2 WebDataset member: <key>.codes.npy
CODES_MEMBER_V1 = "codes"
CODEBOOK_BITS = 10  # v1 packing: 1024 entries per codebook


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
        "list<list<uint16>>": codes_arrow_type(),
    }
    columns = [c for c in load_schema(name)["columns"]
               if names is None or not c.get("optional") or c["name"] in names]
    return pa.schema([pa.field(c["name"], types[c["type"]], nullable=c["nullable"]) for c in columns])


def matches_columns(name: str, schema) -> bool:
    """True if a pyarrow schema holds the columns of `name` (optional ones may be missing)."""
    return schema.equals(arrow_schema(name, set(schema.names)))


def check_codes(codes: np.ndarray, where: str = "codes") -> np.ndarray:
    """`codes` as a uint16 (codebooks, frames) array, or SchemaError if it is not one of values
    < 1024."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise SchemaError(f"{where}: must be 2-D (codebooks, frames), got shape {codes.shape}")
    if codes.dtype.kind not in "ui":
        raise SchemaError(f"{where}: must hold integers, got {codes.dtype}")
    if codes.size and (codes.min() < 0 or codes.max() >= CODEBOOK_SIZE):
        raise SchemaError(f"{where}: values must lie in [0, {CODEBOOK_SIZE}), got {codes.min()}..{codes.max()}")
    return codes.astype(np.uint16, copy=False)


def codes_to_npy(codes: np.ndarray) -> bytes:
    """A v2 WebDataset codes member: a .npy file (format 1.0, little-endian uint16, row-major),
    the same bytes for the same codes."""
    out = io.BytesIO()
    np.lib.format.write_array(out, np.ascontiguousarray(check_codes(codes), dtype="<u2"),
                              version=(1, 0), allow_pickle=False)
    return out.getvalue()


def codes_from_npy(data: bytes, where: str = "codes") -> np.ndarray:
    """Inverse of codes_to_npy; never unpickles, and refuses anything but a 2-D uint16 array."""
    try:
        codes = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    except (ValueError, EOFError) as err:
        raise SchemaError(f"{where}: not a readable .npy array: {err}") from None
    if codes.dtype.kind != "u" or codes.dtype.itemsize != 2:
        raise SchemaError(f"{where}: dtype {codes.dtype}, expected uint16")
    return check_codes(codes, where)


def codes_arrow_type():
    """The v2 Parquet codes column type: [codebooks][frames] of uint16, no nulls."""
    import pyarrow as pa

    return pa.list_(pa.field("item", pa.list_(pa.field("item", pa.uint16(), nullable=False)), nullable=False))


def codes_to_arrow(arrays: list[np.ndarray]):
    """One list<list<uint16>> Arrow array from (codebooks, frames) arrays, built from their
    concatenated values and offsets (no Python object per code)."""
    import pyarrow as pa

    arrays = [check_codes(a) for a in arrays]
    rows = np.array([a.shape[0] for a in arrays], dtype=np.int64)
    lists = np.repeat([a.shape[1] for a in arrays], rows).astype(np.int64)
    values = pa.array(np.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.zeros(0, np.uint16),
                      pa.uint16())
    inner = pa.ListArray.from_arrays(pa.array(_offsets(lists), pa.int32()), values)
    outer = pa.ListArray.from_arrays(pa.array(_offsets(rows), pa.int32()), inner)
    return outer.cast(codes_arrow_type())


def _offsets(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)])


def codes_from_arrow(column, where: str = "codes") -> list[np.ndarray]:
    """Inverse of codes_to_arrow for an Arrow array or chunked array (a table's column, any slice
    of it): one (codebooks, frames) uint16 array per row, views into one flat buffer.
    SchemaError for ragged rows (codebooks of different lengths)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        return [a for chunk in column.chunks for a in codes_from_arrow(chunk, where)]
    codebooks = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    inner = pc.list_flatten(column)
    frames = pc.list_value_length(inner).to_numpy(zero_copy_only=False)
    values = pc.list_flatten(inner).to_numpy(zero_copy_only=False)
    values = check_codes(values.reshape(1, -1), where).reshape(-1)  # the range, once per column
    out, row_start, value_start = [], 0, 0
    for k in codebooks.tolist():
        t = int(frames[row_start]) if k else 0
        if k and (frames[row_start:row_start + k] != t).any():
            raise SchemaError(f"{where}: row {len(out)} has codebooks of different lengths "
                              f"{sorted(set(frames[row_start:row_start + k].tolist()))}")
        out.append(values[value_start:value_start + k * t].reshape(k, t))
        row_start, value_start = row_start + k, value_start + k * t
    return out


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
