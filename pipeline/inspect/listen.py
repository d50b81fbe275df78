"""Listen: one sample's codes back to audio, so a person can hear what the codes hold.

In: OUT (a finished corpus: a folder, or an http(s):// or s3:// location read through
storage.remote), a cut id, a wav path. Out: a 16-bit mono 24 kHz wav of the sample's
codes decoded by EnCodec with the weights the corpus was encoded with (its provenance names
them; their hash must match), frames x 320 samples long.

The sample is found without scanning the corpus: Libriheavy cut ids are `<recording id>_<n>`,
and lengths.parquet lists every shard's recordings, so only the shards holding the cut's
recording are opened, and in them only that recording's samples are decoded (through the
formats' readers, schemas.reading.read_shard).
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
from tokens.audio import write_wav
from tokens.constants import SAMPLE_RATE


class ListenError(ValueError):
    """The sample cannot be decoded as asked; the message says why and what to do."""


def find_sample(out, cut_id: str) -> tuple[dict, np.ndarray]:
    """(metadata, codes (codebooks, frames)) of the sample whose id is `cut_id`."""
    out = str(out)
    index = read_index(out, ListenError)
    with open_random_access(join(out, index["lengths"]["path"])) as source:
        return _find(out, index, pq.ParquetFile(source), cut_id)


def _find(out: str, index: dict, lengths: pq.ParquetFile, cut_id: str) -> tuple[dict, np.ndarray]:
    shards = {s.id: s for s in index_shards(out, index, error=ListenError)}
    if "recording_id" not in lengths.schema_arrow.names:
        raise ListenError(
            f"{out}/lengths.parquet has no recording_id column (a corpus from an older "
            "version); run valle-prep run again to rewrite it"
        )
    # Every prefix of the id that ends before a "_" may be its recording id.
    candidates = pa.array([cut_id[:i] for i, ch in enumerate(cut_id) if ch == "_"], pa.string())
    searched = 0
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
            searched += 1
            for _, meta, codes in read_shard(shard, (hits - starts)[rows == row]):
                if meta["id"] == cut_id:
                    return meta, codes
    raise ListenError(_not_found(out, index, cut_id, searched))


def _not_found(out: str, index: dict, cut_id: str, searched: int) -> str:
    where = f"its recording's {searched} shard(s)" if searched else "any shard (no sample of its recording)"
    rejected = _rejected(out, index, cut_id)
    if rejected:
        return f"cut {cut_id!r} is not in {out}: it was rejected ({rejected['reason']}: {rejected.get('detail', '')})"
    return (
        f"cut {cut_id!r} is not in {out}: not found in {where}, and not among the rejects. "
        "Cut ids are Libriheavy's, e.g. small/100/<book>/<chapter>_12 (see the 'id' of any sample)"
    )


def _rejected(out: str, index: dict, cut_id: str) -> dict | None:
    with open_text(join(out, index["rejects"]["path"])) as lines:
        for line in lines:
            if cut_id in line:  # cheap test first; parse only candidate lines
                row = json.loads(line)
                if row.get("cut_id") == cut_id:
                    return row
    return None


def corpus_codec(out, weights: str | None = None, device: str = "cpu"):
    """An EnCodec with the corpus's bandwidth and weights (or `weights`, whose hash must match)."""
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
    _, codes = find_sample(out, cut_id)
    wave = corpus_codec(out, weights, device).decode(codes)
    wav.parent.mkdir(parents=True, exist_ok=True)
    write_wav(wav, wave)
    return len(wave) / SAMPLE_RATE
