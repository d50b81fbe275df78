"""Plan: stream Libriheavy manifests into deterministic units of whole recordings.

In: `libriheavy_cuts_<subset>.jsonl.gz` (one lhotse MonoCut per line; 12 M lines for large, so
it is streamed, never loaded whole) and the unit size in hours.
Out: `OUT/plan/<subset>/<unit>.jsonl` (compact cuts: no pre_texts), `OUT/plan/<subset>.json`
(the units with their sha256, the rejected manifest lines, a fingerprint) and
`OUT/plan/<subset>.ids.npy` (the subset's cut ids as digests, for checks across subsets).

Four steps; memory grows only with the recordings (~250 k for large) and by 16 bytes a cut
(about 3x that while sorting: < 1 GB in all for 12 M cuts, see bench/bench_plan.py):
1. parse every line once (pipeline.plan.manifest), compact cuts to a file, unreadable lines rejected;
   one thread inflates the gzip stream into blocks of lines, worker processes (or Ray tasks)
   parse them, and the results are merged in block order (pipeline.plan.parse_pool);
2. duplicate cut ids, found by sorting id digests: the copy with the smallest (recording, start)
   is kept; with `plan_subsets`, ids kept by a subset of higher priority are rejected too;
3. pack: recordings sorted by id, a new unit once ~unit_hours of cut audio is reached;
4. distribute the compact cuts into one file per unit.
The same manifest and settings give the same units with the same names on any machine and any
cluster size, however many workers parse it and whatever the order of its lines: the resume
key. A unit holds whole recordings so each long FLAC is decoded once. Subsets are planned at
the same time, each as soon as its manifest is ready (`SubsetPlanner`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path

import msgspec
import numpy as np
from tqdm import tqdm

from pipeline.plan import cut_ids
from pipeline.plan.manifest import GZIP_ERRORS, ManifestInput, ManifestScan, line_reject, read_blocks, unit_group
from pipeline.plan.parse_pool import SerialParsers, default_parsers, parse_in_order, parsers_for, small_manifest
from storage.download import DownloadError, read_marker
from storage.files import read_json, write_json_atomic
from storage.hashing import sha256_file

log = logging.getLogger(__name__)

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
    def from_json(cls, data: dict) -> SubsetPlan:
        units = [UnitPlan(**u) for u in data["units"]]
        return cls(**{**data, "units": units})


class ManifestUnreadable(DownloadError):
    """The manifest file itself is damaged (not gzip, truncated): download it again."""


def manifest_sha256(manifest: Path) -> str:
    """The manifest's sha256: the one its download verified (its marker, for a file of the size
    it recorded), else computed (a manifest given without a marker, or checked with md5). Large's
    is 7 GB: hashing it again at every run would cost a pass over it each time."""
    marker = read_marker(manifest) or {}
    algo, _, digest = str(marker.get("checksum") or "").partition(":")
    return digest if algo == "sha256" and len(digest) == 64 else sha256_file(manifest)


def plan_fingerprint(manifest_digest: str, unit_hours: float, lines_key: dict) -> str:
    key = {"format": PLAN_FORMAT, "manifest": manifest_digest, "unit_hours": unit_hours, **lines_key}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def parse_fingerprint(manifest_digest: str, lines_key: dict) -> str:
    """What the parse of a manifest depends on (not the unit size, nor the other subsets):
    its bytes and its line parser's key (Libriheavy's: the source prefix)."""
    key = {"format": PLAN_FORMAT, "manifest": manifest_digest, **lines_key}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def load_plan(out: Path, subset: str) -> SubsetPlan | None:
    data = read_json(out / "plan" / f"{subset}.json")
    return SubsetPlan.from_json(data) if data is not None else None


def ids_path(out: Path, subset: str) -> Path:
    return out / "plan" / f"{subset}.ids.npy"


def plan_subsets(
    manifests: Mapping[str, ManifestInput],
    roles: dict[str, str],
    out: Path,
    unit_hours: float,
    progress: bool = True,
    parsers: SerialParsers | None = None,
    shared: Path | None = None,
) -> list[SubsetPlan]:
    """Plan every subset (returned in `roles` order) so that no cut id is in two of them.
    The subsets are planned at the same time (`SubsetPlanner`). `shared`: a folder where parsed
    manifests are offered to, and taken from, other output folders (`ParsedManifest`)."""
    with SubsetPlanner(roles, out, unit_hours, progress, parsers, shared) as planner:
        # Highest priority first: each subset needs those above it, and evaluation manifests are
        # small, so when `manifests` are still arriving they are planned while train's downloads.
        for subset in planner.order:
            planner.manifest_ready(subset, manifests[subset])
        return planner.plans()


class SubsetPlanner:
    """Plans each subset as soon as its manifest is ready, in a thread of its own; the threads
    share one pool of parsers. `manifest_ready(subset, path)` starts one (the orchestration calls
    it once the manifest is verified, while archives may still be downloading); `plans()` waits
    for them all.

    Ids in several subsets: a subset's own duplicates are settled within it. Across subsets,
    each subset publishes its sorted id set (digests) as soon as its manifest is parsed; a subset
    waits only for the sets of the subsets of higher priority (test > dev > train, then DAG
    order) and only after its own parse, to drop the ids they keep. So train's long parse runs
    while dev and test are planned, and the outcome is that of planning them one after another
    in priority order. A subset that fails fails those of lower priority too (their copies of
    its ids could not be checked), never silently.
    """

    def __init__(
        self,
        roles: dict[str, str],
        out: Path,
        unit_hours: float,
        progress: bool = True,
        parsers: SerialParsers | None = None,
        shared: Path | None = None,
    ):
        self.roles, self.out, self.unit_hours, self.shared = dict(roles), out, unit_hours, shared
        self.order = sorted(roles, key=lambda s: ROLE_PRIORITY.index(roles[s]))  # stable: DAG order within
        self.progress, self.parsers, self.own_parsers = progress, parsers, None
        self.lock = threading.Lock()
        self.ids = {s: Future() for s in roles}
        self.done = {s: Future() for s in roles}
        self.threads: dict[str, threading.Thread] = {}

    def manifest_ready(self, subset: str, manifest: ManifestInput) -> None:
        if subset not in self.roles or subset in self.threads:
            raise ValueError(f"subset {subset!r}: unknown or already handed over")
        thread = threading.Thread(target=self._plan, args=(subset, manifest), name=f"plan {subset}", daemon=True)
        self.threads[subset] = thread
        thread.start()

    def plans(self) -> list[SubsetPlan]:
        """Every subset's plan, in `roles` order; the first error (in that order) is raised."""
        missing = [s for s in self.roles if s not in self.threads]
        if missing:
            raise ValueError(f"no manifest handed over for {', '.join(missing)}")
        return [self.done[s].result() for s in self.roles]

    def _plan(self, subset: str, manifest: ManifestInput) -> None:
        higher = self.order[: self.order.index(subset)]
        try:
            row = list(self.roles).index(subset) if self.progress else False
            plan = _plan(
                manifest,
                subset,
                self.roles[subset],
                self.out,
                self.unit_hours,
                row,
                lambda: [(s, self.ids[s].result()) for s in higher],
                self._parsers(manifest.path),
                self.ids[subset].set_result,
                self.shared,
            )
            self.done[subset].set_result(plan)
        except BaseException as err:  # handed to whoever waits on this subset
            if not self.ids[subset].done():
                self.ids[subset].set_exception(err)
            self.done[subset].set_exception(err)

    def _parsers(self, manifest: Path) -> SerialParsers:
        if self.parsers is not None:
            return self.parsers
        if small_manifest(manifest):
            return SerialParsers()
        with self.lock:  # one pool for every large manifest, started on the first one
            if self.own_parsers is None:
                self.own_parsers = default_parsers()
            return self.own_parsers

    def close(self, cancel: bool = False) -> None:
        """Wait for the subsets handed over; with `cancel` (an error or Ctrl-C on its way out),
        blocks not yet parsed are dropped first, so they stop soon. Nothing plans on after
        this returns: OUT's lock may be released next. Half-planned subsets are redone."""
        for subset in self.roles:  # never handed over: whoever waits for its ids stops
            if subset not in self.threads:
                self.ids[subset].set_exception(RuntimeError(f"subset {subset} was not planned"))
        if cancel and self.own_parsers is not None:
            self.own_parsers.close()
        for thread in self.threads.values():
            thread.join()
        if self.own_parsers is not None:
            self.own_parsers.close()

    def __enter__(self):
        return self

    def __exit__(self, kind, *exc):
        self.close(cancel=kind is not None)


