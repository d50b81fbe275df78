"""Codes, (codebooks, frames) arrays of values < the codec's codebook size, as the shards store them.

- v2 (written now): a standard `.npy` file (uint16) as a WebDataset member, and a
  list<list<uint16>> column ([codebooks][frames]) in Parquet: stock readers decode both.
- v1 (still read): 10 bits per code packed in bytes ("uint10le", `unpack_codes`): four codes,
  codebook by codebook, in one 40-bit little-endian integer of 5 bytes.
Every decoder refuses what is not a 2-D array of values < the codebook size a corpus records
(`CodesSpace`: index.json's provenance.codec; absent in old corpora, which are EnCodec's 1024),
and never unpickles. uint16 holds every codebook size up to 65,536.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from schemas.contract import SchemaError, codes_arrow_type
from tokens.codecs import DEFAULT_CODEC, spec

CODES_FORMAT = "uint16"  # v2: .npy member / list<list<uint16>> column
CODES_FORMAT_V1 = "uint10le"
CODEBOOK_BITS = 10  # v1 packing: 1024 entries per codebook
MAX_CODEBOOK_SIZE = 1 << 16  # what uint16 codes hold


@dataclass(frozen=True)
class CodesSpace:
    """What a corpus's codes are, as its index.json records them (provenance.codec): values
    < `codebook_size`, `frame_rate` frames per second of `sample_rate` Hz audio. The default is
    EnCodec 24 kHz's, what a record without these keys (an older corpus) means."""

    codebook_size: int = spec(DEFAULT_CODEC).codebook_size
    frame_rate: float = spec(DEFAULT_CODEC).frame_rate
    sample_rate: int = spec(DEFAULT_CODEC).sample_rate
    model: str = DEFAULT_CODEC

    def __post_init__(self):
        if not 1 <= self.codebook_size <= MAX_CODEBOOK_SIZE:
            raise SchemaError(f"codebook size {self.codebook_size}: uint16 codes hold 1 to {MAX_CODEBOOK_SIZE}")

    @classmethod
    def of_record(cls, codec: dict) -> CodesSpace:
        """From a provenance `codec` record (index.json, or what a checkpoint keeps of it)."""
        default = cls()
        return cls(
            codebook_size=codec.get("codebook_size", default.codebook_size),
            frame_rate=codec.get("frame_rate", default.frame_rate),
            sample_rate=codec.get("sample_rate", default.sample_rate),
            model=codec.get("model", default.model),
        )

    @classmethod
    def of_index(cls, index: dict) -> CodesSpace:
        """From a corpus's index.json (its provenance.codec; codes.frame_rate is the same number)."""
        return cls.of_record(index.get("provenance", {}).get("codec", {}))


DEFAULT_SPACE = CodesSpace()  # a corpus with no codec record: EnCodec 24 kHz


def check_codes(codes: np.ndarray, where: str = "codes", codebook_size: int = CodesSpace.codebook_size) -> np.ndarray:
    """`codes` as a uint16 (codebooks, frames) array, or SchemaError if it is not one of values
    < `codebook_size` (the corpus's recorded size; default EnCodec's 1024)."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise SchemaError(f"{where}: must be 2-D (codebooks, frames), got shape {codes.shape}")
    if codes.dtype.kind not in "ui":
        raise SchemaError(f"{where}: must hold integers, got {codes.dtype}")
    if codes.size and (codes.min() < 0 or codes.max() >= codebook_size):
        raise SchemaError(f"{where}: values must lie in [0, {codebook_size}), got {codes.min()}..{codes.max()}")
    return codes.astype(np.uint16, copy=False)


def codes_to_npy(codes: np.ndarray, codebook_size: int = CodesSpace.codebook_size) -> bytes:
    """A v2 WebDataset codes member: a .npy file (format 1.0, little-endian uint16, row-major),
    the same bytes for the same codes."""
    out = io.BytesIO()
    codes = check_codes(codes, codebook_size=codebook_size)
    np.lib.format.write_array(out, np.ascontiguousarray(codes, dtype="<u2"), version=(1, 0), allow_pickle=False)
    return out.getvalue()


def codes_from_npy(data: bytes, where: str = "codes", codebook_size: int = CodesSpace.codebook_size) -> np.ndarray:
    """Inverse of codes_to_npy; never unpickles, and refuses anything but a 2-D uint16 array."""
    try:
        codes = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    except (ValueError, EOFError) as err:
        raise SchemaError(f"{where}: not a readable .npy array: {err}") from None
    if codes.dtype.kind != "u" or codes.dtype.itemsize != 2:
        raise SchemaError(f"{where}: dtype {codes.dtype}, expected uint16")
    return check_codes(codes, where, codebook_size)


def codes_to_arrow(arrays: list[np.ndarray], codebook_size: int = CodesSpace.codebook_size):
    """One list<list<uint16>> Arrow array from (codebooks, frames) arrays, built from their
    concatenated values and offsets (no Python object per code)."""
    import pyarrow as pa

    arrays = [check_codes(a, codebook_size=codebook_size) for a in arrays]
    rows = np.array([a.shape[0] for a in arrays], dtype=np.int64)
    lists = np.repeat([a.shape[1] for a in arrays], rows).astype(np.int64)
    values = pa.array(
        np.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.zeros(0, np.uint16), pa.uint16()
    )
    inner = pa.ListArray.from_arrays(pa.array(_offsets(lists), pa.int32()), values)
    outer = pa.ListArray.from_arrays(pa.array(_offsets(rows), pa.int32()), inner)
    return outer.cast(codes_arrow_type())


def _offsets(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)])


def codes_from_arrow(column, where: str = "codes", codebook_size: int = CodesSpace.codebook_size) -> list[np.ndarray]:
    """Inverse of codes_to_arrow for an Arrow array or chunked array (a table's column, any slice
    of it): one (codebooks, frames) uint16 array per row, views into one flat buffer.
    SchemaError for ragged rows (codebooks of different lengths)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        return [a for chunk in column.chunks for a in codes_from_arrow(chunk, where, codebook_size)]
    codebooks = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    inner = pc.list_flatten(column)
    frames = pc.list_value_length(inner).to_numpy(zero_copy_only=False)
    values = pc.list_flatten(inner).to_numpy(zero_copy_only=False)
    values = check_codes(values.reshape(1, -1), where, codebook_size).reshape(-1)  # the range, once per column
    out, row_start, value_start = [], 0, 0
    for k in codebooks.tolist():
        t = int(frames[row_start]) if k else 0
        if k and (frames[row_start : row_start + k] != t).any():
            raise SchemaError(
                f"{where}: row {len(out)} has codebooks of different lengths "
                f"{sorted(set(frames[row_start : row_start + k].tolist()))}"
            )
        out.append(values[value_start : value_start + k * t].reshape(k, t))
        row_start, value_start = row_start + k, value_start + k * t
    return out


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
