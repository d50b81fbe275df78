"""Versions, formats and validation: the schema files beside this module, loaded and applied.

In: a schema's name ("index.v2", "sample.v2", "parquet.v2", "lengths.v1") and data. Out:
`SchemaError` naming every violation, and the pyarrow schema of a column-list file. The JSON
files are the language-neutral definition (JSON Schema for the index and per-sample metadata, a
column list for Parquet shards and lengths.parquet).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

SCHEMA_DIR = Path(__file__).resolve().parent
INDEX_VERSION = 2  # what the pipeline writes; READABLE_VERSIONS are what readers accept
SAMPLE_VERSION = 2
PARQUET_VERSION = 2
LENGTHS_VERSION = 1
READABLE_VERSIONS = (1, 2)
# The shard formats, in the order a reader's "auto" takes them (WebDataset streams with the
# fewest requests). One module each: schemas.webdataset, schemas.parquet, schemas.lhotse_shar.
FORMATS = ("webdataset", "parquet", "lhotse_shar")


class SchemaError(ValueError):
    """Data that does not match its schema; the message names the input and the problem."""


@cache
def load_schema(name: str) -> dict:
    """Load `schemas/<name>.json`, e.g. "index.v1", "sample.v1", "parquet.v1"."""
    path = SCHEMA_DIR / f"{name}.json"
    if not path.exists():
        raise SchemaError(f"schema {name!r} not found under {SCHEMA_DIR}")
    return json.loads(path.read_text())


@cache
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
    columns = [c for c in load_schema(name)["columns"] if names is None or not c.get("optional") or c["name"] in names]
    return pa.schema([pa.field(c["name"], types[c["type"]], nullable=c["nullable"]) for c in columns])


def matches_columns(name: str, schema) -> bool:
    """True if a pyarrow schema holds the columns of `name` (optional ones may be missing)."""
    return schema.equals(arrow_schema(name, set(schema.names)))


def codes_arrow_type():
    """The v2 Parquet codes column type: [codebooks][frames] of uint16, no nulls."""
    import pyarrow as pa

    return pa.list_(pa.field("item", pa.list_(pa.field("item", pa.uint16(), nullable=False)), nullable=False))
