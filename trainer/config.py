"""Training configuration: a YAML file (trainer/configs/*.yaml) plus key=value overrides.

In: the file and `dotted.key=value` strings (values parsed as YAML). Out: a checked
`TrainConfig`, read by storage.settings (the loader DAGs use too): unknown keys, wrong types and
values out of range (each section's `problems()`) fail before anything loads, naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from schemas import FORMATS
from storage import settings
from storage.settings import Problems


class ConfigError(ValueError):
    """A training config that cannot be used; the message names the file and the key."""


@dataclass
class ModelSection:
    kind: str = "ar"  # ar | nar
    preset: str = "tiny"  # a name in trainer.models.config.PRESETS
    group_size: int = 1  # AR only: VALL-E 2 grouped code modelling, 1 = VALL-E
    dropout: float | None = None  # null: the preset's
    prompt_seconds: list[float] = field(default_factory=lambda: [1.5, 10.0])  # NAR: prompt lengths trained on

    def problems(self) -> Problems:
        if self.kind not in ("ar", "nar"):
            yield "kind", f"must be ar or nar, got {self.kind!r}"
        if self.group_size not in (1, 2, 4, 8):
            yield "group_size", f"must be 1, 2, 4 or 8, got {self.group_size}"
        if len(self.prompt_seconds) != 2 or not 0 < self.prompt_seconds[0] <= self.prompt_seconds[1]:
            yield "prompt_seconds", f"must be [low, high] with 0 < low <= high, got {self.prompt_seconds}"


@dataclass
class DataSection:
    max_frames: int = 20_000  # per batch: count x longest sequence in model positions (text + frames / G), any codec
    buckets: int = 10
    shuffle_buffer: int = 2_000
    interleave: int = 64  # shard streams each DataLoader worker reads at once (speaker mix)
    workers: int = 2  # DataLoader workers per rank
    format: str = "auto"  # webdataset | parquet | lhotse_shar | auto (the first of these the corpus has)
    retry_minutes: float = 10.0  # a read that fails is retried this long without progress
    read_timeout_s: float = 60.0  # a read that gives nothing this long has failed (a hang: its rank stops)

    def problems(self) -> Problems:
        if self.format not in ("auto", *FORMATS):
            yield "format", f"must be auto or one of {list(FORMATS)}, got {self.format!r}"
        for key in ("max_frames", "buckets", "shuffle_buffer", "interleave"):
            if getattr(self, key) < 1:
                yield key, f"must be >= 1, got {getattr(self, key)}"
        if self.retry_minutes < 0:
            yield "retry_minutes", f"must be >= 0, got {self.retry_minutes}"
        if not self.read_timeout_s > 0:
            yield "read_timeout_s", f"must be > 0, got {self.read_timeout_s}"


@dataclass
class OptimSection:
    lr: float = 5e-4  # the papers' peak
    warmup_steps: int = 32_000  # then linear decay to zero at run.max_steps
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    clip_norm: float = 1.0
    accumulate: int = 1  # batches per optimizer step

    def problems(self) -> Problems:
        if self.accumulate < 1:
            yield "accumulate", f"must be >= 1, got {self.accumulate}"


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

    def problems(self) -> Problems:
        if self.max_steps < 1:
            yield "max_steps", f"must be >= 1, got {self.max_steps}"
        if self.keep_last < 1:
            yield "keep_last", f"must be >= 1, got {self.keep_last}"
        if self.keep_every < 0:
            yield "keep_every", f"must be >= 0, got {self.keep_every}"


@dataclass
class SynthEvalSection:
    """Synthesis during training (trainer/eval/during_training.py): off until `set` names an
    evaluation set (valle-prep evalset)."""

    set: str | None = None
    every: int | None = None  # steps; null: run.eval_every; 0: off
    utterances: int = 4
    prompt_seconds: float = 3.0  # continuation prompt
    max_seconds: float = 20.0  # longest output (an early model may never say EOS)
    partner: str | None = None  # the other model's checkpoint (a NAR for an AR run, an AR for a NAR run)
    asr: str = "pocketsphinx"
    speaker: str = "resemblyzer"
    codec_weights: str | None = None  # null: what the corpus names (its weights' hash must match)
    max_share: float = 0.05  # skip a round that would bring these rounds above this share of the run's time

    def problems(self) -> Problems:
        if self.every is not None and self.every < 0:
            yield "every", f"must be >= 0 (0: off), got {self.every}"
        if self.utterances < 1:
            yield "utterances", f"must be >= 1, got {self.utterances}"
        if not self.max_seconds > 0:
            yield "max_seconds", f"must be > 0, got {self.max_seconds}"
        if not 0 < self.max_share <= 1:
            yield "max_share", f"must be in (0, 1], got {self.max_share}"


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)
    synth_eval: SynthEvalSection = field(default_factory=SynthEvalSection)


def load_config(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    return settings.load(TrainConfig, path, overrides, ConfigError, what="training config")
