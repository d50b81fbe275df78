"""Parquet shards: one row per sample, the columns of schemas/parquet.v2.json; writer and reader.

Write: a row group of PARQUET_ROW_GROUP samples at a time, zstd, codes as a list<list<uint16>>
column ([codebooks][frames]) built from flat buffers (no Python object per code). Encodings,
measured (bench/bench_code_bytes.py): a dictionary of the codes column (at most the codebook size:
1,024 values for EnCodec) stores each code as a 10-bit index, 752 B per audio second for uniformly random codes, where
plain uint16 + zstd takes 1,045 and byte-stream-split + zstd 794 (and less than both on
low-entropy codes). Every Parquet reader decodes a dictionary; byte-stream-split on integers
needs Arrow 16 or later.
Read: only the row groups holding wanted rows are read (a remote shard by byte ranges,
storage.remote), and those a few rows at a time (READ_ROWS), from a file opened with a bounded
read buffer (`open_file`): what a reader holds does not grow with the row group, so a loader
worker that keeps 64 shards open holds 64 small batches, not 64 decoded row groups of 1,024
utterances (bench/bench_reader_memory.py). Strict: the columns must be those of parquet.v1 or
parquet.v2 (v1 shards, still read, hold 10-bit packed codes and their shape).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.codes import CODES_FORMAT_V1, DEFAULT_SPACE, CodesSpace, codes_from_arrow, codes_to_arrow, unpack_codes
from schemas.contract import SchemaError, arrow_schema

SUFFIX = ".parquet"
# Samples per row group: ~4 h of Libriheavy audio, ~12 MB of codes on disk. Readers (datasets,
# the trainer) hold a row group at a time, and 1024 rows amortize the codes column's dictionary
# page (4 kB).
PARQUET_ROW_GROUP = 1024
READ_ROWS = 8  # rows decoded at a time: ~0.15 MB of codes at Libriheavy lengths (a few copies while decoding)
READ_BUFFER = 64 << 10  # bytes of a column chunk read at a time (pages are decoded as they arrive)


def open_file(source) -> pq.ParquetFile:
    """A shard for `read`: column chunks streamed through a bounded buffer, not loaded whole."""
    return pq.ParquetFile(source, buffer_size=READ_BUFFER, pre_buffer=False)


def write(samples: list, f: BinaryIO, space: CodesSpace = DEFAULT_SPACE) -> None:
    """One shard's samples (schemas.sample.Sample) into `f`, each row group built and written
    before the next; codes checked against the codec's `space`."""
    schema = arrow_schema()
    with pq.ParquetWriter(f, schema, compression="zstd", use_dictionary=True) as writer:
        for start in range(0, len(samples), PARQUET_ROW_GROUP):
            group = samples[start : start + PARQUET_ROW_GROUP]
            columns = {
                "id": [s.id for s in group],
                "speaker": [s.speaker for s in group],
                "subset": [s.subset for s in group],
                "duration": [s.duration for s in group],
                "text": [s.text for s in group],
                "text_tokens": [list(s.text_tokens) for s in group],
                "codes": codes_to_arrow([s.codes for s in group], space.codebook_size),
                "recording_id": [s.recording_id for s in group],
                "start": [s.start for s in group],
            }
            writer.write_table(pa.Table.from_pydict(columns, schema=schema), row_group_size=len(group))


def read(
    file: pq.ParquetFile,
    wanted: np.ndarray | None = None,
    *,
    columns: list[str] | None = None,
    version: int | None = None,
    bad_codes: str = "raise",
    where: str = "codes",
    space: CodesSpace = DEFAULT_SPACE,
) -> Iterator[tuple[dict, np.ndarray]]:
    """(metadata, codes (codebooks, frames) uint16) for the positions in `wanted` (sorted;
    all when None), in shard order. `columns`: the metadata columns to read (None: all); v1's
    packed codes come with `codes_shape` and `codes_format`, as in its sample JSON. `version`:
    the schema version the file must have (None: its codes column says); `space`: the corpus's
    recorded codec (values < its codebook size). A row group whose codes
    do not decode raises `SchemaError` (`where` prefixes its message); with `bad_codes="yield"`
    a v1 row whose packed codes do not unpack is yielded with its error instead."""
    v1 = pa.types.is_binary(file.schema_arrow.field("codes").type)
    expected = 1 if v1 else 2
    if (
        version is not None
        and version != expected
        or not file.schema_arrow.equals(arrow_schema(f"parquet.v{expected}"))
    ):
        raise SchemaError(f"columns differ from schemas/parquet.v{version or expected}.json: {file.schema_arrow}")
    names = [c for c in file.schema_arrow.names if c != "codes"] if columns is None else list(columns)
    if v1:
        names += [c for c in ("codes_codebooks", "codes_frames") if c not in names]
    start = 0
    for group in range(file.num_row_groups):
        rows = file.metadata.row_group(group).num_rows
        if wanted is None or ((wanted >= start) & (wanted < start + rows)).any():
            batches = file.iter_batches(READ_ROWS, row_groups=[group], columns=names + ["codes"], use_threads=False)
            for batch in batches:
                yield from _rows(batch, start, wanted, names, v1, bad_codes, where, space)
                start += batch.num_rows
        else:
            start += rows


def _rows(
    batch: pa.RecordBatch, start: int, wanted, names: list[str], v1: bool, bad_codes: str, where: str, space: CodesSpace
):
    """The wanted rows of a batch that begins at row `start` of the file, decoded."""
    stop = start + batch.num_rows
    positions = np.arange(start, stop) if wanted is None else wanted[(wanted >= start) & (wanted < stop)]
    if not len(positions):
        return
    table = pa.Table.from_batches([batch]).take(pa.array(positions - start, pa.int64()))
    meta = {name: table.column(name).to_pylist() for name in names}
    if v1:
        codes = _v1_codes(table, meta, bad_codes)
    else:
        codes = codes_from_arrow(table.column("codes"), where, codebook_size=space.codebook_size)
    for i in range(len(positions)):
        yield {name: values[i] for name, values in meta.items()}, codes[i]


def _v1_codes(table: pa.Table, meta: dict, bad_codes: str) -> list:
    """Packed v1 codes unpacked; the shape columns become the sample JSON's codes_shape."""
    shapes = list(zip(meta.pop("codes_codebooks"), meta.pop("codes_frames")))
    meta["codes_shape"] = [list(shape) for shape in shapes]
    meta["codes_format"] = [CODES_FORMAT_V1] * len(shapes)
    codes = []
    for packed, shape in zip(table.column("codes").to_pylist(), shapes):
        try:
            codes.append(unpack_codes(packed, *shape))
        except SchemaError as err:
            if bad_codes != "yield":
                raise
            codes.append(err)
    return codes
