"""lhotse manifests, as any lhotse recipe writes them (`lhotse prepare librittsr|vctk|ljspeech ...`).

A folder (or one file, or an http(s):// folder) of `<prefix>_cuts_<part>.jsonl[.gz]`, or of
`<prefix>_recordings_<part>` + `<prefix>_supervisions_<part>`. Each part is a subset; a local
folder is listed, so its parts (and roles: dev*/test* are dev/test, the rest train) fill an
empty `subsets:`. Lines become compact cuts in pipeline.plan.lhotse_lines (the recordings +
supervisions form joined through an on-disk table, pipeline.plan.recordings_table); audio is
read where the manifests say it is (pipeline.fetch.path_audio). See docs/sources.md.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pipeline.fetch.path_audio import PathAudioStore
from pipeline.fetch.sources import Downloads, Lookup
from pipeline.fetch.transfers import DownloadSettings, FileJob, Transfers, download_folder
from pipeline.plan.lhotse_lines import CutLines, SupervisionLines
from pipeline.plan.manifest import GZIP_ERRORS, ManifestInput
from pipeline.plan.recordings_table import build_table, table_path
from pipeline.plan.subsets import manifest_sha256
from storage.download import DownloadError
from storage.hashing import checksum_problems, hash_file, parse_checksums
from storage.settings import Problems

if TYPE_CHECKING:
    from pipeline.dag import Dag

log = logging.getLogger(__name__)

KIND = "lhotse"
DEFAULT_TEXT_FIELD = "text"
REFERENCE = None  # an evaluation set's WER is scored against the corpus's own text
FORMS = ("cuts", "recordings")
# lhotse's file names: <prefix>_<what>_<part>.jsonl.gz, or <what>_<part>... without a prefix.
_FILE = re.compile(r"^(?:(?P<prefix>.+?)_)??(?P<what>cuts|recordings|supervisions)_(?P<part>.+?)\.jsonl(?:\.gz)?$")


@dataclass
class Config:
    KIND: ClassVar[str] = KIND
    # A folder of manifests, one manifest file, or an http(s):// folder (then `subsets:` must
    # list the parts, and `prefix` be set: a URL folder cannot be listed).
    manifests: str = ""
    # The <prefix> of <prefix>_cuts_<part>.jsonl.gz ("": none); null: the one prefix in the folder.
    prefix: str | None = None
    # cuts, or recordings (+ supervisions); null: cuts where a part has a cuts file, else
    # recordings (a URL folder: cuts).
    form: str | None = None
    # Subset -> the part's name in file names (dev_clean -> dev-clean); filled for a folder.
    parts: dict[str, str] = field(default_factory=dict)
    # Relative audio paths are read under this folder (or URL); null: the working directory,
    # as lhotse reads them (recipes write paths relative to where `lhotse prepare` ran).
    audio_root: str | None = None
    # File name -> "sha256:<hex>" or "md5:<hex>"; the manifests are checked against them.
    checksums: dict[str, str] | None = field(default_factory=dict)
    download_dir: str | None = None  # URL manifests go here; default: OUT/downloads

    @property
    def remote(self) -> bool:
        return "://" in self.manifests

    def problems(self) -> Problems:
        if self.form is not None and self.form not in FORMS:
            yield "form", f"must be one of {list(FORMS)} or null, got {self.form!r}"
        yield from checksum_problems(self.checksums)


def text_field_problem(name: str) -> str | None:
    if not name:
        return "must name a supervision field: text, or a custom field's name"
    return None


# ---- where the manifests are -------------------------------------------------------------


def subset_name(part: str) -> str:
    """A part's subset name: letters, digits and underscores (dev-clean -> dev_clean)."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", part)
    return name if name[:1].isalnum() else "p" + name


def role_of(part: str) -> str:
    lowered = part.lower()
    return "dev" if lowered.startswith("dev") else "test" if lowered.startswith("test") else "train"


def listing(folder: Path) -> dict[str, dict[str, dict[str, Path]]]:
    """prefix -> part -> {"cuts"|"recordings"|"supervisions": file} of a folder's manifests."""
    found: dict = {}
    for path in sorted(folder.iterdir(), key=lambda p: (not p.name.endswith(".gz"), p.name)):
        if match := _FILE.match(path.name):
            parts = found.setdefault(match["prefix"] or "", {})
            parts.setdefault(match["part"], {}).setdefault(match["what"], path)  # .jsonl.gz before .jsonl
    return found


def file_name(prefix: str, what: str, part: str) -> str:
    return f"{prefix}_{what}_{part}.jsonl.gz" if prefix else f"{what}_{part}.jsonl.gz"