def plan_subset(
    manifest: ManifestInput,
    subset: str,
    role: str,
    out: Path,
    unit_hours: float,
    progress: bool = True,
    earlier: list[tuple[str, np.ndarray]] = (),
    parsers: SerialParsers | None = None,
) -> SubsetPlan:
    """Plan `subset`, or return the committed plan when its fingerprint still matches.

    `earlier`: (subset, sorted id set) of subsets that keep their copy of an id found here too.
    `parsers`: where blocks are parsed; None: in processes for a large manifest, else here.
    """
    with parsers_for(manifest.path, parsers) as chosen:
        return _plan(manifest, subset, role, out, unit_hours, progress, lambda: list(earlier), chosen)


def _plan(
    manifest: ManifestInput,
    subset: str,
    role: str,
    out: Path,
    unit_hours: float,
    progress: bool | int,
    earlier,
    parsers: SerialParsers,
    publish_ids=lambda ids: None,
    shared: Path | None = None,
) -> SubsetPlan:
    """`plan_subset`, for subsets planned at the same time. `earlier()` waits for the id sets of
    the subsets of higher priority; `publish_ids(ids)` hands on this subset's, as soon as they
    are known (before its units are packed)."""
    digest = manifest_sha256(manifest.path)
    fingerprint = plan_fingerprint(digest, unit_hours, manifest.lines.key)
    existing, published = load_plan(out, subset), False
    if existing is not None and existing.fingerprint == fingerprint and existing.role == role:
        ids = cut_ids.load(ids_path(out, subset))
        if ids is not None:
            publish_ids(ids)  # the ids depend on the manifest alone: current
            published = True
            if existing.excluded == _excluded_key(ids, earlier()):
                return existing

    final_dir = out / "plan" / subset
    work_dir = out / "plan" / f".{subset}.partial"
    for stale in (final_dir, work_dir):
        shutil.rmtree(stale, ignore_errors=True)
    (out / "plan" / f"{subset}.json").unlink(missing_ok=True)
    ids_path(out, subset).unlink(missing_ok=True)
    work_dir.mkdir(parents=True)

    # The parse is kept: a change of the unit size or of the other subsets (whose ids this one
    # leaves to them) plans again from it, without inflating and parsing the manifest again.
    parsed = ParsedManifest(out, subset, parse_fingerprint(digest, manifest.lines.key), shared)
    scan = parsed.load()
    if scan is None:
        scan = parsed.parse(manifest, progress, parsers)
    compact = parsed.cuts
    rows = cut_ids.as_rows(scan.digests)
    unique, groups = cut_ids.sort_ids(rows)
    if not published:
        publish_ids(unique)
    earlier = earlier()
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

    recordings_of: dict[str, list[str]] = {}
    for rec, name in unit_of.items():
        recordings_of.setdefault(name, []).append(rec)
    units = [
        UnitPlan(
            name=name,
            subset=subset,
            recordings=len(recs),
            cuts=counts[name],
            seconds=round(sum(scan.recordings[r][0] for r in recs) / 1e6, 3),
            sha256=sha256_file(work_dir / f"{name}.jsonl"),
        )
        for name, recs in sorted(recordings_of.items())
    ]
    cut_ids.save(ids_path(out, subset), unique)
    work_dir.rename(final_dir)
    plan = SubsetPlan(
        subset=subset,
        role=role,
        fingerprint=fingerprint,
        cuts_in=scan.lines,
        units=units,
        rejects=scan.rejects + duplicate_rejects,
        excluded=_excluded_key(unique, earlier),
    )
    write_json_atomic(out / "plan" / f"{subset}.json", asdict(plan))
    return plan


