"""Executors: how the units of a run are executed; the runner (pipeline.runner) decides which.

In: the units still to do (`UnitJob`s) and the codec, resolved once by the driver (`ResolvedCodec`:
settings, the loaded state dict, its provenance). Out: `UnitsOutcome`: what each unit did, the
units that failed (each alone; the others commit), and the codec workers' counters (forward
passes, audio seconds, seconds per step: where the time goes).

- `LocalExecutor` (local.py): in this process, one unit after another, the codec worker in a
  thread so a unit decodes while its previous chunk encodes. Tests, benchmarks, small jobs.
- `RayExecutor` (ray_cluster.py): production. Codec workers as Ray actors (a GPU each, or a CPU
  node each), unit tasks on their workers' nodes, restarts and retries.
Stage code (pipeline.encode.unit, pipeline.encode.codec_worker) knows neither.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Protocol

from tqdm import tqdm

from pipeline.encode.unit import UnitJob
from tokens.codec_settings import CodecConfig, CodecWeights


@dataclass
class ResolvedCodec:
    cfg: CodecConfig  # weights settled: "auto" already resolved to what was found
    state: dict  # the state dict the driver loaded: workers build the model from it
    weights: CodecWeights  # its provenance; workers check the state against its hash


@dataclass
class UnitsOutcome:
    results: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)  # {"unit", "error"}
    codec_stats: Counter = field(default_factory=Counter)  # summed over codec workers


class Executor(Protocol):
    def run_units(self, jobs: list[UnitJob], codec: ResolvedCodec, progress: bool) -> UnitsOutcome: ...


def chunked(jobs: list[UnitJob], batch_seconds: float) -> list[UnitJob]:
    """Units send audio to the codec in chunks of at least a batch (and at least a minute)."""
    return [replace(job, encode_chunk_seconds=max(60.0, batch_seconds)) for job in jobs]


def progress_bar(jobs: list[UnitJob], progress: bool) -> tqdm:
    """Progress in seconds of audio, so the rate reads as "x real time"."""
    return tqdm(
        total=round(sum(j.unit.seconds for j in jobs)),
        unit="s audio",
        unit_scale=True,
        desc=f"encoding {len(jobs)} units",
        disable=not progress,
    )


def failure(job: UnitJob, err: BaseException) -> dict:
    return {"unit": job.unit.name, "error": f"{type(err).__name__}: {err}"}