def manifest_files(src: Config, part: str) -> dict[str, str]:
    """The files of `part`: {"cuts": location} or {"recordings": ..., "supervisions": ...}."""
    if src.remote:
        base = src.manifests.rstrip("/") + "/"
        kinds = ("recordings", "supervisions") if src.form == "recordings" else ("cuts",)
        return {k: base + file_name(src.prefix, k, part) for k in kinds}
    path = Path(src.manifests)
    if path.is_file():
        match = _FILE.match(path.name)
        if match is None or match["what"] == "cuts":
            return {"cuts": str(path)}
        path = path.parent
    have = listing(path).get(src.prefix, {}).get(part, {})
    if src.form == "cuts" or (src.form is None and "cuts" in have):
        return {"cuts": str(have.get("cuts", path / file_name(src.prefix, "cuts", part)))}
    return {k: str(have.get(k, path / file_name(src.prefix, k, part))) for k in ("recordings", "supervisions")}


def settle(dag: Dag, dag_dir: Path) -> None:
    from pipeline.dag import DagError, as_url

    src, subsets = dag.source, dag.subsets
    if not src.manifests:
        raise DagError("source.manifests: is required: --set source.manifests=DIR (a folder of lhotse manifests)")
    if src.audio_root is None:
        src.audio_root = str(Path.cwd())
    elif "://" not in src.audio_root:
        src.audio_root = str((dag_dir / src.audio_root).resolve())
    listed = bool(subsets.roles())
    if src.remote:
        src.manifests = as_url(src.manifests, dag_dir)
        if not listed or src.prefix is None:
            raise DagError(
                f"source.manifests is a URL ({src.manifests}), which cannot be listed: set source.prefix "
                "and list the parts under subsets: (train/dev/test), with source.parts naming any whose "
                "file name is not a subset name (dev_clean: dev-clean)"
            )
        for subset in subsets.roles():
            src.parts.setdefault(subset, subset)
        return
    path = (dag_dir / src.manifests).resolve()
    src.manifests = str(path)
    if path.is_file():
        match = _FILE.match(path.name)
        prefix, part = (match["prefix"] or "", match["part"]) if match else ("", path.name.split(".")[0])
        found = {prefix: {part: {}}}
    elif path.is_dir():
        found = listing(path)
    else:
        raise DagError(
            f"source.manifests: {path} does not exist (a relative path given with --set is read from the "
            "working directory; one written in the DAG file, from the DAG file's folder)"
        )
    if not found:
        raise DagError(f"source.manifests: no lhotse manifests (<prefix>_cuts_<part>.jsonl.gz, ...) in {path}")
    if src.prefix is None:
        if len(found) > 1:
            raise DagError(f"source.manifests: {path} holds several prefixes ({', '.join(found)}): set source.prefix")
        src.prefix = next(iter(found))
    if src.prefix not in found:
        raise DagError(f"source.prefix: no {src.prefix}_* manifests in {path} (found: {', '.join(found)})")
    parts = found[src.prefix]
    by_name: dict[str, str] = {}
    for part, files in parts.items():
        if files and "cuts" not in files and "supervisions" not in files:
            log.warning("part %s of %s has recordings but no supervisions: nothing to train on, left out", part, path)
            continue
        name = subset_name(part)
        if name in by_name:
            raise DagError(f"parts {by_name[name]!r} and {part!r} would both be subset {name!r}: rename one")
        by_name[name] = part
    if not listed:
        for name, part in by_name.items():
            getattr(subsets, role_of(part)).append(name)
    for subset in subsets.roles():
        if subset not in src.parts:
            if subset not in by_name:
                raise DagError(
                    f"subsets names {subset!r}, which is no part of {path} (parts: {', '.join(sorted(by_name))})"
                )
            src.parts[subset] = by_name[subset]


def check(dag: Dag) -> None:
    """A local manifest that is missing, or that is not lhotse's at all, stops the run here."""
    from pipeline.dag import DagError

    src = dag.source
    names = set()
    for subset in dag.subsets.roles():
        for what, location in manifest_files(src, src.parts[subset]).items():
            names.add(location.rsplit("/", 1)[-1])
            if src.remote:
                continue
            if not Path(location).is_file():
                raise DagError(f"subset {subset}: {location} does not exist (a {what} manifest)")
            if problem := not_lhotse(Path(location), what):
                raise DagError(problem)
    for name in src.checksums or {}:
        if name not in names:
            raise DagError(
                f"source.checksums names {name!r}, which this DAG does not read ({', '.join(sorted(names))})"
            )


# How lhotse itself tells its manifests apart (lhotse.serialization.deserialize_item): a recording
# has sources; a cut has a type; a supervision has none, and names its recording.
_LOOKS = {
    "cuts": ("a cut (with id, start, duration and type)", lambda d: {"id", "start", "duration", "type"} <= d.keys()),
    "recordings": ("a recording (with id and sources)", lambda d: {"id", "sources"} <= d.keys()),
    "supervisions": (
        "a supervision (with id, recording_id and start, no type)",
        lambda d: {"id", "recording_id", "start"} <= d.keys() and "type" not in d,
    ),
}
FIRST_LINE_BYTES = 1 << 24  # a lhotse line is far shorter; a file of one huge line is not a manifest


