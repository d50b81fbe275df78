"""Corpus: open built corpora for training, through their index (schemas.reading).

In: a location (folder, http(s):// or s3:// prefix) holding index.json. Out: the shards of the
subsets asked for (one format), and every sample's lengths, speaker and book as flat numpy
arrays (from lengths.parquet, so batches are planned without reading shards; never a Python
object per sample). Refuses a corpus whose codes came from a random-init codec unless asked, and
never mixes corpora whose codec or BPE provenance differ.

Samples are read by schemas.reading.read_shard, which reads every format valle-prep writes
(WebDataset and lhotse Shar streamed, Parquet row group by row group) and both schema versions
(v2: codes as .npy members / list<list<uint16>> columns; v1: 10-bit packed codes), shard by shard:
corpora of both versions train together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.codes import CodesSpace
from schemas.reading import Shard, index_shards, read_index
from storage.remote import join, read_bytes


class CorpusError(ValueError):
    """A corpus that cannot be trained on as asked; the message says why and what to do."""


@dataclass
class Samples:
    """Per-sample facts of a list of shards, flat: shard i holds samples offsets[i]:offsets[i+1]."""

    shards: list[Shard]
    offsets: np.ndarray  # (n_shards + 1,) int64
    frames: np.ndarray  # (n,) int32 codec frames
    text_tokens: np.ndarray  # (n,) int32 BPE tokens
    speakers: np.ndarray | None  # (n,) int32 ids into speaker_names; None for corpora written without them
    books: np.ndarray | None  # (n,) int32 ids of the LibriLight book (the chapter's parent folder)
    speaker_names: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def shard_of(self, sample: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.offsets, sample, side="right") - 1


@dataclass
class Corpus:
    location: str
    index: dict
    samples: Samples

    @property
    def shards(self) -> list[Shard]:
        return self.samples.shards

    @property
    def provenance_key(self) -> dict:
        """What must agree between corpora trained together (`provenance_key`)."""
        return provenance_key(self.index)

    @property
    def vocab_size(self) -> int:
        return self.index["provenance"]["bpe"]["vocab_size"]

    @property
    def codebooks(self) -> int:
        return self.index["codes"]["codebooks"]

    @property
    def codec(self) -> dict:
        """index.json's provenance.codec: the codec's name (`model`), its codebooks, their size,
        its frame rate and sample rate, and its weights."""
        return self.index["provenance"]["codec"]

    @property
    def fingerprint(self) -> str:
        """Identifies the samples (not where they are stored): the lengths file's sha256."""
        return self.index["lengths"]["sha256"]


def provenance_key(index: dict) -> dict:
    """What must agree between corpora trained together, and between a corpus and the
    checkpoints trained on it: the codec (model, bandwidth, codebooks, weights), the BPE model
    and the text normalization."""
    p = index["provenance"]
    return {
        "codec": {k: p["codec"][k] for k in ("model", "bandwidth_kbps", "codebooks", "weights_sha256")},
        "bpe_sha256": p["bpe"]["sha256"],
        "text": p["text"],
    }


def two_codecs(a: str, key_a: dict, b: str, key_b: dict) -> str | None:
    """Two provenance keys' (`provenance_key`) codecs in words, `a` and `b` naming whose they are
    ("A is mimi, B is encodec_24khz"); None when their codec is the same."""
    name_a, name_b = CodesSpace.of_record(key_a["codec"]).model, CodesSpace.of_record(key_b["codec"]).model
    return None if name_a == name_b else f"{a} is {name_a}, {b} is {name_b}"


def open_corpus(
    location: str, *, roles: tuple[str, ...] = ("train",), fmt: str = "auto", allow_random_codec: bool = False
) -> Corpus:
    index = read_index(location, CorpusError)
    if index["provenance"]["codec"]["weights"] == "random" and not allow_random_codec:
        raise CorpusError(
            f"{location}: its codes come from a RANDOM-INIT {CodesSpace.of_index(index).model} codec (an "
            "offline test corpus); training on them teaches nothing about speech. Pass --allow-random-codec "
            "if that is what you want."
        )
    subsets = {name for name, s in index["subsets"].items() if s["role"] in roles}
    shards = [s for s in index_shards(location, index, fmt, CorpusError) if s.subset in subsets]
    return Corpus(location, index, read_lengths(join(location, index["lengths"]["path"]), shards, location))


