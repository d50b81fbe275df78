"""Load a DAG file (YAML) into typed, checked configuration.

In: a path to `dags/*.yaml` and `--set dotted.key=value` overrides (values parsed as YAML).
Out: a `Dag` of small dataclasses, one per stage. Unknown keys, wrong types, values out of
range (section by section: `_SECTION_CHECKS`) and broken wiring (a subset with no manifest, a
checksum for a file nothing downloads, ...) are reported with the key path before any work
starts. Input locations inside a DAG that have no URL scheme are resolved against the DAG
file's folder; `output.dir` is relative to the working directory.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from tokens.codec import BANDWIDTHS, PRECISIONS, CodecConfig
from pipeline.download import Checksum
from pipeline.bpe import BpeConfig
from tokens.text import TEXT_FIELDS

FORMATS = ("webdataset", "parquet")
ROLES = ("train", "dev", "test")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]*$")


class DagError(ValueError):
    """A DAG that cannot run; the message names the file, the key and what to do."""


@dataclass
class SourceConfig:
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


@dataclass
class SegmentConfig:
    min_duration: float = 1.0  # seconds; Libriheavy cuts are >= 2 s, so this only drops damage
    max_duration: float = 40.0  # 99th percentile is ~31 s; longer cuts are rare and costly


@dataclass
class TextConfig:
    field: str = "book"  # book = custom.texts[0] (cased, punctuated); asr = custom.texts[1]
    bpe: BpeConfig = dataclasses.field(default_factory=BpeConfig)


@dataclass
class OutputConfig:
    dir: str = "out"
    formats: list[str] = field(default_factory=lambda: list(FORMATS))
    target_shard_mb: float = 256.0


@dataclass
class RayConfig:
    address: str | None = None  # null: start an embedded local Ray
    codec_workers: int | None = None  # null: one per GPU, or one per node on CPU-only clusters
    # CPU codec worker: torch threads (null: all its node's CPUs); GPU: resampling threads
    # (null: half its node's CPUs per GPU).
    cpus_per_codec_worker: int | None = None
    # Unit tasks in flight over the cluster, i.e. the decode pool. null: per GPU worker, the rest
    # of its node's CPUs per GPU; per CPU worker, 2.
    units_in_flight: int | None = None
    codec_restarts: int = 3  # a crashed codec actor restarts, and a unit it held is retried
    start_timeout_s: float = 300.0  # codec workers not up by then stop the run, with what is missing


@dataclass
class Dag:
    name: str
    source: SourceConfig = field(default_factory=SourceConfig)
    subsets: SubsetsConfig = field(default_factory=SubsetsConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    text: TextConfig = field(default_factory=TextConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    @property
    def out(self) -> Path:
        return Path(self.output.dir)

    def fingerprint(self) -> str:
        """sha256 of every setting that can change the output (not where it goes or how fast)."""
        data = dataclasses.asdict(self)
        data.pop("ray")
        data["output"].pop("dir")
        data["source"].pop("download_dir")
        for key in ("device", "batch_seconds", "cache_dir", "threads", "download_retries"):
            data["codec"].pop(key, None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def load_dag(path: str | Path, overrides: list[str] = (), out: str | None = None,
             ray_address: str | None = None) -> Dag:
    path = Path(path)
    if not path.is_file():
        raise DagError(f"DAG file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise DagError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise DagError(f"{path}: the top level must be a mapping of sections")
    raw.setdefault("name", path.stem)
    for item in overrides:
        _apply_override(raw, item, path)
    if out is not None:
        raw.setdefault("output", {})["dir"] = out
    if ray_address is not None:
        raw.setdefault("ray", {})["address"] = ray_address
    try:
        dag = _build(Dag, raw, "")
    except DagError as err:
        raise DagError(f"{path}: {err}") from None
    _resolve_locations(dag, path.resolve().parent)
    _check_wiring(dag, path)
    _check_values(dag, path)
    return dag


def _apply_override(raw: dict, item: str, path: Path) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise DagError(f"--set {item!r}: expected dotted.key=value")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise DagError(f"--set {item!r}: value is not valid YAML: {err}") from None
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise DagError(f"--set {key}: {part} is not a section in {path}")
        node = child
    node[parts[-1]] = value


def _build(cls, data: Any, where: str):
    """Turn a mapping into dataclass `cls`, checking keys and types; errors name the key path."""
    if not isinstance(data, dict):
        raise DagError(f"{where or 'top level'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(names)})"
            raise DagError(f"unknown key {where + '.' if where else ''}{key}{hint}")
        kwargs[key] = _convert(hints[key], value, f"{where}.{key}" if where else key)
    try:
        return cls(**kwargs)
    except ValueError as err:  # a config's own check; its message starts with the field name
        raise DagError(f"{where}.{err}" if where else str(err)) from None


def _convert(tp, value, where: str):
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, where)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value if value is not None else {}, where)
    if origin is list:
        if not isinstance(value, list):
            raise DagError(f"{where}: expected a list, got {value!r}")
        (inner,) = typing.get_args(tp)
        return [_convert(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise DagError(f"{where}: expected a mapping, got {value!r}")
        _, inner = typing.get_args(tp)
        return {str(k): _convert(inner, v, f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise DagError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp in (str, int, bool) and type(value) is tp:
        return value
    raise DagError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def _resolve_locations(dag: Dag, dag_dir: Path) -> None:
    src = dag.source
    if src.manifest_base_url:  # an empty one is reported by _check_values
        src.manifest_base_url = _as_url(src.manifest_base_url, dag_dir)
    if src.audio_base_url:
        src.audio_base_url = _as_url(src.audio_base_url, dag_dir)
    if src.audio_dir:
        src.audio_dir = str((dag_dir / src.audio_dir).resolve())
    weights = dag.codec.weights
    if weights not in ("pretrained", "auto", "random"):
        dag.codec.weights = str((dag_dir / weights).resolve())


def _as_url(location: str, base: Path) -> str:
    if re.match(r"^[a-z][a-z0-9+.-]*://", location):
        return location if location.endswith("/") else location + "/"
    return (base / location).resolve().as_uri() + "/"


def _check_wiring(dag: Dag, path: Path) -> None:
    def fail(msg: str):
        raise DagError(f"{path}: {msg}")

    roles = dag.subsets.roles()
    if not dag.subsets.train:
        fail("subsets.train is empty: the BPE model is trained on the training subsets' text")
    listed = dag.subsets.train + dag.subsets.dev + dag.subsets.test
    if len(listed) != len(roles):
        fail(f"a subset is listed twice in subsets: {listed}")
    for name in roles:
        if not _NAME.match(name):
            fail(f"subset name {name!r} must be letters, digits and underscores")
    if dag.source.audio_dir is None:
        if not dag.source.audio_base_url or not dag.source.audio_archives:
            fail("set source.audio_base_url and source.audio_archives, or source.audio_dir")
        for name in dag.source.audio_archives:
            if not name.endswith(".tar") or "/" in name:
                fail(f"source.audio_archives: {name!r} must be a plain .tar file name")
    if dag.source.checksums:
        known = {dag.source.manifest_name(s) for s in roles} | set(dag.source.audio_archives)
        for name in dag.source.checksums:
            if name not in known:
                fail(f"source.checksums names {name!r}, which this DAG does not download "
                     f"(downloads: {', '.join(sorted(known))})")


def _check_values(dag: Dag, path: Path) -> None:
    """Every stage setting on its own, section by section, before anything starts."""
    for section, check in _SECTION_CHECKS.items():
        for key, problem in check(getattr(dag, section)):
            raise DagError(f"{path}: {section}.{key} {problem}")


def _positive(value, key: str, optional: bool = False):
    """[(key, problem)] unless `value` is > 0 (or None when optional)."""
    if (value is None and optional) or (value is not None and value > 0):
        return []
    return [(key, f"must be > 0{' or null' if optional else ''}, got {value!r}")]


def _source_problems(src: SourceConfig):
    if not src.manifest_base_url:
        yield "manifest_base_url", "is required"
    for name, text in (src.checksums or {}).items():
        try:
            Checksum.parse(text)
        except ValueError as err:
            yield f"checksums.{name}", f"is not a checksum: {err}"


def _plan_problems(plan: PlanConfig):
    yield from _positive(plan.unit_hours, "unit_hours")


def _segment_problems(seg: SegmentConfig):
    if not 0 < seg.min_duration < seg.max_duration:
        yield "min_duration", (f"must be > 0 and below max_duration (need 0 < min_duration < "
                               f"max_duration), got {seg.min_duration} and {seg.max_duration}")


def _text_problems(text: TextConfig):
    if text.field not in TEXT_FIELDS:
        yield "field", f"must be one of {sorted(TEXT_FIELDS)}, got {text.field!r}"
    # text.bpe checks itself when built (BpeConfig.__post_init__).


_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _codec_problems(codec: CodecConfig):
    if codec.bandwidth not in BANDWIDTHS:
        yield "bandwidth", f"must be one of {list(BANDWIDTHS)} (kbps; 6.0 = 8 codebooks), got {codec.bandwidth}"
    if not _DEVICE.match(codec.device):
        yield "device", f"must be auto, cpu, cuda or cuda:N, got {codec.device!r}"
    yield from _positive(codec.batch_seconds, "batch_seconds", optional=True)
    if codec.precision not in PRECISIONS:
        yield "precision", f"must be one of {list(PRECISIONS)}, got {codec.precision!r}"
    w = codec.weights
    if w not in ("pretrained", "auto", "random") and not Path(w).is_file():
        yield "weights", f"{w!r} is not pretrained, auto, random or an existing checkpoint file"
    if not re.match(r"^(https?|file)://", codec.weights_url):
        yield "weights_url", f"must be an http(s):// or file:// URL, got {codec.weights_url!r}"
    if codec.weights_checksum is not None:
        try:
            Checksum.parse(codec.weights_checksum)
        except ValueError as err:
            yield "weights_checksum", f"is not a checksum: {err}"
    yield from _positive(codec.download_retries, "download_retries")
    yield from _positive(codec.threads, "threads", optional=True)


def _output_problems(out: OutputConfig):
    if not out.dir:
        yield "dir", "must name a folder"
    if not out.formats or any(f not in FORMATS for f in out.formats):
        yield "formats", f"must be a non-empty list of {list(FORMATS)}, got {out.formats}"
    elif len(set(out.formats)) != len(out.formats):
        yield "formats", f"lists a format twice: {out.formats}"
    yield from _positive(out.target_shard_mb, "target_shard_mb")


def _ray_problems(ray: RayConfig):
    if ray.address is not None and not ray.address.strip():
        yield "address", "must be HOST:PORT, auto, or null"
    for key in ("codec_workers", "cpus_per_codec_worker", "units_in_flight"):
        yield from _positive(getattr(ray, key), key, optional=True)
    if ray.codec_restarts < 0:
        yield "codec_restarts", f"must be >= 0, got {ray.codec_restarts}"
    yield from _positive(ray.start_timeout_s, "start_timeout_s")


# One checker per section, each yielding (key, problem): add a key's check beside its section.
_SECTION_CHECKS = {
    "source": _source_problems,
    "plan": _plan_problems,
    "segment": _segment_problems,
    "text": _text_problems,
    "codec": _codec_problems,
    "output": _output_problems,
    "ray": _ray_problems,
}
