"""A corpus read through its index, wherever it is (a folder, http(s)://, s3://).

In: a location holding index.json. Out: the index, checked against its schema version; its
shards of one format (`Shard`, in index order); any shard's samples, read by that format's
strict reader (schemas.webdataset, schemas.parquet, schemas.lhotse_shar) through
storage.remote: WebDataset and Shar streamed, Parquet row group by row group. The trainer,
verify, report and listen all read corpora here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from schemas import lhotse_shar, parquet, webdataset
from schemas.codes import DEFAULT_SPACE, CodesSpace
from schemas.contract import FORMATS, READABLE_VERSIONS, SchemaError, validate
from storage.remote import join, open_random_access, open_stream, read_bytes


@dataclass(frozen=True)
class Shard:
    id: str
    uri: str  # lhotse Shar: the cuts file
    format: str
    subset: str
    samples: int
    codes_uri: str | None = None  # lhotse Shar: the codes file
    space: CodesSpace = DEFAULT_SPACE  # the corpus's codec as its index records it: codes are checked by it


def read_index(location: str, error: type[Exception] = SchemaError) -> dict:
    """A finished corpus's index.json (a folder or a URL), checked against its schema. A missing
    or too new index raises `error` (each tool's own error type), with what to do."""
    try:
        index = json.loads(read_bytes(join(location, "index.json")))
    except FileNotFoundError:
        raise error(
            f"{location}: no index.json: the corpus is not finished (run valle-prep run again; "
            f"valle-prep status shows how far it got)"
        ) from None
    version = index.get("version") if isinstance(index, dict) else None
    if version not in READABLE_VERSIONS:
        raise error(
            f"{join(location, 'index.json')}: index version {version!r}; this valle-corpus reads "
            f"versions {list(READABLE_VERSIONS)} (a newer valle-corpus wrote it: update this one)"
        )
    validate(f"index.v{version}", index, where=join(location, "index.json"))
    return index


def index_shards(location: str, index: dict, fmt: str = "auto", error: type[Exception] = SchemaError) -> list[Shard]:
    """Every shard of one format in an index, in index order; "auto": the first of FORMATS the
    corpus has. Each carries the codec the index records (`CodesSpace`), which its reader checks
    the codes by."""
    formats = {s["format"] for s in index["shards"]}
    chosen = next((f for f in FORMATS if f in formats), None) if fmt == "auto" else fmt
    if chosen not in formats:
        raise error(f"{location}: has no {chosen} shards (it has {sorted(formats)})")
    files = [s for s in index["shards"] if s["format"] == chosen]
    codes = {s["id"]: join(location, s["path"]) for s in files if s.get("field") == "codes"}
    space = CodesSpace.of_index(index)
    return [
        Shard(s["id"], join(location, s["path"]), chosen, s["subset"], s["samples"], codes.get(s["id"]), space)
        for s in files
        if s.get("field") != "codes"
    ]


def read_shard(
    shard: Shard, wanted: np.ndarray | None = None, *, all_metadata: bool = False
) -> Iterator[tuple[int, dict, np.ndarray]]:
    """Yield (position, metadata, codes (K, T) uint16) for the positions in `wanted` (sorted; all
    when None), in shard order. Unwanted samples are skipped without decoding, and reading stops
    after the last wanted one. Parquet's metadata is id, speaker and text_tokens (what a trainer
    reads) unless `all_metadata`; the other formats' is always all of it."""
    positions = iter(range(shard.samples)) if wanted is None else iter(wanted.tolist())
    for meta, codes in _samples(
        shard, wanted, None if all_metadata else ["id", "speaker", "text_tokens"]
    ):  # the readers yield the wanted samples in order
        position = next(positions, None)
        if position is None:
            raise SchemaError(f"{shard.uri}: holds more than the {shard.samples} samples the index says")
        yield position, meta, codes


def _samples(shard: Shard, wanted: np.ndarray | None, columns: list[str] | None) -> Iterator[tuple[dict, np.ndarray]]:
    if shard.format == "webdataset":
        with open_stream(shard.uri) as stream:
            yield from webdataset.read(stream, wanted, where=shard.uri, space=shard.space)
    elif shard.format == lhotse_shar.FORMAT:
        if shard.codes_uri is None:
            raise SchemaError(f"{shard.uri}: the index lists no codes file for this Shar shard; run valle-prep verify")
        with open_stream(shard.uri) as cuts, open_stream(shard.codes_uri) as codes:
            yield from lhotse_shar.read_shard(cuts, codes, wanted, space=shard.space)
    else:
        with open_random_access(shard.uri) as source:
            yield from parquet.read(
                parquet.open_file(source), wanted, columns=columns, where=shard.uri, space=shard.space
            )
