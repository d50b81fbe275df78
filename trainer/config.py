"""Training configuration: a YAML file (trainer/configs/*.yaml) plus key=value overrides.

In: the file and `section.key=value` strings (values parsed as YAML). Out: a checked
`TrainConfig`. Unknown keys and wrong types fail before anything loads, naming the key.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class ConfigError(ValueError):
    pass


@dataclass
class ModelSection:
    kind: str = "ar"  # ar | nar
    preset: str = "tiny"  # a name in trainer.models.config.PRESETS
    group_size: int = 1  # AR only: VALL-E 2 grouped code modelling, 1 = VALL-E
    dropout: float | None = None  # null: the preset's
    prompt_seconds: list[float] = field(default_factory=lambda: [1.5, 10.0])  # NAR: prompt lengths trained on


@dataclass
class DataSection:
    max_frames: int = 20_000  # per batch: count x longest sequence in model positions (text + frames / G)
    buckets: int = 10
    shuffle_buffer: int = 2_000
    interleave: int = 64  # shard streams each DataLoader worker reads at once (speaker mix)
    workers: int = 2  # DataLoader workers per rank
    format: str = "auto"  # webdataset | parquet | lhotse_shar | auto (the first of these the corpus has)


@dataclass
class OptimSection:
    lr: float = 5e-4  # the papers' peak
    warmup_steps: int = 32_000  # then linear decay to zero at run.max_steps
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    clip_norm: float = 1.0
    accumulate: int = 1  # batches per optimizer step


@dataclass
class RunSection:
    out: str = "runs/default"
    max_steps: int = 100_000
    log_every: int = 50
    eval_every: int = 2_000
    checkpoint_every: int = 2_000
    keep_last: int = 3  # checkpoints kept: the newest keep_last ...
    keep_every: int = 0  # ... and every step that is a multiple of this (0: none)
    seed: int = 0


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)

    def check(self) -> "TrainConfig":
        if self.model.kind not in ("ar", "nar"):
            raise ConfigError(f"model.kind must be ar or nar, got {self.model.kind!r}")
        if self.model.group_size not in (1, 2, 4, 8):
            raise ConfigError(f"model.group_size must be 1, 2, 4 or 8, got {self.model.group_size}")
        if self.data.format not in ("auto", "webdataset", "parquet", "lhotse_shar"):
            raise ConfigError(f"data.format must be auto, webdataset, parquet or lhotse_shar, got {self.data.format!r}")
        if self.optim.accumulate < 1 or self.run.max_steps < 1:
            raise ConfigError("optim.accumulate and run.max_steps must be >= 1")
        if min(self.data.max_frames, self.data.interleave, self.data.shuffle_buffer, self.data.buckets) < 1:
            raise ConfigError("data.max_frames, interleave, shuffle_buffer and buckets must be >= 1")
        if self.run.keep_last < 1 or self.run.keep_every < 0:
            raise ConfigError("run.keep_last must be >= 1 and run.keep_every >= 0")
        prompt = self.model.prompt_seconds
        if len(prompt) != 2 or not 0 < prompt[0] <= prompt[1]:
            raise ConfigError(f"model.prompt_seconds must be [low, high] with 0 < low <= high, got {prompt}")
        return self


def load_config(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    raw = yaml.safe_load(Path(path).read_text()) or {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        section, name = key.split(".", 1)
        raw.setdefault(section, {})[name] = yaml.safe_load(value)
    try:
        return _fill(TrainConfig, raw, "").check()
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def _fill(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'top level'}: expected a mapping")
    hints, names = typing.get_type_hints(cls), [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            raise ConfigError(f"unknown key {path}" + (f" (did you mean {close[0]}?)" if close else ""))
        hint = hints[key]
        if hint is float and isinstance(value, str):  # YAML 1.1 reads "6e-3" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if dataclasses.is_dataclass(hint):
            values[key] = _fill(hint, value or {}, path)
        elif not _matches(hint, value):
            raise ConfigError(f"{path}: {value!r} is not a {hint}")
        else:
            values[key] = float(value) if hint is float else value
    return cls(**values)


def _matches(hint, value) -> bool:
    args = typing.get_args(hint)
    if args and type(None) in args:
        return value is None or _matches(next(a for a in args if a is not type(None)), value)
    if typing.get_origin(hint) is list:
        return isinstance(value, list)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint) and not (hint is int and isinstance(value, bool))
