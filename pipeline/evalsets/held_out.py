"""Whether an evaluation set made from a corpus's subset is held out from that corpus's training data.

In: the corpus (its location and index.json), the subset the set comes from, the set's speakers.
Out: fields for the set's `source` (evalset.json): "trained_on" (the subset's role is train, so
valle-train, which reads every subset of that role, trained on these very utterances),
"training_speakers" (how many of the set's speakers also speak in a training subset: their SIM
is not zero-shot) and, when either is so, a one-line "warning" that valle-eval prints above its
tables. The speakers come from lengths.parquet's shard and speaker columns: no shard is opened.
A corpus written before lengths.parquet had a speaker column gives no "training_speakers".
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.evalset import TRAINED_ON
from storage.remote import join, open_random_access


def held_out_fields(out: str, index: dict, subset: str, speakers: set[str]) -> dict:
    if index["subsets"][subset]["role"] == "train":
        return {"trained_on": True, "warning": f"{TRAINED_ON} (subset {subset!r} is a training subset of {out})"}
    fields: dict = {"trained_on": False}
    seen = training_speakers(out, index)
    if seen is not None:
        shared = sorted(speakers & seen)
        fields["training_speakers"] = len(shared)
        if shared:
            shown = ", ".join(shared[:5]) + (" ..." if len(shared) > 5 else "")
            fields["warning"] = (
                f"{len(shared)} of the set's {len(speakers)} speaker(s) also speak in the training data "
                f"({shown}): SIM on their utterances is not zero-shot"
            )
    return fields


def training_speakers(out: str, index: dict) -> set[str] | None:
    """Every speaker of the corpus's training subsets; None when lengths.parquet has no speakers.
    Arrow does the work a row group at a time (each the speaker lists of 64 shards): the training
    shards' rows, their speakers flattened and made unique; only distinct names reach Python."""
    train = {s for s, meta in index["subsets"].items() if meta["role"] == "train"}
    shards = pa.array(sorted(s["id"] for s in index["shards"] if s["subset"] in train), pa.string())
    found: set[str] = set()
    with open_random_access(join(out, index["lengths"]["path"])) as source:
        lengths = pq.ParquetFile(source)
        if "speaker" not in lengths.schema_arrow.names:
            return None
        for group in range(lengths.num_row_groups):
            table = lengths.read_row_group(group, columns=["shard", "speaker"])
            speakers = table.filter(pc.is_in(table["shard"], value_set=shards))["speaker"]
            found.update(pc.unique(pc.list_flatten(speakers)).to_pylist())
    return found
