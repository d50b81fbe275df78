"""Load a DAG file (YAML) into typed, checked configuration.

In: a path to `dags/*.yaml` and `--set dotted.key=value` overrides (values parsed as YAML, any
depth). Out: a `Dag` of small dataclasses, one per stage, read by storage.settings (the loader
trainer configs use too). Unknown keys, wrong types, values out of range (each section's
`problems()`, beside its fields) and broken wiring (a subset with no manifest, a checksum for a
file nothing downloads, ...) are reported with the key path before any work starts. Input
locations inside a DAG that have no URL scheme are resolved against the DAG file's folder;
`output.dir` is relative to the working directory. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.sources import DEFAULT_KIND, KINDS, kind_of, libriheavy
from pipeline.text.bpe import BpeConfig, given_model_problem
from schemas import FORMATS
from storage import settings
from storage.hashing import json_digest
from storage.settings import Problems, positive
from tokens.codec_settings import DEFAULT_CODEC, WEIGHT_KINDS, CodecConfig

DEFAULT_FORMATS = ("webdataset", "parquet")
ROLES = ("train", "dev", "test")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]*$")


class DagError(ValueError):
    """A DAG that cannot run; the message names the file, the key and what to do."""


@dataclass
class DownloadConfig:
    # Connections at once per host, over all files; a large file takes up to all of them, one
    # byte range each (pipeline.fetch.transfers).
    connections: int = 8
    # Files longer than this go as ranges of this size (MB = 1e6 bytes); shorter ones as one
    # stream. A kill -9 costs at most the ranges in flight: `connections` x `range_mb`.
    range_mb: float = 2000.0
    retries: int = 8  # attempts in a row without progress, per stream or range
    timeout_s: float = 60.0  # a connection silent this long is dropped and retried

    @property
    def range_bytes(self) -> int:
        return max(1, int(self.range_mb * 1e6))

    def problems(self) -> Problems:
        for key in ("connections", "range_mb", "retries", "timeout_s"):
            yield from positive(getattr(self, key), key)


@dataclass
class SubsetsConfig:
    train: list[str] = field(default_factory=list)
    dev: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)

    def roles(self) -> dict[str, str]:
        """Subset name -> role, in DAG order (train, dev, test)."""
        return {s: role for role in ROLES for s in getattr(self, role)}


@dataclass
class PlanConfig:
    # Whole recordings are packed into units of about this much cut audio. A unit is the grain
    # of resume and distribution: ~20 h is ~1-2 min of EnCodec on one GPU, ~50 MB of shards.
    unit_hours: float = 20.0

    def problems(self) -> Problems:
        yield from positive(self.unit_hours, "unit_hours")


@dataclass
class SegmentConfig:
    min_duration: float = 1.0  # seconds; Libriheavy cuts are >= 2 s, so this only drops damage
    max_duration: float = 40.0  # 99th percentile is ~31 s; longer cuts are rare and costly

    def problems(self) -> Problems:
        if not 0 < self.min_duration < self.max_duration:
            yield (
                "min_duration",
                (
                    f"must be > 0 and below max_duration (need 0 < min_duration < "
                    f"max_duration), got {self.min_duration} and {self.max_duration}"
                ),
            )


@dataclass
class TextConfig:
    # Which transcript: null takes the source kind's default. Libriheavy: book = custom.texts[0]
    # (cased, punctuated, the default), asr = custom.texts[1]; lhotse: text (supervision.text,
    # the default) or the name of a custom field; Emilia: text.
    field: str | None = None
    bpe: BpeConfig = dataclasses.field(default_factory=BpeConfig)  # checks itself when built


@dataclass
class FilterConfig:
    # Largest character error rate between the book text and the ASR text (pipeline.text.agreement)
    # for a cut to be kept; null turns the filter off. Why 0.1: see docs/configuration.md "Transcript agreement"
    # (an ASR of a few percent WER plus spelling variants stays well below it; a sentence too many,
    # a page number read as text or a misaligned window goes past it).
    max_text_cer: float | None = 0.1
    # Lowest DNSMOS (the source's own score of each utterance: Emilia's json `dnsmos`) for a cut
    # to be kept; null keeps all. Sources without a score (Libriheavy, lhotse) refuse a value.
    min_dnsmos: float | None = None

    def problems(self) -> Problems:
        if self.max_text_cer is not None and self.max_text_cer < 0:
            yield "max_text_cer", f"must be >= 0 (a character error rate) or null (off), got {self.max_text_cer}"
        if self.min_dnsmos is not None and not 0 <= self.min_dnsmos <= 5:
            yield "min_dnsmos", f"must be a DNSMOS score from 0 to 5, or null (off), got {self.min_dnsmos}"


@dataclass
class OutputConfig:
    dir: str = "out"
    formats: list[str] = field(default_factory=lambda: list(DEFAULT_FORMATS))
    target_shard_mb: float = 256.0

    def problems(self) -> Problems:
        if not self.dir:
            yield "dir", "must name a folder"
        if not self.formats or any(f not in FORMATS for f in self.formats):
            yield "formats", f"must be a non-empty list of {list(FORMATS)}, got {self.formats}"
        elif len(set(self.formats)) != len(self.formats):
            yield "formats", f"lists a format twice: {self.formats}"
        yield from positive(self.target_shard_mb, "target_shard_mb")


@dataclass
class RayConfig:
    address: str | None = None  # null: start an embedded local Ray
    codec_workers: int | None = None  # null: one per GPU, or one per 8 CPUs of a CPU-only node
    # CPU codec worker: its lanes, one utterance at a time on one thread each (null: its share of
    # its node's CPUs, at most 8); GPU: resampling threads (null: half its node's CPUs per GPU).
    cpus_per_codec_worker: int | None = None
    # Unit tasks in flight over the cluster, i.e. the decode pool. null: per GPU worker, the rest
    # of its node's CPUs per GPU; per CPU worker, 2.
    units_in_flight: int | None = None
    codec_restarts: int = 3  # a crashed codec actor restarts, and a unit it held is retried
    start_timeout_s: float = 300.0  # codec workers not up by then stop the run, with what is missing

    def problems(self) -> Problems:
        if self.address is not None and not self.address.strip():
            yield "address", "must be HOST:PORT, auto, or null"
        for key in ("codec_workers", "cpus_per_codec_worker", "units_in_flight"):
            yield from positive(getattr(self, key), key, optional=True)
        if self.codec_restarts < 0:
            yield "codec_restarts", f"must be >= 0, got {self.codec_restarts}"
        yield from positive(self.start_timeout_s, "start_timeout_s")


@dataclass
class Dag:
    name: str
    source: object = field(default_factory=libriheavy.Config)  # a source kind's Config (pipeline.sources)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    subsets: SubsetsConfig = field(default_factory=SubsetsConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    text: TextConfig = field(default_factory=TextConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    @property
    def out(self) -> Path:
        return Path(self.output.dir)

    def fingerprint(self) -> str:
        """sha256 of every setting that can change the output (not where it goes or how fast)."""
        data = dataclasses.asdict(self)
        if self.source.KIND != DEFAULT_KIND:  # the default's fingerprint predates source kinds
            data["source"]["kind"] = self.source.KIND
        data.pop("ray")
        data.pop("download")
        data["output"].pop("dir")
        data["source"].pop("download_dir", None)
        data["source"].pop("token_env", None)  # where a token is read from, not what is built
        # Keys added since, at their default, are left out: earlier DAGs keep their fingerprint.
        if data["text"]["bpe"]["model"] is None:
            del data["text"]["bpe"]["model"]
        if data["filter"]["min_dnsmos"] is None:
            data["filter"].pop("min_dnsmos")
        for key in ("device", "batch_seconds", "cache_dir", "threads", "download_retries"):
            data["codec"].pop(key, None)
        if data["codec"]["name"] == DEFAULT_CODEC:
            del data["codec"]["name"]
        if data["codec"]["codebooks"] is None:
            del data["codec"]["codebooks"]
        return json_digest(data)


def load_dag(
    path: str | Path, overrides: list[str] = (), out: str | None = None, ray_address: str | None = None
) -> Dag:
    path = Path(path)
    raw = settings.read_file(path, "DAG file", DagError)
    raw.setdefault("name", path.stem)
    try:
        for item in overrides:
            settings.apply_override(raw, item, DagError)
        _locations_from_here(raw, overrides)
        if out is not None:
            raw.setdefault("output", {})["dir"] = out
        if ray_address is not None:
            raw.setdefault("ray", {})["address"] = ray_address
        source = _build_source(raw.pop("source", {}))
        dag = settings.build(Dag, raw, DagError)
        dag.source = source
        kind = kind_of(source)
        if dag.text.field is None:
            dag.text.field = kind.DEFAULT_TEXT_FIELD
        elif problem := kind.text_field_problem(dag.text.field):
            raise DagError(f"text.field {problem}")
        _resolve_codec_weights(dag, path.resolve().parent)
        _resolve_bpe_model(dag, path.resolve().parent)
        kind.settle(dag, path.resolve().parent)
        _check_wiring(dag)
        kind.check(dag)
        settings.check(dag, DagError)
    except DagError as err:
        raise DagError(f"{path}: {err}") from None
    return dag


# Locations a DAG file may hold: relative ones are read from the DAG file's folder, except when
# given with --set, where they are typed from the working directory and read from there.
_LOCATION_KEYS = {
    "source.manifests",
    "source.audio_root",
    "source.audio_dir",
    "source.manifest_base_url",
    "source.audio_base_url",
    "source.base_url",
    "codec.weights",
    "text.bpe.model",
}


def _locations_from_here(raw: dict, overrides: list[str]) -> None:
    """Make the relative paths given with --set for location keys absolute, from the cwd."""
    for item in overrides:
        key = item.partition("=")[0]
        if key not in _LOCATION_KEYS:
            continue
        *sections, name = key.split(".")
        node = raw
        for section in sections:  # apply_override made every section on the way a mapping
            node = node[section]
        value = node.get(name)
        relative = isinstance(value, str) and value and "://" not in value and not Path(value).is_absolute()
        if relative and not (key == "codec.weights" and value in WEIGHT_KINDS):
            node[name] = str(Path.cwd() / value)


def _build_source(raw) -> object:
    """The `source:` section as its kind's Config (`kind:` picks it; none: Libriheavy)."""
    if not isinstance(raw, dict):
        raise DagError(f"source: expected a mapping, got {raw!r}")
    raw = dict(raw)
    name = raw.pop("kind", DEFAULT_KIND)
    if name not in KINDS:
        raise DagError(f"source.kind: must be one of {sorted(KINDS)}, got {name!r}")
    return settings.build(KINDS[name].Config, raw, DagError, "source")


