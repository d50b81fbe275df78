"""The planner as it was before msgspec (lhotse's MonoCut per line, float sums per recording),
kept as the reference the fast path must agree with on well-formed manifests."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

from pipeline.plan.subsets import _pack_units


def lhotse_compact_cut(line: str, source_prefix: str) -> dict:
    """The old per-line path. Raises ValueError for what it rejected; any other exception is a
    line that stopped the old planner (a null start: TypeError in float())."""
    from lhotse.cut import MonoCut

    try:
        cut = MonoCut.from_dict(json.loads(line))
    except Exception as err:
        raise ValueError(f"not a lhotse MonoCut: {type(err).__name__}: {err}") from None
    if len(cut.supervisions) != 1:
        raise ValueError(f"cut {cut.id}: expected one supervision, found {len(cut.supervisions)}")
    sup = cut.supervisions[0]
    texts = (sup.custom or {}).get("texts")
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"cut {cut.id}: supervision has no custom.texts list")
    if cut.recording is None or not cut.recording.sources:
        raise ValueError(f"cut {cut.id}: no recording source")
    source = cut.recording.sources[0].source
    return {
        "id": cut.id,
        "recording_id": cut.recording.id,
        "audio": source[len(source_prefix) :] if source.startswith(source_prefix) else source,
        "start": float(cut.start),
        "duration": float(cut.duration),
        "channel": int(cut.channel) if isinstance(cut.channel, int) else 0,
        "speaker": str(sup.speaker or ""),
        "texts": texts,
    }


def reference_units(manifest: Path, subset: str, unit_hours: float, source_prefix: str) -> list[tuple]:
    """(name, recordings, cuts, seconds, sha256) per unit, as the old planner made them."""
    rows, seconds = [], {}  # rows: (recording id, compact line) in manifest order
    with gzip.open(manifest, "rt", encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            try:
                cut = lhotse_compact_cut(line, source_prefix)
            except ValueError:
                continue
            rec = cut["recording_id"]
            seconds[rec] = seconds.get(rec, 0.0) + cut["duration"]
            rows.append((rec, json.dumps(cut, ensure_ascii=False) + "\n"))
    unit_of = _pack_units(seconds, subset, unit_hours)
    out = []
    for name in sorted(set(unit_of.values())):
        recs = [r for r in unit_of if unit_of[r] == name]
        body = "".join(line for rec, line in rows if unit_of[rec] == name)
        out.append(
            (
                name,
                len(recs),
                body.count("\n"),
                round(sum(seconds[r] for r in recs), 3),
                hashlib.sha256(body.encode()).hexdigest(),
            )
        )
    return out
