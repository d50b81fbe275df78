"""The corpus contract between the pipeline (which writes corpora) and the trainer and the
inspect tools (which read them).

The JSON files beside this package are the language-neutral definition: JSON Schema for the
index (index.v1/v2) and per-sample metadata (sample.v1/v2), column lists for Parquet shards
(parquet.v1/v2) and lengths.parquet (lengths.v1). The modules:
- `schemas.contract`: versions, the list of formats, validation against the schema files;
- `schemas.codes`: codes as the shards store them (v2 .npy and list<list<uint16>>, v1 packed),
  checked against the codec a corpus records (`CodesSpace`: codebook size, frame rate);
- `schemas.sample`: one utterance, the record every writer takes;
- one module per shard format, its writer beside its strict reader: `schemas.webdataset`,
  `schemas.parquet`, `schemas.lhotse_shar`;
- `schemas.lengths`: lengths.parquet's streaming writer;
- `schemas.reading`: a corpus read through its index (a folder, http(s)://, s3://).
The names below are the ones every consumer needs; import the rest from their modules.
"""

from schemas.codes import (
    CODES_FORMAT,
    CODES_FORMAT_V1,
    CodesSpace,
    check_codes,
    codes_from_arrow,
    codes_from_npy,
    codes_to_arrow,
    codes_to_npy,
    unpack_codes,
)
from schemas.contract import (
    FORMATS,
    INDEX_VERSION,
    LENGTHS_VERSION,
    PARQUET_VERSION,
    READABLE_VERSIONS,
    SAMPLE_VERSION,
    SchemaError,
    arrow_schema,
    codes_arrow_type,
    load_schema,
    matches_columns,
    validate,
)

__all__ = [
    "CODES_FORMAT",
    "CODES_FORMAT_V1",
    "FORMATS",
    "INDEX_VERSION",
    "LENGTHS_VERSION",
    "PARQUET_VERSION",
    "READABLE_VERSIONS",
    "SAMPLE_VERSION",
    "CodesSpace",
    "SchemaError",
    "arrow_schema",
    "check_codes",
    "codes_arrow_type",
    "codes_from_arrow",
    "codes_from_npy",
    "codes_to_arrow",
    "codes_to_npy",
    "load_schema",
    "matches_columns",
    "unpack_codes",
    "validate",
]