class ParsedManifest:
    """A subset's parsed manifest, kept in `OUT/plan/<subset>.parsed/`: the compact cuts
    (`cuts.tsv`, `<line number>\t<json>` in line order: about the size of the unit files), their
    id digests (`digests.npy`) and the rest of the scan (`scan.json`: lines, unreadable lines,
    recording tallies, and the parse fingerprint; written last, so it marks a finished parse).

    With a `shared` folder (the download folder's `parsed/`, when output folders share one, as a
    corpus coded with several codecs does), a finished parse is also published there under its
    fingerprint, and a later output folder links it in (a copy across file systems) instead of
    parsing the manifest again. Publishing builds the folder aside and renames it into place, so a
    reader sees a whole parse or none; what is taken is checked as a local parse is."""

    FILES = ("cuts.tsv", "digests.npy", "scan.json")  # scan.json last: it marks a whole parse

    def __init__(self, out: Path, subset: str, fingerprint: str, shared: Path | None = None):
        self.subset, self.fingerprint = subset, fingerprint
        self.folder = out / "plan" / f"{subset}.parsed"
        self.shared = shared / f"{subset}-{fingerprint[:32]}" if shared is not None else None
        self.cuts, self.digests, self.summary = (
            self.folder / "cuts.tsv",
            self.folder / "digests.npy",
            self.folder / "scan.json",
        )

    def load(self) -> ManifestScan | None:
        """The kept scan (or the shared one, linked in), or None when there is none for this
        fingerprint (or it is damaged)."""
        scan = self._load()
        if scan is None and self.shared is not None and (self.shared / "scan.json").is_file():
            try:
                _place(self.shared, self.folder, self.FILES)
            except OSError as err:
                log.warning("cannot take the shared parse %s (%s); parsing again", self.shared, err)
                return None
            scan = self._load()
            if scan is not None:
                log.info("plan %s: the manifest's parse is taken from %s", self.subset, self.shared)
        return scan

    def _load(self) -> ManifestScan | None:
        state = read_json(self.summary)
        if not state or state.get("fingerprint") != self.fingerprint:
            return None
        rows = cut_ids.load(self.digests)
        try:
            size = self.cuts.stat().st_size
        except FileNotFoundError:
            return None
        if rows is None or size != state["cuts_bytes"] or len(rows) != state["cuts"]:
            return None
        return ManifestScan(
            lines=state["lines"],
            rejects=state["rejects"],
            digests=bytearray(rows.tobytes()),
            recordings=state["recordings"],
        )

    def parse(self, manifest: ManifestInput, progress: bool | int, parsers: SerialParsers) -> ManifestScan:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        scan = _scan(manifest, self.subset, self.cuts, progress, parsers)
        cut_ids.save(self.digests, cut_ids.as_rows(scan.digests))
        state = {
            "fingerprint": self.fingerprint,
            "lines": scan.lines,
            "cuts": scan.cuts,
            "cuts_bytes": self.cuts.stat().st_size,
            "rejects": scan.rejects,
            "recordings": scan.recordings,
        }
        write_json_atomic(self.summary, state)
        if self.shared is not None:
            self._publish()
        return scan

    def _publish(self) -> None:
        """Offer this parse to other output folders; never fails the plan (a folder that cannot
        be written only costs them a parse)."""
        if (self.shared / "scan.json").is_file():
            shutil.rmtree(self.shared, ignore_errors=True)  # damaged (it did not load): replaced
        aside = self.shared.with_name(f".{self.shared.name}.{os.getpid()}.{threading.get_ident()}")
        try:
            _place(self.folder, aside, self.FILES)
            aside.rename(self.shared)  # atomic; fails when another run published it first
        except OSError as err:
            if not self.shared.is_dir():
                log.warning("cannot share the parse of %s in %s: %s", self.subset, self.shared.parent, err)
        finally:
            shutil.rmtree(aside, ignore_errors=True)


