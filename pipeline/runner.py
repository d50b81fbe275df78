"""Runner: execute a DAG end to end (the orchestration); executors run its units.

lock OUT -> codec + audio settings check -> downloads start (in the background)
  -> plan each subset as its manifest arrives -> BPE -> wait for the audio -> [units] -> index

Every step is idempotent and keyed to its inputs: downloads by verified markers, plans and the
BPE model by fingerprints, units by ledger entries. Re-running the same command after a crash
skips what is committed and cleans what is partial. Audio settings (codec, segmentation, unit
plan) are recorded in `OUT/corpus.json` and checked before anything is written, so a run that
would change them is refused with nothing changed on disk, unless the user asks to rebuild:
codes from different settings are never mixed. One run at a time holds OUT (pipeline.output.lock):
the lock is checked before every commit, here and in each unit, so a run whose lock another run
took over (it was paused past the stale time) stops and commits nothing more (`LockLost`).
Units run on Ray by default (pipeline.executors.ray_cluster); tests and benchmarks may pass
the in-process `LocalExecutor`. Downloads run where units run: Ray tasks with the Ray executor
(Ray starts only if something is left to download), threads with the local one.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.encode.segment import PAST_END_TOLERANCE_S
from pipeline.encode.unit import StackChanged, UnitJob, is_current
from pipeline.executors import Executor, ResolvedCodec
from pipeline.fetch.transfer_pools import RayTasks, ThreadTasks
from pipeline.output import ledger
from pipeline.output.index import INDEX_NAME, build_index
from pipeline.output.lock import exclusive
from pipeline.output.shards import remove_file
from pipeline.plan.subsets import SubsetPlan, plan_subsets, read_unit_cuts
from pipeline.sources import kind_of
from pipeline.text.agreement import AGREEMENT
from pipeline.text.bpe import model_type_of, train_bpe
from schemas.codes import CodesSpace
from storage.files import read_json, write_bytes_atomic, write_json_atomic
from storage.hashing import json_digest, sha256_file
from storage.locks import HeldLock
from tokens.audio import RESAMPLER
from tokens.codec_settings import (
    CodecConfig,
    CodecWeights,
    audio_codec_settings,
    codebooks_of,
    codec_record,
    unnamed_device,
)
from tokens.text import NORMALIZATION, Tokenizer, select_text

if TYPE_CHECKING:
    from pipeline.dag import Dag

log = logging.getLogger(__name__)


class SettingsChanged(RuntimeError):
    """The DAG asks for audio settings other than those OUT was built with."""


class WeightsRefused(RuntimeError):
    """codec.weights names something that is not this codec's weights (another codec's folder, a
    damaged or foreign file): refused before anything is read or encoded."""


class RunFailed(RuntimeError):
    """Some units failed; everything else is committed and a re-run retries only those."""


@dataclass
class RunSummary:
    units: int = 0
    skipped: int = 0
    reshard: int = 0  # re-tokenized / re-written from committed codes
    encoded: int = 0
    codec_forward_passes: int = 0
    failed: list[dict] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)  # committed units no longer in the plan
    pruned: bool = False  # whether those were removed (--prune)
    codec_stats: dict = field(default_factory=dict)  # the codec workers' counters (see CodecWorker)
    unit_seconds: dict = field(default_factory=dict)  # unit tasks' seconds per step, summed
    units_wall_s: float = 0.0  # wall time of the executor: codec workers starting to units done
    index: dict | None = None


def run(
    dag: Dag,
    *,
    rebuild_audio: bool = False,
    prune: bool = False,
    progress: bool = True,
    executor: Executor | None = None,
    force_unlock: bool = False,
    allow_stack_change: bool = False,
) -> RunSummary:
    """Bring `dag.out` up to date with the DAG. Paths handed to units are absolute, so they mean
    the same on every node of a cluster whatever its working directory."""
    from pipeline.executors.ray_cluster import RayExecutor

    out = dag.out.absolute()
    with exclusive(out, force=force_unlock) as lock:
        executor = executor or RayExecutor(dag.ray)
        try:
            return _run(dag, out, rebuild_audio, prune, progress, executor, allow_stack_change, lock)
        finally:
            if isinstance(executor, RayExecutor):
                executor.close()  # Ray, if the downloads started it


def _task_pool(executor: Executor):
    """Downloads run where units run: Ray tasks with the Ray executor, else threads here."""
    from pipeline.executors.ray_cluster import RayExecutor

    if not isinstance(executor, RayExecutor):
        return ThreadTasks()
    # Ray starts here, in the main thread, not lazily in the download thread: an embedded Ray's
    # GCS and raylet are killed when the THREAD that started them ends (Linux parent-death
    # signal), which would take Ray down as soon as the downloads finish.
    executor.ensure_ray()
    return RayTasks()


def _run(
    dag: Dag,
    out: Path,
    rebuild_audio: bool,
    prune: bool,
    progress: bool,
    executor: Executor,
    allow_stack_change: bool,
    lock: HeldLock,
) -> RunSummary:
    clock = _Clock()
    codec = resolve_codec(dag.codec)
    clock.log(f"codec weights: {codec.weights.kind} {codec.weights.sha256[:12]}")
    settings = audio_settings(dag, codec.weights)
    lock.check()
    check_audio_settings(out, settings, rebuild_audio)  # before anything is written
    with kind_of(dag.source).open_source(dag, out, progress, _task_pool(executor)) as sources:
        # Each subset is planned once its manifest is verified, while the archives still arrive.
        roles, shared = dag.subsets.roles(), shared_parses(dag)
        plans = plan_subsets(sources.manifests(), roles, out, dag.plan.unit_hours, progress=progress, shared=shared)
        source_provenance = sources.provenance()
        clock.log(f"planned {sum(len(p.units) for p in plans)} units")
        lock.check()
        tokenizer, bpe_info = ensure_bpe(dag, out, plans)
        clock.log(f"BPE model ready (vocabulary {tokenizer.vocab_size})")
        audio_store = sources.audio_store()
        clock.log("audio ready")
    # The transcript filter decides which cuts become samples: a change re-writes the shards
    # from committed codes (and encodes the cuts a looser filter now keeps), never retrains BPE.
    text_fingerprint = {
        "field": dag.text.field,
        "normalization": NORMALIZATION,
        "bpe_sha256": tokenizer.sha256,
        "max_text_cer": dag.filter.max_text_cer,
        "agreement": AGREEMENT,
    }
    known_stacks = codes_stacks(out, [unit.name for plan in plans for unit in plan.units])
    if any(unnamed_device(s) for s in known_stacks):
        log.warning(
            "some codes here were made on a device whose model was not recorded (an older valle-corpus): codec "
            "workers on any GPU model, or CPU, with the same torch, cuDNN and precision are taken for that stack"
        )
    codes_space = CodesSpace.of_record(codec_record(dag.codec))  # the same for every unit
    jobs = [
        UnitJob(
            out=out,
            unit=unit,
            audio_store=audio_store,
            min_duration=dag.segment.min_duration,
            max_duration=dag.segment.max_duration,
            text_field=dag.text.field,
            tokenizer=tokenizer,
            formats=dag.output.formats,
            max_text_cer=dag.filter.max_text_cer,
            target_shard_bytes=dag.output.target_shard_mb * 1e6,
            audio_fingerprint=audio_fingerprint(settings),
            text_fingerprint=json_digest(text_fingerprint),
            known_stacks=known_stacks,
            allow_new_stack=allow_stack_change,
            lock=lock.guard,
            codes_space=codes_space,
        )
        for plan in plans
        for unit in plan.units
    ]

    summary = RunSummary(units=len(jobs))
    summary.orphans, summary.pruned = units_not_in_plan(out, {j.unit.name for j in jobs}), prune
    lock.check()
    if summary.orphans and prune:
        remove_units(out, summary.orphans)
        log.warning(
            "--prune: removed %d unit(s) no longer in the plan: %s", len(summary.orphans), ", ".join(summary.orphans)
        )
    elif summary.orphans:
        log.warning(
            "%d committed unit(s) are no longer in the plan; kept on disk, left out of "
            "index.json (--prune removes them): %s",
            len(summary.orphans),
            ", ".join(summary.orphans),
        )
    pending = [j for j in jobs if not is_current(j)]
    summary.skipped = len(jobs) - len(pending)
    index_path = out / INDEX_NAME
    if pending or (read_json(index_path) or {}).get("dag", {}).get("fingerprint") != dag.fingerprint():
        index_path.unlink(missing_ok=True)  # never leave an index describing a changing corpus
    if pending:
        started = time.monotonic()
        outcome = executor.run_units(pending, codec, progress)
        lock.check()  # a unit refused by a lost lock is not a unit failure
        summary.units_wall_s = time.monotonic() - started
        summary.failed, summary.codec_stats = outcome.failed, dict(outcome.codec_stats)
        summary.codec_forward_passes = int(outcome.codec_stats.get("forward_passes", 0))
        unit_seconds = Counter()
        for r in outcome.results:
            unit_seconds.update(r["timings"])
            summary.encoded += r["action"] == "codes"
            summary.reshard += r["action"] == "shards"
            summary.skipped += r["action"] == "skip"
        summary.unit_seconds = dict(unit_seconds)
        clock.log(f"units done: {summary.encoded} encoded, {summary.reshard} re-sharded")
        refused = [f for f in summary.failed if f["error"].startswith(f"{StackChanged.__name__}: ")]
        if refused and len(refused) == len(summary.failed):
            raise StackChanged(f"{len(refused)} unit(s) were not encoded: {refused[0]['error'].partition(': ')[2]}")
        if summary.failed:
            lines = "\n".join(f"  {f['unit']}: {f['error']}" for f in summary.failed)
            raise RunFailed(
                f"{len(summary.failed)} unit(s) failed; the rest is committed. "
                f"Fix the cause and run the same command again:\n{lines}"
            )
    if not index_path.exists():
        lock.check()
        provenance = {
            "codec": {
                **codec_record(dag.codec),
                "weights": codec.weights.kind,
                "weights_sha256": codec.weights.sha256,
                "weights_source": codec.weights.source,
                "precision": dag.codec.precision,
            },
            "text": {"field": dag.text.field, "normalization": NORMALIZATION},
            "filter": {"max_text_cer": dag.filter.max_text_cer, "agreement": AGREEMENT},
            "bpe": bpe_info,
            "source": source_provenance,
        }
        build_index(out, plans, dag.name, dag.fingerprint(), provenance, codebooks_of(dag.codec))
        clock.log("index written")
    summary.index = read_json(index_path)
    return summary


class _Clock:
    def __init__(self):
        self.start = time.monotonic()

    def log(self, what: str) -> None:
        log.info("%s (%.1f s)", what, time.monotonic() - self.start)


def ensure_bpe(dag: Dag, out: Path, plans: list[SubsetPlan]) -> tuple[Tokenizer, dict]:
    """Train the BPE model on the training subsets' text unless the committed one still fits."""
    train_plans = [p for p in plans if p.role == "train"]
    given = Path(dag.text.bpe.model).read_bytes() if dag.text.bpe.model else None
    key = json_digest(
        {"given": hashlib.sha256(given).hexdigest()}
        if given is not None
        else {
            "bpe": dag.text.bpe.fingerprint(),
            "field": dag.text.field,
            "normalization": NORMALIZATION,
            "units": [u.sha256 for p in train_plans for u in p.units],
        }
    )
    model, record_path = out / "text" / "bpe.model", out / "text" / "bpe.json"
    record = read_json(record_path)
    current = record and record.get("key") == key and model.exists() and sha256_file(model) == record["sha256"]
    if given is not None and not current:
        # A shared model (text.bpe.model, checked when the DAG loaded) is copied in, never trained:
        # the corpus stays self-contained and its tokens mean what the other corpora's mean.
        write_bytes_atomic(model, given)
        tokenizer = Tokenizer(model)
        record = {
            "key": key,
            "sha256": tokenizer.sha256,
            "vocab_size": tokenizer.vocab_size,
            "model_type": model_type_of(given),
            "given": dag.text.bpe.model,
        }
        write_json_atomic(record_path, record)
    elif not current:

        def sentences():
            for plan in train_plans:
                for unit in plan.units:
                    for cut in read_unit_cuts(out, unit):
                        text = select_text(cut["texts"], dag.text.field)
                        if text:
                            yield cut["id"], text

        train_bpe(sentences(), model, dag.text.bpe)
        tokenizer = Tokenizer(model)
        record = {
            "key": key,
            "sha256": tokenizer.sha256,
            "vocab_size": tokenizer.vocab_size,
            "model_type": dag.text.bpe.model_type,
        }
        write_json_atomic(record_path, record)
    info = {
        "model": "text/bpe.model",
        "sha256": record["sha256"],
        "vocab_size": record["vocab_size"],
        "model_type": record["model_type"],
    }
    return Tokenizer(model), info


