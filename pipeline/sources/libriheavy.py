"""Libriheavy (the default kind): lhotse MonoCut manifests with `custom.texts` [book, ASR],
downloaded from Hugging Face, and LibriLight's audio tars read in place (or an extracted tree).

Manifest lines are parsed by `pipeline.plan.manifest.LibriheavyLines`; downloads and the audio
store are `pipeline.fetch.sources.Sources`. See shared/LIBRIHEAVY.md for the exact format.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pipeline.fetch.audio_store import DirAudioStore, TarAudioStore, indexed_tars
from pipeline.fetch.sources import Lookup, Sources
from pipeline.fetch.transfers import download_folder
from pipeline.plan.manifest import LibriheavyLines, ManifestInput
from pipeline.plan.subsets import manifest_sha256
from storage.hashing import checksum_problems
from storage.settings import Problems
from tokens.text import TEXT_FIELDS, has_words, select_text

if TYPE_CHECKING:
    from pipeline.dag import Dag

KIND = "libriheavy"
DEFAULT_TEXT_FIELD = "book"
REFERENCE = "asr transcript (texts[1])"  # what an evaluation set's WER is scored against


@dataclass
class Config:
    KIND: ClassVar[str] = KIND
    manifest_base_url: str = ""
    audio_base_url: str | None = None
    audio_archives: list[str] = field(default_factory=list)
    # An already extracted LibriLight tree; when set, audio archives are not downloaded.
    audio_dir: str | None = None
    # Manifests name audio as download/librilight/<subset>/...; this prefix is stripped.
    source_prefix: str = "download/librilight/"
    # File name -> "sha256:<hex>" or "md5:<hex>"; null skips verification (with a warning).
    checksums: dict[str, str] | None = field(default_factory=dict)
    download_dir: str | None = None  # default: OUT/downloads

    def manifest_name(self, subset: str) -> str:
        return f"libriheavy_cuts_{subset}.jsonl.gz"

    def problems(self) -> Problems:
        if not self.manifest_base_url:
            yield "manifest_base_url", "is required"
        yield from checksum_problems(self.checksums)


def text_field_problem(name: str) -> str | None:
    if name not in TEXT_FIELDS:
        return f"must be one of {sorted(TEXT_FIELDS)} for a Libriheavy source, got {name!r}"
    return None


def settle(dag: Dag, dag_dir: Path) -> None:
    from pipeline.dag import as_url

    src = dag.source
    if src.manifest_base_url:  # an empty one is reported by Config.problems
        src.manifest_base_url = as_url(src.manifest_base_url, dag_dir)
    if src.audio_base_url:
        src.audio_base_url = as_url(src.audio_base_url, dag_dir)
    if src.audio_dir:
        src.audio_dir = str((dag_dir / src.audio_dir).resolve())


def check(dag: Dag) -> None:
    from pipeline.dag import DagError

    src = dag.source
    if src.audio_dir is None:
        if not src.audio_base_url or not src.audio_archives:
            raise DagError("set source.audio_base_url and source.audio_archives, or source.audio_dir")
        for name in src.audio_archives:
            if not name.endswith(".tar") or "/" in name:
                raise DagError(f"source.audio_archives: {name!r} must be a plain .tar file name")
    if src.checksums:
        known = {src.manifest_name(s) for s in dag.subsets.roles()} | set(src.audio_archives)
        for name in src.checksums:
            if name not in known:
                raise DagError(
                    f"source.checksums names {name!r}, which this DAG does not download "
                    f"(downloads: {', '.join(sorted(known))})"
                )


def plan_settings(config: Config) -> dict:
    return {"source_prefix": config.source_prefix}


class Opened(Sources):
    """The downloads (`Sources`), with each manifest handed over with its line parser."""

    def __init__(self, dag: Dag, out: Path, progress: bool, pool):
        super().__init__(dag, out, progress, pool)
        self.lines = LibriheavyLines(dag.source.source_prefix)

    def manifests(self) -> Mapping[str, ManifestInput]:
        paths = super().manifests()
        return Lookup(paths, lambda subset: ManifestInput(paths[subset], self.lines))

    def provenance(self) -> dict:
        files = {path.name: manifest_sha256(path) for path in super().manifests().values()}
        return {"kind": KIND, "manifests": files}


def open_source(dag: Dag, out: Path, progress: bool, pool) -> Opened:
    return Opened(dag, out, progress, pool)


# ---- what an evaluation set reads of a finished run (pipeline.evalsets.from_corpus) ------------


def run_manifest(dag: Dag, subset: str) -> ManifestInput:
    src = dag.source
    return ManifestInput(download_folder(src, dag.out) / src.manifest_name(subset), LibriheavyLines(src.source_prefix))


def run_audio_store(dag: Dag, subset: str):
    """The extracted tree, or the downloaded (verified) tars, all of them: a subset's recordings
    may lie in any."""
    src = dag.source
    if src.audio_dir:
        return DirAudioStore(Path(src.audio_dir))
    return TarAudioStore(indexed_tars([download_folder(src, dag.out) / name for name in src.audio_archives]))


def reference(cut: dict) -> str | None:
    """The cut's ASR transcript (custom.texts[1], normalized as the corpus's text is), or None
    when it has none with a word in it."""
    text = select_text(cut["texts"], "asr")
    return text if has_words(text) else None