def _place(source: Path, dest: Path, names: tuple[str, ...]) -> None:
    """`dest` made afresh with hard links to `source`'s files (copies across file systems), in
    `names` order. Files are never rewritten in place, so linked copies stay independent."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name in names:
        try:
            os.link(source / name, dest / name)
        except OSError:
            shutil.copyfile(source / name, dest / name)


def _scan(
    manifest: ManifestInput, subset: str, compact: Path, progress: bool | int, parsers: SerialParsers
) -> ManifestScan:
    """Step 1: parse every line; compact cuts go to `compact` as `<line number>\\t<json>`.
    `progress`: False for no bar, else True or the bar's row (subsets planned at once)."""
    scan = ManifestScan()
    row = None if progress is True else progress
    with (
        compact.open("wb") as sink,
        tqdm(
            total=manifest.path.stat().st_size,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=f"plan {subset}",
            disable=progress is False,
            position=row,
        ) as bar,
    ):
        try:
            blocks = read_blocks(manifest.path, parsers.block_bytes, on_read=bar.update)
            for block_scan, lines in parse_in_order(blocks, manifest.lines, subset, parsers):
                sink.write(lines)
                scan.merge(block_scan)
                bar.set_postfix(lines=scan.lines, rejects=len(scan.rejects), refresh=False)
        except GZIP_ERRORS as err:
            raise ManifestUnreadable(
                f"{manifest.path}: not a readable gzip file ({type(err).__name__}: {err}); delete it "
                f"and its .done.json marker and run again to download it again"
            ) from None
    return scan