def not_lhotse(path: Path, what: str) -> str | None:
    """Why `path` is not a lhotse `what` manifest, judged by its first line; None if it may be."""
    try:
        with gzip.open(path) if path.suffix == ".gz" else open(path, "rb") as f:
            first = b""
            while not first.strip() and (line := f.readline(FIRST_LINE_BYTES)):
                first = line
    except GZIP_ERRORS as err:
        form = "gzip" if path.suffix == ".gz" else "text"
        return f"{path} is not a lhotse manifest: it cannot be read as {form} ({err})"
    if not first.strip():
        return None  # an empty part: nothing to plan
    try:
        data = json.loads(first)
    except ValueError:
        return f"{path} is not a lhotse manifest: its first line is not JSON ({first[:80]!r})"
    expected, looks = _LOOKS[what]
    if not isinstance(data, dict) or not looks(data):
        return (
            f"{path} is not a lhotse {what} manifest: its first line is not {expected}: {first[:80]!r}. "
            "Point source.manifests at the output of a lhotse recipe"
        )
    return None


def plan_settings(config: Config) -> dict:
    return {"kind": KIND}


# ---- a run's manifests --------------------------------------------------------------------


class Opened(Downloads):
    """The manifests (downloaded first for a URL folder), parsed lazily per subset."""

    def __init__(self, dag: Dag, out: Path, progress: bool, pool):
        src, dl = dag.source, dag.download
        self.src, self.out, self.pool = src, out, pool
        self.files = {s: manifest_files(src, src.parts[s]) for s in dag.subsets.roles()}
        self.checksums = parse_checksums(src.checksums)
        self.digests: dict[str, str] = {}
        if src.remote:
            folder = download_folder(src, out)
            urls = {url: folder / url.rsplit("/", 1)[-1] for files in self.files.values() for url in files.values()}
            jobs = [FileJob(url, dest, self.checksums.get(dest.name)) for url, dest in urls.items()]
            self.transfers = Transfers(jobs, DownloadSettings.of(dl), pool, progress)
            self.files = {s: {k: str(urls[u]) for k, u in files.items()} for s, files in self.files.items()}

    def _ready(self, location: str, what: str) -> Path:
        """The local, verified manifest file; a URL's waits for its download. A downloaded file that
        is not lhotse's stops the run before it is planned, as a local one stops it at load."""
        from pipeline.dag import DagError

        path = Path(location)
        if self.transfers is not None:
            self.transfers.wait(path)
            if problem := not_lhotse(path, what):
                raise DagError(problem)
        elif (expected := self.checksums.get(path.name)) and hash_file(path, expected.algo) != expected.hexdigest:
            raise DownloadError(f"{path} does not match source.checksums ({expected}): a changed or damaged file")
        return path

    def _sha256(self, path: Path) -> str:
        if str(path) not in self.digests:
            self.digests[str(path)] = manifest_sha256(path)
        return self.digests[str(path)]

    def manifest(self, subset: str) -> ManifestInput:
        return manifest_input(self.files[subset], self.src, self.out, self._ready, self._sha256)

    def manifests(self) -> Mapping[str, ManifestInput]:
        return Lookup(self.files, self.manifest)

    def audio_store(self) -> PathAudioStore:
        return PathAudioStore(self.src.audio_root)

    def provenance(self) -> dict:
        paths = [Path(p) for files in self.files.values() for p in files.values()]
        return {"kind": KIND, "manifests": {p.name: self._sha256(p) for p in paths}}


def open_source(dag: Dag, out: Path, progress: bool, pool) -> Opened:
    return Opened(dag, out, progress, pool)


def manifest_input(files: dict[str, str], src: Config, out: Path, ready, sha256) -> ManifestInput:
    """A part's manifest as the planner reads it; `ready(location, what)` is the local file."""
    if "cuts" in files:
        return ManifestInput(ready(files["cuts"], "cuts"), CutLines(src.audio_root))
    recordings = ready(files["recordings"], "recordings")
    supervisions = ready(files["supervisions"], "supervisions")
    digest = sha256(recordings)
    table = build_table(recordings, table_path(out / "plan" / "lhotse", digest))
    return ManifestInput(supervisions, SupervisionLines(str(table), digest, src.audio_root))


# ---- what an evaluation set reads of a finished run (pipeline.evalsets.from_corpus) ------------


def run_manifest(dag: Dag, subset: str) -> ManifestInput:
    """The part's manifest where the run read it (a URL folder's: its download), nothing fetched."""
    src = dag.source
    files = manifest_files(src, src.parts[subset])
    if src.remote:
        files = {what: str(download_folder(src, dag.out) / url.rsplit("/", 1)[-1]) for what, url in files.items()}
    return manifest_input(files, src, dag.out, lambda location, what: Path(location), manifest_sha256)


def run_audio_store(dag: Dag, subset: str) -> PathAudioStore:
    return PathAudioStore(dag.source.audio_root)