def shared_parses(dag: Dag) -> Path | None:
    """Where parsed manifests are shared between output folders: the download folder's `parsed/`
    when the DAG names one (output folders that share downloads share parses), else nowhere."""
    download_dir = getattr(dag.source, "download_dir", None)
    return Path(download_dir) / "parsed" if download_dir else None


def resolve_codec(cfg: CodecConfig) -> ResolvedCodec:
    """Settle `auto` and load the weights once, in the driver: every worker gets this state."""
    from tokens.codec_weights import resolve_weights  # torch loads here, in the driver only

    try:
        state, weights = resolve_weights(cfg)
    except ValueError as err:  # the backends' refusals: another model, a file that is not weights
        raise WeightsRefused(f"codec {cfg.name}: {err}") from None
    concrete = replace(cfg, weights=weights.kind if weights.kind != "checkpoint" else cfg.weights)
    return ResolvedCodec(concrete, state, weights)


def audio_settings(dag: Dag, weights: CodecWeights) -> dict:
    """Everything that shapes the codes: recorded in OUT/corpus.json, never mixed."""
    return {
        "plan": {"unit_hours": dag.plan.unit_hours, **kind_of(dag.source).plan_settings(dag.source)},
        "segment": {
            "min_duration": dag.segment.min_duration,
            "max_duration": dag.segment.max_duration,
            "resampler": RESAMPLER,
            "past_end_tolerance_s": PAST_END_TOLERANCE_S,
        },
        "codec": {
            **audio_codec_settings(dag.codec),
            "weights": weights.kind,
            "weights_sha256": weights.sha256,
            "precision": dag.codec.precision,
        },
    }


