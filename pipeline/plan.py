"""Plan: stream a Libriheavy manifest into deterministic units of whole recordings.

In: `libriheavy_cuts_<subset>.jsonl.gz` (one lhotse MonoCut per line; 12 M lines for large, so
it is streamed, never loaded whole) and the unit size in hours.
Out: `OUT/plan/<subset>/<unit>.jsonl` (compact cuts: no pre_texts) and `OUT/plan/<subset>.json`
(the units with their sha256, the manifest lines that could not be read, a fingerprint).

Recordings are sorted by id and packed greedily into units, so the same manifest and settings
give the same units with the same names on any machine and any cluster size: the resume key.
A unit holds whole recordings so each long FLAC is decoded once.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from pipeline.fsutil import sha256_file, write_json_atomic

PLAN_FORMAT = 1


@dataclass
class UnitPlan:
    name: str
    subset: str
    recordings: int
    cuts: int
    seconds: float
    sha256: str  # of the unit's cut list: changes when its cuts change

    def path(self, out: Path) -> Path:
        return out / "plan" / self.subset / f"{self.name}.jsonl"


@dataclass
class SubsetPlan:
    subset: str
    role: str
    fingerprint: str
    cuts_in: int
    units: list[UnitPlan]
    rejects: list[dict] = field(default_factory=list)  # manifest lines that could not be read

    @classmethod
    def from_json(cls, data: dict) -> "SubsetPlan":
        units = [UnitPlan(**u) for u in data["units"]]
        return cls(**{**data, "units": units})


def compact_cut(line: str, source_prefix: str) -> dict:
    """One manifest line -> the few fields the pipeline needs. ValueError says what is wrong."""
    from lhotse.cut import MonoCut  # here, not at the top: unit workers read plans without lhotse

    try:
        cut = MonoCut.from_dict(json.loads(line))
    except Exception as err:  # lhotse raises many types for malformed cuts
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
        "audio": source[len(source_prefix):] if source.startswith(source_prefix) else source,
        "start": float(cut.start),
        "duration": float(cut.duration),
        "channel": int(cut.channel) if isinstance(cut.channel, int) else 0,
        "speaker": str(sup.speaker or ""),
        "texts": texts,
    }


def plan_fingerprint(manifest_sha256: str, unit_hours: float, source_prefix: str) -> str:
    key = {"format": PLAN_FORMAT, "manifest": manifest_sha256, "unit_hours": unit_hours,
           "source_prefix": source_prefix}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def load_plan(out: Path, subset: str) -> SubsetPlan | None:
    path = out / "plan" / f"{subset}.json"
    return SubsetPlan.from_json(json.loads(path.read_text())) if path.exists() else None


def plan_subset(manifest: Path, subset: str, role: str, out: Path, unit_hours: float,
                source_prefix: str, progress: bool = True) -> SubsetPlan:
    """Plan `subset`, or return the committed plan when its fingerprint still matches."""
    fingerprint = plan_fingerprint(sha256_file(manifest), unit_hours, source_prefix)
    existing = load_plan(out, subset)
    if existing is not None and existing.fingerprint == fingerprint and existing.role == role:
        return existing

    final_dir = out / "plan" / subset
    work_dir = out / "plan" / f".{subset}.partial"
    for stale in (final_dir, work_dir):
        shutil.rmtree(stale, ignore_errors=True)
    (out / "plan" / f"{subset}.json").unlink(missing_ok=True)
    work_dir.mkdir(parents=True)

    # Pass 1 parses every line once, keeping compact cuts on disk and a per-recording tally.
    compact = work_dir / "all-cuts.jsonl"
    seconds_by_recording: dict[str, float] = {}
    rejects, cuts_in = [], 0
    with gzip.open(manifest, "rt", encoding="utf-8") as lines, compact.open("w") as sink:
        for line_no, line in enumerate(tqdm(lines, desc=f"plan {subset}", unit=" cuts",
                                            disable=not progress), start=1):
            if not line.strip():
                continue
            cuts_in += 1
            try:
                cut = compact_cut(line, source_prefix)
            except ValueError as err:
                rejects.append({"subset": subset, "unit": None, "cut_id": None,
                                "reason": "bad_manifest_line", "detail": f"line {line_no}: {err}"})
                continue
            rec = cut["recording_id"]
            seconds_by_recording[rec] = seconds_by_recording.get(rec, 0.0) + cut["duration"]
            sink.write(json.dumps(cut, ensure_ascii=False) + "\n")

    unit_of = _pack_units(seconds_by_recording, subset, unit_hours)

    # Pass 2 distributes the compact cuts into one file per unit.
    with compact.open() as lines, _AppendFiles(work_dir) as files:
        for line in lines:
            files.write(unit_of[json.loads(line)["recording_id"]], line)
    compact.unlink()

    recordings_of: dict[str, list[str]] = {}
    for rec, name in unit_of.items():
        recordings_of.setdefault(name, []).append(rec)
    units = []
    for name, recs in sorted(recordings_of.items()):
        path = work_dir / f"{name}.jsonl"
        with path.open() as lines:
            cuts = sum(1 for _ in lines)
        units.append(UnitPlan(name=name, subset=subset, recordings=len(recs), cuts=cuts,
                              seconds=round(sum(seconds_by_recording[r] for r in recs), 3),
                              sha256=sha256_file(path)))
    work_dir.rename(final_dir)
    plan = SubsetPlan(subset=subset, role=role, fingerprint=fingerprint, cuts_in=cuts_in,
                      units=units, rejects=rejects)
    write_json_atomic(out / "plan" / f"{subset}.json", asdict(plan))
    return plan


def read_unit_cuts(out: Path, unit: UnitPlan) -> list[dict]:
    """A unit's cuts ordered by recording, then start, then id (independent of manifest order)."""
    with unit.path(out).open() as lines:
        cuts = [json.loads(line) for line in lines]
    return sorted(cuts, key=lambda c: (c["recording_id"], c["start"], c["id"]))


def _pack_units(seconds_by_recording: dict[str, float], subset: str, unit_hours: float) -> dict[str, str]:
    """Recording id -> unit name: recordings in id order, a new unit once ~unit_hours is reached."""
    unit_of, index, filled = {}, 0, 0.0
    for rec in sorted(seconds_by_recording):
        if filled >= unit_hours * 3600:
            index, filled = index + 1, 0.0
        unit_of[rec] = f"{subset}-{index:06d}"
        filled += seconds_by_recording[rec]
    return unit_of


class _AppendFiles:
    """Append lines to many files with a bounded number of open handles."""

    def __init__(self, folder: Path, max_open: int = 64):
        self.folder, self.max_open, self.handles = folder, max_open, {}

    def write(self, name: str, line: str) -> None:
        handle = self.handles.pop(name, None)
        if handle is None:
            if len(self.handles) >= self.max_open:
                self.handles.pop(next(iter(self.handles))).close()
            handle = (self.folder / f"{name}.jsonl").open("a", encoding="utf-8")
        self.handles[name] = handle  # most recently used last
        handle.write(line)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for handle in self.handles.values():
            handle.close()