def read_lengths(uri: str, shards: list[Shard], where: str) -> Samples:
    """The lengths file's rows for `shards`, flattened with Arrow (no per-sample Python objects)."""
    raw = read_bytes(uri)  # ~4 bytes a sample: 47 MB for libriheavy-large
    names = set(pq.read_schema(pa.BufferReader(raw)).names)
    ids = {"speaker", "recording_id"} <= names
    table = pq.read_table(
        pa.BufferReader(raw),
        columns=["shard", "frames", "text_tokens"] + (["speaker", "recording_id"] if ids else []),
        read_dictionary=["speaker.list.element", "recording_id.list.element"] if ids else None,
    )
    row_of = {shard: i for i, shard in enumerate(table.column("shard").to_pylist())}
    rows = [row_of.get(s.id, -1) for s in shards]
    if any(r < 0 for r in rows):
        missing = next(s.id for s, r in zip(shards, rows) if r < 0)
        raise CorpusError(f"{where}: lengths for shard {missing} missing; run valle-prep verify")
    table = table.take(pa.array(rows, type=pa.int64()))
    counts = pc.list_value_length(table.column("frames")).to_numpy(zero_copy_only=False)
    wrong = [s.id for s, n in zip(shards, counts) if n != s.samples]
    if wrong:
        raise CorpusError(f"{where}: lengths for shard {wrong[0]} disagree with index.json; run valle-prep verify")
    offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])

    def flat(name: str) -> pa.Array:
        return pc.list_flatten(table.column(name)).combine_chunks()

    frames = flat("frames").to_numpy().astype(np.int32, copy=False)
    text = flat("text_tokens").to_numpy().astype(np.int32, copy=False)
    speakers = books = speaker_names = None
    if ids:
        speakers, speaker_names = _codes(flat("speaker"))
        recordings, recording_names = _codes(flat("recording_id"))
        book_names = np.array([r.rpartition("/")[0] or r for r in recording_names.tolist()], dtype=object)
        _, book_of_recording = np.unique(book_names.astype(str), return_inverse=True)
        books = book_of_recording.astype(np.int32)[recordings] if len(recordings) else recordings
    return Samples(shards, offsets, frames, text, speakers, books, speaker_names)


def _codes(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(int32 codes, names) of a string or dictionary column."""
    if not pa.types.is_dictionary(column.type):
        column = column.dictionary_encode()
    names = column.dictionary.to_numpy(zero_copy_only=False)
    return column.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False), names


def merge(corpora: list[Corpus]) -> Samples:
    """One Samples over the corpora's shards, in order; a speaker is the same across corpora
    when its id is (LibriLight speaker ids are global)."""
    parts = [c.samples for c in corpora]
    if len(parts) == 1:
        return parts[0]
    sizes = np.concatenate([np.diff(p.offsets) for p in parts])
    offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
    speakers = books = names = None
    if all(p.speakers is not None for p in parts):
        names, inverse = np.unique(np.concatenate([p.speaker_names for p in parts]).astype(str), return_inverse=True)
        starts = np.cumsum([0] + [len(p.speaker_names) for p in parts])
        speakers = np.concatenate([inverse[starts[i] : starts[i + 1]][p.speakers] for i, p in enumerate(parts)])
        book_base = np.cumsum([0] + [int(p.books.max(initial=-1)) + 1 for p in parts])
        books = np.concatenate([p.books + book_base[i] for i, p in enumerate(parts)])  # books never span corpora
    return Samples(
        [s for p in parts for s in p.shards],
        offsets,
        np.concatenate([p.frames for p in parts]),
        np.concatenate([p.text_tokens for p in parts]),
        speakers,
        books,
        names,
    )


def check_compatible(corpora: list[Corpus]) -> None:
    first = corpora[0]
    for other in corpora[1:]:
        codecs = two_codecs(first.location, first.provenance_key, other.location, other.provenance_key)
        if codecs:
            raise CorpusError(
                f"corpora of two codecs: {codecs}; their codes do not mean the same thing. Train on corpora "
                "coded with one codec (valle-prep run DAG --set codec.name=NAME codes a corpus with another)"
            )
        if other.provenance_key != first.provenance_key:
            raise CorpusError(
                f"{other.location} and {first.location} were made with different codec or BPE settings "
                f"({other.provenance_key} vs {first.provenance_key}); their tokens do not mean the same thing"
            )
