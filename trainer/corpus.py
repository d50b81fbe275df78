"""Corpus: open a built corpus through its index and schemas/, and read its samples.

In: a location (folder, http(s):// or s3:// prefix) holding index.json. Out: the shards of the
subsets asked for (one format), every sample's lengths (from lengths.parquet, so batches are
planned without reading shards), and sample readers. Refuses a corpus whose codes came from a
random-init codec unless asked, and never mixes corpora whose codec or BPE provenance differ.
"""
from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

import schemas
from trainer.storage import buffer, join, open_stream, read_bytes


class CorpusError(ValueError):
    """A corpus that cannot be trained on as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Shard:
    id: str
    uri: str
    format: str
    subset: str
    samples: int


@dataclass
class Corpus:
    location: str
    index: dict
    shards: list[Shard]
    frames: dict[str, np.ndarray]  # shard id -> codec frames of each sample, in shard order
    text_tokens: dict[str, np.ndarray]  # shard id -> text tokens of each sample

    @property
    def provenance_key(self) -> dict:
        """What must agree between corpora trained together."""
        p = self.index["provenance"]
        return {"codec": {k: p["codec"][k] for k in ("model", "bandwidth_kbps", "codebooks", "weights_sha256")},
                "bpe_sha256": p["bpe"]["sha256"], "text": p["text"]}

    @property
    def vocab_size(self) -> int:
        return self.index["provenance"]["bpe"]["vocab_size"]

    @property
    def codebooks(self) -> int:
        return self.index["codes"]["codebooks"]

    def bpe_model_uri(self) -> str:
        return join(self.location, self.index["provenance"]["bpe"]["model"])


def open_corpus(location: str, *, roles: tuple[str, ...] = ("train",), fmt: str = "auto",
                allow_random_codec: bool = False) -> Corpus:
    try:
        index = json.loads(read_bytes(join(location, "index.json")))
    except FileNotFoundError:
        raise CorpusError(f"{location}: no index.json (is the corpus finished? run valle-prep again)") from None
    schemas.validate(f"index.v{schemas.INDEX_VERSION}", index, where=join(location, "index.json"))
    if index["provenance"]["codec"]["weights"] == "random" and not allow_random_codec:
        raise CorpusError(
            f"{location}: its codes come from a RANDOM-INIT EnCodec (an offline test corpus); training on "
            "them teaches nothing about speech. Pass --allow-random-codec if that is what you want.")
    subsets = {name for name, s in index["subsets"].items() if s["role"] in roles}
    formats = {s["format"] for s in index["shards"]}
    chosen = ("webdataset" if "webdataset" in formats else "parquet") if fmt == "auto" else fmt
    if chosen not in formats:
        raise CorpusError(f"{location}: has no {chosen} shards (it has {sorted(formats)})")
    shards = [Shard(s["id"], join(location, s["path"]), chosen, s["subset"], s["samples"])
              for s in index["shards"] if s["format"] == chosen and s["subset"] in subsets]
    table = pq.read_table(buffer(join(location, index["lengths"]["path"])))
    rows = {r["shard"]: r for r in table.to_pylist()}
    frames, text = {}, {}
    for shard in shards:
        row = rows.get(shard.id)
        if row is None or len(row["frames"]) != shard.samples:
            raise CorpusError(f"{location}: lengths for shard {shard.id} missing or wrong; run valle-prep verify")
        frames[shard.id] = np.asarray(row["frames"], dtype=np.int64)
        text[shard.id] = np.asarray(row["text_tokens"], dtype=np.int64)
    return Corpus(location, index, shards, frames, text)


def check_compatible(corpora: list[Corpus]) -> None:
    first = corpora[0]
    for other in corpora[1:]:
        if other.provenance_key != first.provenance_key:
            raise CorpusError(
                f"{other.location} and {first.location} were made with different codec or BPE settings "
                f"({other.provenance_key} vs {first.provenance_key}); their tokens do not mean the same thing")


def read_shard(shard: Shard):
    """Yield (position, metadata, codes (K, T) uint16) for every sample, in shard order."""
    if shard.format == "webdataset":
        with open_stream(shard.uri) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            pending: dict[str, dict[str, bytes]] = {}
            position = 0
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.partition(".")
                fields = pending.setdefault(key, {})
                fields[ext] = tar.extractfile(member).read()
                if len(fields) == 2:  # a sample is complete once its json and codes are read
                    del pending[key]
                    meta = json.loads(fields["json"])
                    codes = schemas.unpack_codes(fields["codes"], *meta["codes_shape"])
                    yield position, meta, codes
                    position += 1
    else:
        table = pq.read_table(buffer(shard.uri))
        for position, row in enumerate(table.to_pylist()):
            codes = schemas.unpack_codes(row["codes"], row["codes_codebooks"], row["codes_frames"])
            yield position, row, codes
