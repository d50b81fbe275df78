"""Plan: stream Libriheavy manifests into deterministic units of whole recordings.

In: `libriheavy_cuts_<subset>.jsonl.gz` (one lhotse MonoCut per line; 12 M lines for large, so
it is streamed, never loaded whole) and the unit size in hours.
Out: `OUT/plan/<subset>/<unit>.jsonl` (compact cuts: no pre_texts), `OUT/plan/<subset>.json`
(the units with their sha256, the rejected manifest lines, a fingerprint) and
`OUT/plan/<subset>.ids.npy` (the subset's cut ids as digests, for checks across subsets).

Four steps; memory grows only with the recordings (~250 k for large) and by 16 bytes a cut
(about 3x that while sorting: < 1 GB in all for 12 M cuts, see bench/bench_plan.py):
1. parse every line once (pipeline.manifest), compact cuts to a file, unreadable lines rejected;
2. duplicate cut ids, found by sorting id digests: the copy with the smallest (recording, start)
   is kept; with `plan_subsets`, ids kept by a subset of higher priority are rejected too;
3. pack: recordings sorted by id, a new unit once ~unit_hours of cut audio is reached;
4. distribute the compact cuts into one file per unit.
The same manifest and settings give the same units with the same names on any machine and any
cluster size, whatever the order of its lines: the resume key. A unit holds whole recordings so
each long FLAC is decoded once.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import msgspec
import numpy as np
from tqdm import tqdm

from pipeline import cut_ids
from pipeline.download import DownloadError
from pipeline.fsutil import read_json, sha256_file, write_json_atomic
from pipeline.manifest import ManifestScan, line_reject, read_blocks, scan_block

PLAN_FORMAT = 2  # 2: msgspec parsing, number checks, duplicate ids rejected while planning
# A cut id in several subsets is kept in the first by role in this order (then DAG order):
# evaluation sets are fixed benchmarks, so a training copy is what goes.
ROLE_PRIORITY = ("test", "dev", "train")


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
    rejects: list[dict] = field(default_factory=list)  # manifest lines not planned
    excluded: str = ""  # digest of the ids left to subsets of higher priority; "" for none

    @classmethod
    def from_json(cls, data: dict) -> "SubsetPlan":
        units = [UnitPlan(**u) for u in data["units"]]
        return cls(**{**data, "units": units})


class ManifestUnreadable(DownloadError):
    """The manifest file itself is damaged (not gzip, truncated): download it again."""


def plan_fingerprint(manifest_sha256: str, unit_hours: float, source_prefix: str) -> str:
    key = {"format": PLAN_FORMAT, "manifest": manifest_sha256, "unit_hours": unit_hours,
           "source_prefix": source_prefix}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def load_plan(out: Path, subset: str) -> SubsetPlan | None:
    data = read_json(out / "plan" / f"{subset}.json")
    return SubsetPlan.from_json(data) if data is not None else None


def ids_path(out: Path, subset: str) -> Path:
    return out / "plan" / f"{subset}.ids.npy"


def plan_subsets(manifests: dict[str, Path], roles: dict[str, str], out: Path, unit_hours: float,
                 source_prefix: str, progress: bool = True) -> list[SubsetPlan]:
    """Plan every subset (in `roles` order) so that no cut id is in two of them."""
    order = sorted(roles, key=lambda s: ROLE_PRIORITY.index(roles[s]))  # stable: DAG order within
    plans, earlier = {}, []
    for subset in order:
        plans[subset] = plan_subset(manifests[subset], subset, roles[subset], out, unit_hours,
                                    source_prefix, progress, earlier=earlier)
        ids = cut_ids.load(ids_path(out, subset))
        if ids is None:
            raise RuntimeError(f"{ids_path(out, subset)} vanished while planning; run again")
        earlier.append((subset, ids))
    return [plans[s] for s in roles]


def plan_subset(manifest: Path, subset: str, role: str, out: Path, unit_hours: float,
                source_prefix: str, progress: bool = True,
                earlier: list[tuple[str, np.ndarray]] = ()) -> SubsetPlan:
    """Plan `subset`, or return the committed plan when its fingerprint still matches.

    `earlier`: (subset, sorted id set) of subsets that keep their copy of an id found here too.
    """
    fingerprint = plan_fingerprint(sha256_file(manifest), unit_hours, source_prefix)
    existing = load_plan(out, subset)
    if existing is not None and existing.fingerprint == fingerprint and existing.role == role:
        ids = cut_ids.load(ids_path(out, subset))
        if ids is not None and existing.excluded == _excluded_key(ids, earlier):
            return existing

    final_dir = out / "plan" / subset
    work_dir = out / "plan" / f".{subset}.partial"
    for stale in (final_dir, work_dir):
        shutil.rmtree(stale, ignore_errors=True)
    (out / "plan" / f"{subset}.json").unlink(missing_ok=True)
    ids_path(out, subset).unlink(missing_ok=True)
    work_dir.mkdir(parents=True)

    compact = work_dir / "all-cuts.tsv"
    scan = _scan(manifest, subset, source_prefix, compact, progress)
    rows = cut_ids.as_rows(scan.digests)
    unique, groups = cut_ids.sort_ids(rows)
    kept_by = {}  # cut position -> the subset of higher priority that keeps its id
    for other, ids in earlier:
        for position in np.flatnonzero(cut_ids.member(ids, rows)).tolist():
            kept_by.setdefault(position, other)
    dropped, duplicate_rejects = _drop_duplicates(compact, groups, kept_by, scan, subset)
    del rows
    scan.digests = bytearray()  # 16 bytes a cut: no longer needed

    seconds = {rec: micros / 1e6 for rec, (micros, _) in scan.recordings.items()}
    unit_of = _pack_units(seconds, subset, unit_hours)
    counts = _distribute(compact, work_dir, unit_of, dropped)
    compact.unlink()

    recordings_of: dict[str, list[str]] = {}
    for rec, name in unit_of.items():
        recordings_of.setdefault(name, []).append(rec)
    units = [UnitPlan(name=name, subset=subset, recordings=len(recs), cuts=counts[name],
                      seconds=round(sum(scan.recordings[r][0] for r in recs) / 1e6, 3),
                      sha256=sha256_file(work_dir / f"{name}.jsonl"))
             for name, recs in sorted(recordings_of.items())]
    cut_ids.save(ids_path(out, subset), unique)
    work_dir.rename(final_dir)
    plan = SubsetPlan(subset=subset, role=role, fingerprint=fingerprint, cuts_in=scan.lines,
                      units=units, rejects=scan.rejects + duplicate_rejects,
                      excluded=_excluded_key(unique, earlier))
    write_json_atomic(out / "plan" / f"{subset}.json", asdict(plan))
    return plan


def _scan(manifest: Path, subset: str, source_prefix: str, compact: Path, progress: bool) -> ManifestScan:
    """Step 1: parse every line; compact cuts go to `compact` as `<line number>\\t<json>`."""
    scan = ManifestScan()
    with compact.open("wb") as sink, \
            tqdm(total=manifest.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024,
                 desc=f"plan {subset}", disable=not progress) as bar:
        try:
            for first_line, block in read_blocks(manifest, on_read=bar.update):
                scan.merge(scan_block(block, first_line, source_prefix, subset, sink))
                bar.set_postfix(cuts=scan.cuts, rejects=len(scan.rejects), refresh=False)
        except (OSError, EOFError, zlib.error) as err:
            raise ManifestUnreadable(
                f"{manifest}: not a readable gzip file ({type(err).__name__}: {err}); delete it "
                f"and its .done.json marker and run again to download it again") from None
    return scan


def _excluded_key(ids: np.ndarray, earlier) -> str:
    """Digest of the ids of `ids` that subsets of higher priority keep ("" when none)."""
    taken = np.zeros(len(ids), dtype=bool)
    for _, other in earlier:
        taken |= cut_ids.member(other, ids)
    return hashlib.sha256(ids[taken].tobytes()).hexdigest() if taken.any() else ""


def _drop_duplicates(compact: Path, groups: list[np.ndarray], kept_by: dict[int, str],
                     scan: ManifestScan, subset: str) -> tuple[set[int], list[dict]]:
    """Step 2: which cut positions go, and their rejects (in line order).

    Within the subset, the copy with the smallest (recording id, start, line) stays: the same
    choice in any line order. The audio of dropped cuts leaves their recording's tally.
    """
    wanted = set(kept_by).union(*(g.tolist() for g in groups))
    if not wanted:
        return set(), []
    cuts = {}  # position -> (line number, compact line)
    with compact.open("rb") as lines:
        for position, line in enumerate(lines):
            if position in wanted:
                number, _, text = line.partition(b"\t")
                cuts[position] = (int(number), msgspec.json.decode(text), text)
    why = {p: f"the same id is kept in subset {other}" for p, other in kept_by.items()}
    for group in groups:
        copies = sorted((p for p in group.tolist() if p not in kept_by),
                        key=lambda p: (cuts[p][1]["recording_id"], cuts[p][1]["start"], cuts[p][2]))
        if len(copies) > 1:
            line, keeper, _ = cuts[copies[0]]
            for p in copies[1:]:
                why[p] = (f"the same id is kept at line {line} (recording {keeper['recording_id']}, "
                          f"start {keeper['start']:.3f}s)")
    rejects = []
    for p in sorted(why, key=lambda p: cuts[p][0]):
        line, cut, _ = cuts[p]
        rejects.append(line_reject(subset, cut["id"], "duplicate_cut_id", line, why[p]))
        tally = scan.recordings[cut["recording_id"]]
        tally[0] -= round(cut["duration"] * 1_000_000)
        tally[1] -= 1
        if tally[1] == 0:
            del scan.recordings[cut["recording_id"]]
    return set(why), rejects


class _RecordingOf(msgspec.Struct):
    recording_id: str


def _distribute(compact: Path, folder: Path, unit_of: dict[str, str], dropped: set[int]) -> dict[str, int]:
    """Step 4: each kept compact cut to its unit's file, in manifest order; cuts per unit."""
    decoder = msgspec.json.Decoder(_RecordingOf)
    counts = dict.fromkeys(set(unit_of.values()), 0)
    with compact.open("rb") as lines, _AppendFiles(folder) as files:
        for position, line in enumerate(lines):
            if position in dropped:
                continue
            text = line[line.index(b"\t") + 1:]
            name = unit_of[decoder.decode(text).recording_id]
            files.write(name, text)
            counts[name] += 1
    return counts


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

    def write(self, name: str, line: bytes) -> None:
        handle = self.handles.pop(name, None)
        if handle is None:
            if len(self.handles) >= self.max_open:
                self.handles.pop(next(iter(self.handles))).close()
            handle = (self.folder / f"{name}.jsonl").open("ab")
        self.handles[name] = handle  # most recently used last
        handle.write(line)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for handle in self.handles.values():
            handle.close()
