"""Corpus: open a built corpus through its index and schemas/, and read its samples.

In: a location (folder, http(s):// or s3:// prefix) holding index.json. Out: the shards of the
subsets asked for (one format), every sample's lengths, speaker and book as flat numpy arrays
(from lengths.parquet, so batches are planned without reading shards; never a Python object per
sample), and sample readers. Refuses a corpus whose codes came from a random-init codec unless
asked, and never mixes corpora whose codec or BPE provenance differ.

Reads every format valle-prep writes: WebDataset and lhotse Shar streamed, Parquet row group by
row group; schema v2 corpora (codes as .npy members / list<list<uint16>> columns) and v1 ones
(10-bit packed codes), shard by shard as each shard's members or columns say: corpora of both
versions train together.
"""
from __future__ import annotations

import gzip
import io
import json
import tarfile
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import schemas
from trainer.storage import buffer, join, open_random_access, open_stream, read_bytes


class CorpusError(ValueError):
    """A corpus that cannot be trained on as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Shard:
    id: str
    uri: str  # lhotse Shar: the cuts file
    format: str
    subset: str
    samples: int
    codes_uri: str | None = None  # lhotse Shar: the codes file


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

    @property
    def fingerprint(self) -> str:
        """Identifies the samples (not where they are stored): the lengths file's sha256."""
        return self.index["lengths"]["sha256"]

    def bpe_model_uri(self) -> str:
        return join(self.location, self.index["provenance"]["bpe"]["model"])


def read_index(location: str, error: type[Exception] = CorpusError) -> dict:
    """A finished corpus's index.json (a folder or a URL), checked against its schema. A missing
    or too new index raises `error` (each tool's own error type), with what to do."""
    try:
        index = json.loads(read_bytes(join(location, "index.json")))
    except FileNotFoundError:
        raise error(f"{location}: no index.json: the corpus is not finished (run valle-prep run again; "
                    f"valle-prep status shows how far it got)") from None
    version = index.get("version") if isinstance(index, dict) else None
    if version not in schemas.READABLE_VERSIONS:
        raise error(f"{join(location, 'index.json')}: index version {version!r}; this valle-corpus reads "
                    f"versions {list(schemas.READABLE_VERSIONS)} (a newer valle-corpus wrote it: update this one)")
    schemas.validate(f"index.v{version}", index, where=join(location, "index.json"))
    return index


def open_corpus(location: str, *, roles: tuple[str, ...] = ("train",), fmt: str = "auto",
                allow_random_codec: bool = False) -> Corpus:
    index = read_index(location)
    if index["provenance"]["codec"]["weights"] == "random" and not allow_random_codec:
        raise CorpusError(
            f"{location}: its codes come from a RANDOM-INIT EnCodec (an offline test corpus); training on "
            "them teaches nothing about speech. Pass --allow-random-codec if that is what you want.")
    subsets = {name for name, s in index["subsets"].items() if s["role"] in roles}
    shards = [s for s in index_shards(location, index, fmt) if s.subset in subsets]
    return Corpus(location, index, read_lengths(join(location, index["lengths"]["path"]), shards, location))


FORMATS = ("webdataset", "parquet", "lhotse_shar")  # "auto" takes the first the corpus has


def index_shards(location: str, index: dict, fmt: str = "auto") -> list[Shard]:
    """Every shard of one format in an index, in index order; "auto": the first of FORMATS the
    corpus has (WebDataset streams with the fewest requests)."""
    formats = {s["format"] for s in index["shards"]}
    chosen = next((f for f in FORMATS if f in formats), None) if fmt == "auto" else fmt
    if chosen not in formats:
        raise CorpusError(f"{location}: has no {chosen} shards (it has {sorted(formats)})")
    files = [s for s in index["shards"] if s["format"] == chosen]
    codes = {s["id"]: join(location, s["path"]) for s in files if s.get("field") == "codes"}
    return [Shard(s["id"], join(location, s["path"]), chosen, s["subset"], s["samples"], codes.get(s["id"]))
            for s in files if s.get("field") != "codes"]


def read_lengths(uri: str, shards: list[Shard], where: str) -> Samples:
    """The lengths file's rows for `shards`, flattened with Arrow (no per-sample Python objects)."""
    data = buffer(uri)
    names = set(pq.read_schema(data).names)
    ids = {"speaker", "recording_id"} <= names
    data.seek(0)
    table = pq.read_table(data, columns=["shard", "frames", "text_tokens"] + (["speaker", "recording_id"] if ids else []),
                          read_dictionary=["speaker.list.element", "recording_id.list.element"] if ids else None)
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
        speakers = np.concatenate([inverse[starts[i]:starts[i + 1]][p.speakers] for i, p in enumerate(parts)])
        book_base = np.cumsum([0] + [int(p.books.max(initial=-1)) + 1 for p in parts])
        books = np.concatenate([p.books + book_base[i] for i, p in enumerate(parts)])  # books never span corpora
    return Samples([s for p in parts for s in p.shards], offsets,
                   np.concatenate([p.frames for p in parts]), np.concatenate([p.text_tokens for p in parts]),
                   speakers, books, names)


def check_compatible(corpora: list[Corpus]) -> None:
    first = corpora[0]
    for other in corpora[1:]:
        if other.provenance_key != first.provenance_key:
            raise CorpusError(
                f"{other.location} and {first.location} were made with different codec or BPE settings "
                f"({other.provenance_key} vs {first.provenance_key}); their tokens do not mean the same thing")