def _excluded_key(ids: np.ndarray, earlier) -> str:
    """Digest of the ids of `ids` that subsets of higher priority keep ("" when none)."""
    taken = np.zeros(len(ids), dtype=bool)
    for _, other in earlier:
        taken |= cut_ids.member(other, ids)
    return hashlib.sha256(ids[taken].tobytes()).hexdigest() if taken.any() else ""


def _drop_duplicates(
    compact: Path, groups: list[np.ndarray], kept_by: dict[int, str], scan: ManifestScan, subset: str
) -> tuple[set[int], list[dict]]:
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
        copies = sorted(
            (p for p in group.tolist() if p not in kept_by),
            key=lambda p: (cuts[p][1]["recording_id"], cuts[p][1]["start"], cuts[p][2]),
        )
        if len(copies) > 1:
            line, keeper, _ = cuts[copies[0]]
            for p in copies[1:]:
                why[p] = (
                    f"the same id is kept at line {line} (recording {keeper['recording_id']}, "
                    f"start {keeper['start']:.3f}s)"
                )
    rejects = []
    for p in sorted(why, key=lambda p: cuts[p][0]):
        line, cut, _ = cuts[p]
        rejects.append(line_reject(subset, cut["id"], "duplicate_cut_id", line, why[p]))
        tally = scan.recordings[unit_group(cut)]
        tally[0] -= round(cut["duration"] * 1_000_000)
        tally[1] -= 1
        if tally[1] == 0:
            del scan.recordings[unit_group(cut)]
    return set(why), rejects


class _GroupOf(msgspec.Struct):
    recording_id: str
    group: str = ""


def _distribute(compact: Path, folder: Path, unit_of: dict[str, str], dropped: set[int]) -> dict[str, int]:
    """Step 4: each kept compact cut to its unit's file, in manifest order; cuts per unit.
    Consecutive cuts of a unit (a recording's cuts are usually together) are written at once."""
    decoder = msgspec.json.Decoder(_GroupOf)
    counts = dict.fromkeys(set(unit_of.values()), 0)
    with compact.open("rb") as lines, _AppendFiles(folder) as files:
        run_unit, run = None, []
        for position, line in enumerate(lines):
            if position in dropped:
                continue
            text = line[line.index(b"\t") + 1 :]
            cut = decoder.decode(text)
            name = unit_of[cut.group or cut.recording_id]
            if name != run_unit or len(run) >= 1000:
                if run:
                    files.write(run_unit, b"".join(run))
                run_unit, run = name, []
            run.append(text)
            counts[name] += 1
        if run:
            files.write(run_unit, b"".join(run))
    return counts


def read_unit_cuts(out: Path, unit: UnitPlan) -> list[dict]:
    """A unit's cuts ordered by recording, then start, then id (independent of manifest order)."""
    with unit.path(out).open() as lines:
        cuts = [json.loads(line) for line in lines]
    # By file within a recording: a recording of one file per channel (lhotse) reads each file once.
    return sorted(cuts, key=lambda c: (c["recording_id"], c["audio"], c["start"], c["id"]))


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