def audio_fingerprint(settings: dict) -> str:
    """The settings' digest, which keys every unit's codes. The exact precision is left out:
    corpora made before the setting existed were exact, and their codes stay current."""
    codec = dict(settings["codec"])
    if codec["precision"] == "exact":
        del codec["precision"]
    return json_digest({**settings, "codec": codec})


def check_audio_settings(out: Path, settings: dict, rebuild: bool) -> None:
    path = out / "corpus.json"
    previous = (read_json(path) or {}).get("audio")
    if previous is not None:
        previous["codec"].setdefault("precision", "exact")  # written before the setting existed
    if previous is not None and previous != settings and not rebuild:
        changes = "\n".join(f"  {k}: {a!r} -> {b!r}" for k, a, b in _diff(previous, settings))
        raise SettingsChanged(
            f"{out} holds codes made with other audio settings:\n{changes}\n"
            "Codes from different settings are never mixed. Write to a new --out, or pass "
            "--rebuild-audio to re-encode every unit here. Nothing was changed."
        )
    if previous != settings:
        write_json_atomic(path, {"audio": settings})


def codes_stacks(out: Path, units: list[str]) -> tuple[dict, ...]:
    """The compute stacks the committed codes of these units were made on (ledger entries of
    units encoded before stacks were recorded name none)."""
    seen = {}
    for name in units:
        stack = (ledger.read_entry(out, name).get("codes") or {}).get("stack")
        if stack:
            seen.setdefault(json_digest(stack), stack)
    return tuple(seen.values())


def units_not_in_plan(out: Path, units: set[str]) -> list[str]:
    """Committed units (ledger entries) that the current plan does not have."""
    folder = out / "ledger"
    return sorted(p.stem for p in folder.glob("*.json") if p.stem not in units) if folder.exists() else []


def remove_units(out: Path, names: list[str]) -> None:
    """Delete the named units' files, then their ledger entries (--prune)."""
    for name in names:
        entry = ledger.read_entry(out, name)
        for f in [entry.get("codes") or {}] + (entry.get("shards") or {}).get("files", []):
            if f.get("path"):
                remove_file(out, f["path"])
        ledger.entry_path(out, name).unlink()


def _diff(a: dict, b: dict, prefix: str = ""):
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            yield from _diff(x, y, f"{prefix}{key}.")
        elif x != y:
            yield f"{prefix}{key}", x, y