def read_shard(shard: Shard, wanted: np.ndarray | None = None):
    """Yield (position, metadata, codes (K, T) uint16) for the positions in `wanted` (sorted; all
    when None), in shard order. Unwanted samples are skipped without decoding, and reading stops
    after the last wanted one."""
    last = shard.samples - 1 if wanted is None else (int(wanted[-1]) if len(wanted) else -1)
    keep = None if wanted is None else set(wanted.tolist())
    if last < 0:
        return
    if shard.format == "webdataset":
        yield from _read_tar(shard, keep, last)
    elif shard.format == "lhotse_shar":
        yield from _read_shar(shard, keep, last)
    else:
        yield from _read_parquet(shard, wanted)


def _read_tar(shard: Shard, keep: set | None, last: int):
    with open_stream(shard.uri) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        key, fields, position = None, {}, 0
        for member in tar:
            if not member.isfile():
                continue
            name, _, ext = member.name.partition(".")
            if name != key:  # the members of one sample are adjacent: <key>.json and its codes
                key, fields = name, {}
            if keep is None or position in keep:
                fields[ext] = tar.extractfile(member).read()
            else:
                fields[ext] = None  # skipped: the tar stream moves past it unread
            if len(fields) < 2:
                continue
            codes_member = schemas.CODES_MEMBER if schemas.CODES_MEMBER in fields else schemas.CODES_MEMBER_V1
            if set(fields) != {"json", codes_member}:
                raise CorpusError(f"{shard.uri}: sample {name} has members {sorted(fields)}, expected json and "
                                  f"{schemas.CODES_MEMBER} (or {schemas.CODES_MEMBER_V1}); run valle-prep verify")
            if fields["json"] is not None:
                meta = json.loads(fields["json"])
                data, where = fields[codes_member], f"{shard.uri}: {name}.{codes_member}"
                codes = (schemas.codes_from_npy(data, where) if codes_member == schemas.CODES_MEMBER
                         else schemas.unpack_codes(data, *meta["codes_shape"]))
                yield position, meta, codes
            if position == last:
                return
            position += 1


def _read_shar(shard: Shard, keep: set | None, last: int):
    """A Shar shard's two files streamed side by side: cut k's line in the cuts file, and its
    `<id>.npy` + `<id>.json` members in the codes tar (frames x codebooks there)."""
    if shard.codes_uri is None:
        raise CorpusError(f"{shard.uri}: the index lists no codes file for this Shar shard; run valle-prep verify")
    with open_stream(shard.uri) as cuts_raw, gzip.open(io.BufferedReader(cuts_raw), "rt", encoding="utf-8") as cuts, \
            open_stream(shard.codes_uri) as codes_raw, tarfile.open(fileobj=codes_raw, mode="r|") as tar:
        members = iter(tar)
        for position, line in enumerate(cuts):
            cut = json.loads(line)
            array = next(members, None)
            wanted = keep is None or position in keep
            # A stream: a member's bytes are read before the next member is asked for.
            data = tar.extractfile(array).read() if wanted and array is not None else None
            manifest = next(members, None)
            if array is None or array.name != f"{cut['id']}.npy" or manifest is None \
                    or manifest.name != f"{cut['id']}.json":
                raise CorpusError(f"{shard.codes_uri}: cut {position} ({cut['id']!r}) has no {cut['id']}.npy + "
                                  ".json members in its place; run valle-prep verify")
            if wanted:
                frames_first = schemas.codes_from_npy(data, f"{shard.codes_uri}: {array.name}")
                meta = {"id": cut["id"], "speaker": cut["supervisions"][0].get("speaker"),
                        "text_tokens": cut["custom"]["text_tokens"]}
                yield position, meta, np.ascontiguousarray(frames_first.T)
            if position == last:
                return


def _read_parquet(shard: Shard, wanted: np.ndarray | None):
    """Row group by row group: only groups holding wanted rows are read (a remote shard by byte
    ranges) and decoded, one at a time."""
    with open_random_access(shard.uri) as source:
        yield from _read_row_groups(shard, pq.ParquetFile(source), wanted)


def _read_row_groups(shard: Shard, file: pq.ParquetFile, wanted: np.ndarray | None):
    v1 = pa.types.is_binary(file.schema_arrow.field("codes").type)  # packed codes + their shape
    columns = ["id", "speaker", "text_tokens", "codes"] + (["codes_codebooks", "codes_frames"] if v1 else [])
    start = 0
    for group in range(file.num_row_groups):
        rows = file.metadata.row_group(group).num_rows
        positions = np.arange(start, start + rows) if wanted is None else \
            wanted[(wanted >= start) & (wanted < start + rows)]
        if len(positions):
            table = file.read_row_group(group, columns=columns).take(pa.array(positions - start, type=pa.int64()))
            meta = {name: table.column(name).to_pylist() for name in columns if name != "codes"}
            if v1:
                codes = [schemas.unpack_codes(b, k, t) for b, k, t in zip(table.column("codes").to_pylist(),
                                                                        meta["codes_codebooks"], meta["codes_frames"])]
            else:
                codes = schemas.codes_from_arrow(table.column("codes"), where=shard.uri)
            for i, position in enumerate(positions.tolist()):
                yield position, {name: values[i] for name, values in meta.items()}, codes[i]
        start += rows