def _resolve_codec_weights(dag: Dag, dag_dir: Path) -> None:
    weights = dag.codec.weights
    if weights not in WEIGHT_KINDS:
        dag.codec.weights = str((dag_dir / weights).resolve())


def _resolve_bpe_model(dag: Dag, dag_dir: Path) -> None:
    """text.bpe.model: a model file, or a corpus folder holding text/bpe.model; checked now."""
    if dag.text.bpe.model is None:
        return
    path = (dag_dir / dag.text.bpe.model).resolve()
    if path.is_dir():
        path = path / "text" / "bpe.model"
    if not path.is_file():
        raise DagError(f"text.bpe.model: {path} is not a file (give a .model file or a corpus folder)")
    if problem := given_model_problem(path.read_bytes(), str(path)):
        raise DagError(f"text.bpe.model: {problem}")
    dag.text.bpe.model = str(path)


def as_url(location: str, base: Path) -> str:
    """A location as a URL ending in "/": a URL as it is, a path resolved against `base`."""
    if re.match(r"^[a-z][a-z0-9+.-]*://", location):
        return location if location.endswith("/") else location + "/"
    return (base / location).resolve().as_uri() + "/"


def _check_wiring(dag: Dag) -> None:
    if dag.filter.min_dnsmos is not None and not getattr(kind_of(dag.source), "HAS_DNSMOS", False):
        raise DagError(f"filter.min_dnsmos: a {dag.source.KIND} source has no DNSMOS score; set it to null")
    roles = dag.subsets.roles()
    if not dag.subsets.train:
        raise DagError("subsets.train is empty: the BPE model is trained on the training subsets' text")
    listed = dag.subsets.train + dag.subsets.dev + dag.subsets.test
    if len(listed) != len(roles):
        raise DagError(f"a subset is listed twice in subsets: {listed}")
    for name in roles:
        if not _NAME.match(name):
            raise DagError(f"subset name {name!r} must be letters, digits and underscores")
