"""Emilia: Amphion's WebDataset tars (per utterance an .mp3 and a .json), read in place.

In: the tars of Emilia's English part as Hugging Face publishes them (`Emilia/EN/EN-B000000.tar`
..., a gated repository: the token comes from the environment, `HF_TOKEN`), downloaded by the
ranged, resumable downloader, or a folder already holding them (`audio_dir`).
Out: per subset, `OUT/emilia/emilia_<subset>.jsonl`, one line per utterance of its tars (the
json member as it is, the member names, the tar), written once per set of tars and reused while
the tars are the same (its marker `<file>.done.json` records them and the file's sha256); the
line parser (`EmiliaLines`) turns a line into a compact cut whose `group` is its tar, so a unit
holds whole tars, and the units read the mp3 members in place: a cut's audio is
`<tar>/<member>` (pipeline.fetch.audio_store.NamedTarStore, which keeps a few tars' indexes per
process, not the corpus's tens of millions of members).

A json member is `{"id", "wav", "text", "duration", "speaker", "language", "dnsmos", ...}`;
members pair by their WebDataset key (the name up to the first dot of its base name). Counted
rejects, never a crash: a json that is not JSON or lacks a key (bad_manifest_line), a json
without its mp3 (missing_audio), an mp3 without its json (missing_json), a DNSMOS below
`filter.min_dnsmos` (low_dnsmos); the unit stage adds too_short / too_long (segment:), empty_text.
See docs/sources.md (Emilia).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import msgspec
from braceexpand import braceexpand

from pipeline.fetch.audio_store import NamedTarStore, index_tar, indexed_tars
from pipeline.fetch.sources import Downloads, Lookup
from pipeline.fetch.transfers import DownloadSettings, FileJob, Transfers, download_folder
from pipeline.plan.manifest import BadLine, ManifestInput
from pipeline.plan.subsets import ROLE_PRIORITY, manifest_sha256
from storage.download import marker_path, read_marker
from storage.files import replacing, write_json_atomic
from storage.hashing import checksum_problems, parse_checksums
from storage.http import BearerToken
from storage.settings import Problems

if TYPE_CHECKING:
    from pipeline.dag import Dag

KIND = "emilia"
DEFAULT_TEXT_FIELD = "text"
REFERENCE = None  # an evaluation set's WER is scored against the corpus's own text (the json's)
HAS_DNSMOS = True  # filter.min_dnsmos applies (pipeline.dag)
BASE_URL = "https://huggingface.co/datasets/amphion/Emilia-Dataset/resolve/main/Emilia/EN/"
TERMS = (
    "Emilia is gated: accept its terms at https://huggingface.co/datasets/amphion/Emilia-Dataset "
    "with the account the token belongs to (huggingface.co/settings/tokens makes one)."
)
MANIFEST_FORMAT = 1  # of the lines written here; part of the manifest's marker
MAX_JSON_BYTES = 1 << 20  # a json member larger than this is refused unread
_MEMBER = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # WebDataset's key and extension


@dataclass
class Config:
    KIND: ClassVar[str] = KIND
    base_url: str = BASE_URL
    # Subset -> its tar file names; {a..b} ranges expand (EN-B{000000..000099}.tar: 100 tars).
    archives: dict[str, list[str]] = field(default_factory=dict)
    # A folder already holding the tars (read in place; indexes go under OUT); none downloaded.
    audio_dir: str | None = None
    # Tar name -> "sha256:<hex>" (Hugging Face shows each LFS file's sha256); null skips verification.
    checksums: dict[str, str] | None = field(default_factory=dict)
    download_dir: str | None = None  # default: OUT/downloads
    # The environment variable holding the access token, sent to base_url's host only; null: none.
    token_env: str | None = "HF_TOKEN"

    def problems(self) -> Problems:
        if not self.base_url and not self.audio_dir:
            yield "base_url", "is required (or audio_dir)"
        if not isinstance(self.archives, dict) or not self.archives:
            yield "archives", "must map each subset to its tar names, e.g. {train: ['EN-B{000000..000009}.tar']}"
        yield from checksum_problems(self.checksums)

    def tars(self, subset: str) -> list[str]:
        return [name for pattern in self.archives.get(subset, []) for name in braceexpand(pattern)]


def text_field_problem(name: str) -> str | None:
    return None if name == "text" else f"must be 'text' for an Emilia source (its json's one transcript), got {name!r}"


def settle(dag: Dag, dag_dir: Path) -> None:
    """Locations against the DAG's folder; brace ranges expanded; no `subsets:` given: every
    archives subset, dev*/test* by name as dev/test, the rest train."""
    from pipeline.dag import as_url

    src = dag.source
    if src.base_url:
        src.base_url = as_url(src.base_url, dag_dir)
    if src.audio_dir:
        src.audio_dir = str((dag_dir / src.audio_dir).resolve())
    src.archives = {subset: src.tars(subset) for subset in src.archives}
    subsets = dag.subsets
    if not (subsets.train or subsets.dev or subsets.test):
        for subset in src.archives:
            role = next((r for r in ("dev", "test") if subset.startswith(r)), "train")
            getattr(subsets, role).append(subset)


def check(dag: Dag) -> None:
    from pipeline.dag import DagError

    src, roles = dag.source, dag.subsets.roles()
    if set(src.archives) != set(roles):
        raise DagError(
            f"source.archives names subsets {sorted(src.archives)}, subsets: lists {sorted(roles)}; "
            f"give every subset its tars"
        )
    owner: dict[str, str] = {}
    for subset, names in src.archives.items():
        if not names:
            raise DagError(f"source.archives.{subset} is empty")
        for name in names:
            if not name.endswith(".tar") or "/" in name or "{" in name:
                raise DagError(f"source.archives.{subset}: {name!r} must be a plain .tar file name")
            if name in owner:
                raise DagError(f"source.archives: {name} is in subsets {owner[name]} and {subset}")
            owner[name] = subset
    for name in src.checksums or {}:
        if name not in owner:
            raise DagError(f"source.checksums names {name!r}, which no subset of source.archives lists")


def plan_settings(config: Config) -> dict:
    return {}


# -- the manifest lines -------------------------------------------------------------------------
class _Line(msgspec.Struct, forbid_unknown_fields=True):
    tar: str
    key: str
    mp3: str | None = None
    json: str | None = None
    meta: msgspec.Raw = msgspec.Raw()
    error: str | None = None


class _Meta(msgspec.Struct):  # other keys (wav, phone_count, ...) are skipped
    id: str
    text: str
    duration: float
    speaker: str
    language: str | None = None
    dnsmos: float | None = None


_LINE = msgspec.json.Decoder(_Line)
_META = msgspec.json.Decoder(_Meta)


@dataclass(frozen=True)
class EmiliaLines:
    """One manifest line (an utterance of a tar) -> its compact cut or a `BadLine`; picklable."""

    min_dnsmos: float | None = None

    def __call__(self, raw: bytes | str) -> list[dict | BadLine]:
        try:
            return [self.cut(raw)]
        except BadLine as err:
            return [err]

    @property
    def key(self) -> dict:
        return {"emilia_lines": MANIFEST_FORMAT, "min_dnsmos": self.min_dnsmos}

    def cut(self, raw: bytes | str) -> dict:
        try:
            line = _LINE.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as err:
            raise BadLine(f"not a line of an Emilia manifest: {err}") from None
        where = f"{line.tar}: {line.key}"
        if line.json is None:
            raise BadLine(f"{where}.mp3 has no json", "missing_json", line.key)
        if line.error is not None:
            raise BadLine(f"{where}: {line.error}", cut_id=line.key)
        try:
            meta = _META.decode(line.meta)
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            raise BadLine(f"{line.tar}: {line.json}: {err}", cut_id=line.key) from None
        if not math.isfinite(meta.duration) or meta.duration <= 0:
            raise BadLine(f"{where}: duration is {meta.duration}, must be > 0", cut_id=meta.id)
        if line.mp3 is None:
            raise BadLine(f"{where}.json has no mp3 beside it", "missing_audio", meta.id)
        if self.min_dnsmos is not None:
            if meta.dnsmos is None or not math.isfinite(meta.dnsmos):
                raise BadLine(f"{where}: no dnsmos to filter on", cut_id=meta.id)
            if meta.dnsmos < self.min_dnsmos:
                raise BadLine(f"{where}: dnsmos {meta.dnsmos:.3f} < {self.min_dnsmos:g}", "low_dnsmos", meta.id)
        return {
            "id": meta.id,
            "recording_id": meta.id,
            "audio": f"{line.tar}/{line.mp3}",  # read by NamedTarStore
            "start": 0.0,
            "duration": meta.duration,
            "channel": 0,
            "speaker": meta.speaker,
            "texts": {"text": meta.text},
            "group": line.tar,
            "language": meta.language,
        }


def tar_lines(tar: Path) -> Iterator[bytes]:
    """The manifest lines of one tar (indexed first, `<tar>.members.json`), in member order: its
    json members read in place, as they are when they parse, else with the error."""
    index = json.loads(index_tar(tar).read_text(encoding="utf-8"))
    pairs: dict[str, dict[str, tuple[str, int, int]]] = {}
    for name, (offset, size) in index["members"].items():
        match = _MEMBER.match(name)
        if match and match.group(2) in ("mp3", "json"):
            pairs.setdefault(match.group(1), {})[match.group(2)] = (name, offset, size)
    fd = os.open(tar, os.O_RDONLY)
    try:
        for key, found in pairs.items():
            line = {"tar": tar.name, "key": key, "mp3": found.get("mp3", (None,))[0], "json": None}
            if "json" in found:
                line["json"], offset, size = found["json"]
                try:
                    if size > MAX_JSON_BYTES:
                        raise ValueError(f"{size} bytes, more than a json member may hold ({MAX_JSON_BYTES})")
                    line["meta"] = json.loads(os.pread(fd, size, offset))
                except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
                    line["error"] = f"{line['json']} is not readable JSON: {err}"
            yield json.dumps(line, ensure_ascii=False).encode("utf-8") + b"\n"
    finally:
        os.close(fd)


def tars_key(tars: list[Path]) -> list[dict]:
    """What a subset's manifest depends on: each tar's name and size, and its verified sha256
    (a download's marker) or, without one, its modification time."""
    key = []
    for tar in tars:
        checksum = (read_marker(tar) or {}).get("checksum")
        stat = tar.stat()
        key.append(
            {
                "tar": tar.name,
                "bytes": stat.st_size,
                **({"checksum": checksum} if checksum else {"mtime_ns": stat.st_mtime_ns}),
            }
        )
    return key


def write_manifest(tars: list[Path], dest: Path, wait=lambda tar: tar) -> Path:
    """`dest` (and its marker) from `tars`, unless the marker says it was made from these same
    tars; `wait(tar)` blocks until a tar is downloaded, so each is read as soon as it is there."""
    marker = read_marker(dest) or {}
    if marker.get("format") == MANIFEST_FORMAT and marker.get("tars") == tars_key([wait(t) for t in tars]):
        return dest
    marker_path(dest).unlink(missing_ok=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    with replacing(dest) as tmp, open(tmp, "wb") as out:
        for tar in tars:
            for line in tar_lines(wait(tar)):
                out.write(line)
                digest.update(line)
                size += len(line)
    record = {"bytes": size, "checksum": f"sha256:{digest.hexdigest()}", "format": MANIFEST_FORMAT}
    write_json_atomic(marker_path(dest), {**record, "tars": tars_key(tars)})
    return dest


# -- the opened source --------------------------------------------------------------------------
class Opened(Downloads):
    """The tars (downloading in the background, or linked from audio_dir) and each subset's manifest."""

    def __init__(self, dag: Dag, out: Path, progress: bool, pool):
        from pipeline.dag import DagError

        src, dl = dag.source, dag.download
        self.pool, self.lines = pool, EmiliaLines(dag.filter.min_dnsmos)
        # evaluation subsets plan first (pipeline.plan.subsets), so their tars come first
        roles = sorted(dag.subsets.roles().items(), key=lambda item: ROLE_PRIORITY.index(item[1]))
        names = {subset: src.archives[subset] for subset, _ in roles}
        if src.audio_dir:  # linked under OUT, so the tars' indexes are written there
            missing = [n for ns in names.values() for n in ns if not (Path(src.audio_dir) / n).is_file()]
            if missing:
                pool.close()
                raise DagError(
                    f"source.audio_dir {src.audio_dir} lacks {len(missing)} tar(s) source.archives lists: "
                    f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
                )
            folder = tar_folder(dag, out)
            folder.mkdir(parents=True, exist_ok=True)
            for name in (n for ns in names.values() for n in ns):
                _link(folder / name, Path(src.audio_dir) / name)
        else:
            folder = tar_folder(dag, out)
            checksums = parse_checksums(src.checksums)
            auth = BearerToken(src.token_env, TERMS) if src.token_env else None
            jobs = [
                FileJob(src.base_url + name, folder / name, checksums.get(name), auth)
                for ns in names.values()
                for name in ns
            ]
            self.transfers = Transfers(jobs, DownloadSettings.of(dl), pool, progress)
        self.tars = {subset: [folder / n for n in ns] for subset, ns in names.items()}
        self.paths = {subset: manifest_path(out, subset) for subset in dag.subsets.roles()}

    def _wait(self, tar: Path) -> Path:
        return self.transfers.wait(tar) if self.transfers is not None else tar

    def manifests(self) -> Mapping[str, ManifestInput]:
        return Lookup(self.paths, self.manifest)

    def manifest(self, subset: str) -> ManifestInput:
        """The subset's manifest, made from its tars as each arrives (or reused)."""
        return ManifestInput(write_manifest(self.tars[subset], self.paths[subset], self._wait), self.lines)

    def audio_store(self) -> NamedTarStore:
        tars = [self._wait(tar) for subset in self.tars for tar in self.tars[subset]]
        for tar in tars:
            index_tar(tar)
        return NamedTarStore(tars)

    def provenance(self) -> dict:
        files = {path.name: manifest_sha256(path) for path in self.paths.values() if path.exists()}
        return {"kind": KIND, "manifests": files}


def open_source(dag: Dag, out: Path, progress: bool, pool) -> Opened:
    return Opened(dag, out, progress, pool)


def manifest_path(out: Path, subset: str) -> Path:
    return out / "emilia" / f"emilia_{subset}.jsonl"


def tar_folder(dag: Dag, out: Path) -> Path:
    """Where the run reads the tars: linked from audio_dir under OUT (their indexes go beside
    them), or downloaded."""
    return out / "emilia" / "tars" if dag.source.audio_dir else download_folder(dag.source, out)


# ---- what an evaluation set reads of a finished run (pipeline.evalsets.from_corpus) ------------


def run_manifest(dag: Dag, subset: str) -> ManifestInput:
    return ManifestInput(manifest_path(dag.out, subset), EmiliaLines(dag.filter.min_dnsmos))


def run_audio_store(dag: Dag, subset: str) -> NamedTarStore:
    """The subset's tars, as the run left them (nothing downloaded)."""
    return NamedTarStore(indexed_tars([tar_folder(dag, dag.out) / name for name in dag.source.archives[subset]]))


def _link(link: Path, target: Path) -> None:
    if link.is_symlink() and os.readlink(link) == str(target):
        return
    link.unlink(missing_ok=True)
    link.symlink_to(target)
