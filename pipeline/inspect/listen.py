"""Listen: one sample's codes back to audio, so a person can hear what the codes hold.

In: OUT (a finished corpus: a folder, or an http(s):// or s3:// location read through
storage.remote), a cut id, a wav path. Out: a 16-bit mono wav of the sample's codes decoded by
the codec the corpus was encoded with (index.json's provenance.codec names it, its codebooks and
its weights, whose hash must match), at the codec's sample rate, frames x its hop samples long.

The sample is usually found without scanning the corpus: lengths.parquet lists every shard's
recordings, and a sample id is its recording's id (LibriTTS, Emilia: one utterance per
recording) or starts with it (Libriheavy's `<recording id>_<n>`, most lhotse recipes' segment
ids), so only the shards holding a recording whose id is the sample id or a prefix of it ending
before a non-alphanumeric character are opened, and in them only that recording's samples are
decoded (through the formats' readers, schemas.reading.read_shard). An id unrelated to its
recording's (a lhotse supervision named otherwise in a multi-supervision recording) is looked
for among the rejects, then in the shards' ids, one shard at a time: the Parquet shards' id
column when the corpus has Parquet, else the samples' metadata. Sources whose ids always start
with their recording's (Libriheavy, Emilia) are never scanned: an id not found is not there.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.reading import index_shards, read_index, read_shard
from storage.remote import join, open_random_access, open_text

# Source kinds (index.json's provenance.source.kind) whose sample ids start with their recording's.
IDS_START_WITH_RECORDING = ("libriheavy", "emilia")


class ListenError(ValueError):
    """The sample cannot be decoded as asked; the message says why and what to do."""


def find_sample(out, cut_id: str) -> tuple[dict, np.ndarray]:
    """(metadata, codes (codebooks, frames)) of the sample whose id is `cut_id`."""
    out = str(out)
    index = read_index(out, ListenError)
    with open_random_access(join(out, index["lengths"]["path"])) as source:
        return _find(out, index, pq.ParquetFile(source), cut_id)


def recording_candidates(cut_id: str) -> list[str]:
    """The recording ids a sample id may belong to: itself, and every prefix of it that ends
    before a non-alphanumeric character (`a_1/b-2` -> `a`, `a_1`, `a_1/b`, `a_1/b-2`)."""
    return [cut_id[:i] for i, ch in enumerate(cut_id) if i and not ch.isalnum()] + [cut_id]


def _find(out: str, index: dict, lengths: pq.ParquetFile, cut_id: str) -> tuple[dict, np.ndarray]:
    shards = {s.id: s for s in index_shards(out, index, error=ListenError)}
    if "recording_id" not in lengths.schema_arrow.names:
        raise ListenError(
            f"{out}/lengths.parquet has no recording_id column (a corpus from an older "
            "version); run valle-prep run again to rewrite it"
        )
    candidates = pa.array(recording_candidates(cut_id), pa.string())
    for batch in lengths.iter_batches(batch_size=64, columns=["shard", "recording_id"]):
        recordings = batch.column("recording_id")
        hits = np.flatnonzero(
            pc.is_in(pc.list_flatten(recordings), value_set=candidates).to_numpy(zero_copy_only=False)
        )
        if not len(hits):
            continue
        rows = pc.list_parent_indices(recordings).to_numpy()[hits]
        starts = recordings.offsets.to_numpy()[rows]
        for row in np.unique(rows):
            shard = shards[batch.column("shard")[int(row)].as_py()]
            for _, meta, codes in read_shard(shard, (hits - starts)[rows == row]):
                if meta["id"] == cut_id:
                    return meta, codes
    rejected = _rejected(out, index, cut_id)
    if rejected:
        raise ListenError(
            f"cut {cut_id!r} is not in {out}: it was rejected ({rejected['reason']}: {rejected.get('detail', '')})"
        )
    kind = index["provenance"].get("source", {}).get("kind", "libriheavy")  # none: an index from before kinds
    found = None if kind in IDS_START_WITH_RECORDING else _scan_ids(out, index, cut_id)
    if found is None:
        raise ListenError(
            f"cut {cut_id!r} is not in {out}: no shard holds it, and it is not among the rejects "
            "(a sample's id is the 'id' of its metadata, as in the source's manifest)"
        )
    shard, position = found
    [(_, meta, codes)] = read_shard(shards[shard], np.array([position]))
    return meta, codes


def _scan_ids(out: str, index: dict, cut_id: str) -> tuple[str, int] | None:
    """(shard id, position) of `cut_id`, looked for shard by shard; None if no shard holds it.
    Every format holds the same samples in the same order, so the cheapest to read is scanned."""
    has_parquet = any(s["format"] == "parquet" for s in index["shards"])
    for shard in index_shards(out, index, "parquet" if has_parquet else "auto", error=ListenError):
        if shard.format == "parquet":
            with open_random_access(shard.uri) as source:
                start = 0
                for batch in pq.ParquetFile(source).iter_batches(columns=["id"], use_threads=False):
                    hits = np.flatnonzero(pc.equal(batch.column("id"), cut_id).to_numpy(zero_copy_only=False))
                    if len(hits):
                        return shard.id, start + int(hits[0])
                    start += batch.num_rows
        else:
            for position, meta, _ in read_shard(shard):
                if meta["id"] == cut_id:
                    return shard.id, position
    return None


def _rejected(out: str, index: dict, cut_id: str) -> dict | None:
    with open_text(join(out, index["rejects"]["path"])) as lines:
        for line in lines:
            if cut_id in line:  # cheap test first; parse only candidate lines
                row = json.loads(line)
                if row.get("cut_id") == cut_id:
                    return row
    return None


def corpus_codec(out, weights: str | None = None, device: str = "cpu"):
    """The codec the corpus's provenance names, with its codebooks and weights (or `weights`,
    whose hash must match)."""
    from tokens.codec import codec_for  # torch loads here, only when audio is decoded
    from tokens.codec_weights import WeightsUnavailable

    codec = read_index(str(out), ListenError)["provenance"]["codec"]
    try:
        return codec_for(codec, weights, device)
    except (WeightsUnavailable, ValueError) as err:
        raise ListenError(
            f"codec weights {weights or 'of the corpus'}: {err}; pass the corpus's weights with --codec-weights"
        ) from None


def listen(out, cut_id: str, wav: Path, *, weights: str | None = None, device: str = "cpu") -> float:
    """Decode `cut_id`'s codes into `wav`; returns its length in seconds."""
    from tokens.audio import write_wav

    _, codes = find_sample(out, cut_id)
    codec = corpus_codec(out, weights, device)
    wave = codec.decode(codes)
    wav.parent.mkdir(parents=True, exist_ok=True)
    write_wav(wav, wave, codec.spec.sample_rate)
    return len(wave) / codec.spec.sample_rate
