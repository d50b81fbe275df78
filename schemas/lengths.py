"""lengths.parquet: every sample's codec frames, text tokens, speaker, recording and transcript
CER, one row per shard (schemas/lengths.v1.json), so a trainer plans batches and the report
counts without reading shards.

`LengthsWriter` streams shard rows, given in shard-id order, a row group (LENGTHS_ROW_GROUP
shards) at a time: writing holds one row group of Python objects, never the corpus's lengths,
and a reader that streams the file (the report, listen, verify) holds one row group decoded,
~64 x 5,000 samples. The file appears whole, at the end, or not at all.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.contract import LENGTHS_VERSION, arrow_schema
from storage.files import replacing

LENGTHS_ROW_GROUP = 64  # shards per row group


class LengthsWriter:
    """Rows of `{"shard", "frames", "text_tokens", ...}` in shard-id order into `path`. The
    optional columns are written only when `names` has them (ledger entries committed by an older
    version lack them)."""

    def __init__(self, path: Path, names: set[str]):
        self.path, self.rows, self.last = path, [], None
        self.schema = arrow_schema(f"lengths.v{LENGTHS_VERSION}", names)

    def __enter__(self) -> LengthsWriter:
        self._stack = ExitStack()  # closed in reverse: the writer, then the file moved into place
        tmp = self._stack.enter_context(replacing(self.path))
        self.writer = self._stack.enter_context(pq.ParquetWriter(tmp, self.schema, compression="zstd"))
        return self

    def add(self, row: dict) -> None:
        if self.last is not None and row["shard"] <= self.last:
            raise RuntimeError(f"lengths rows out of order: {row['shard']!r} after {self.last!r}")
        self.last = row["shard"]
        self.rows.append(row)
        if len(self.rows) == LENGTHS_ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self._flush()
        self._stack.__exit__(*exc)
