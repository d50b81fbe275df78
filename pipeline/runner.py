"""Runner: execute a DAG end to end; the only module that knows about Ray.

download -> plan -> BPE -> [per unit, on Ray: decode+slice -> EnCodec actor -> shards] -> index

Every step is idempotent and keyed to its inputs: downloads by verified markers, plans and the
BPE model by fingerprints, units by ledger entries. Re-running the same command after a crash
skips what is committed and cleans what is partial. Audio settings (codec, segmentation, unit
plan) are recorded in `OUT/corpus.json`; a run that would change them is refused unless the user
asks to rebuild, so codes from different settings are never mixed.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from pipeline import ledger
from pipeline.audio_store import DirAudioStore, TarAudioStore, index_tar
from pipeline.download import Checksum, download
from pipeline.fsutil import json_digest, read_json, sha256_file, write_json_atomic
from pipeline.index import INDEX_NAME, build_index
from pipeline.plan import SubsetPlan, plan_subset, read_unit_cuts
from pipeline.text import NORMALIZATION, Tokenizer, select_text, train_bpe
from pipeline.segment import RESAMPLER
from pipeline.unit import UnitJob, is_current, run_unit

if TYPE_CHECKING:  # torch and encodec load only where the codec runs, not in decode workers
    from pipeline.codec import CodecConfig
    from pipeline.dag import Dag

log = logging.getLogger("pipeline.runner")


class SettingsChanged(RuntimeError):
    """The DAG asks for audio settings other than those OUT was built with."""


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
    index: dict | None = None


def run(dag: Dag, *, rebuild_audio: bool = False, progress: bool = True) -> RunSummary:
    out = dag.out
    out.mkdir(parents=True, exist_ok=True)
    from pipeline.codec import num_codebooks

    clock = _Clock()
    manifests, audio_store = fetch_sources(dag, out, progress)
    clock.log("sources ready")
    plans = [plan_subset(manifests[s], s, role, out, dag.plan.unit_hours, dag.source.source_prefix,
                         progress=progress) for s, role in dag.subsets.roles().items()]
    clock.log(f"planned {sum(len(p.units) for p in plans)} units")
    tokenizer, bpe_info = ensure_bpe(dag, out, plans)
    clock.log(f"BPE model ready (vocabulary {tokenizer.vocab_size})")
    codec_cfg, weights = resolve_codec(dag.codec)
    clock.log(f"codec weights: {weights.kind} {weights.sha256[:12]}")
    audio_settings = {
        "plan": {"unit_hours": dag.plan.unit_hours, "source_prefix": dag.source.source_prefix},
        "segment": {"min_duration": dag.segment.min_duration,
                    "max_duration": dag.segment.max_duration, "resampler": RESAMPLER},
        "codec": {"model": "encodec_24khz", "bandwidth": dag.codec.bandwidth,
                  "weights": weights.kind, "weights_sha256": weights.sha256},
    }
    check_audio_settings(out, audio_settings, rebuild_audio)
    text_fingerprint = {"field": dag.text.field, "normalization": NORMALIZATION,
                        "bpe_sha256": tokenizer.sha256}
    jobs = [UnitJob(out=out, unit=unit, audio_store=audio_store,
                    min_duration=dag.segment.min_duration, max_duration=dag.segment.max_duration,
                    text_field=dag.text.field, tokenizer=tokenizer, formats=dag.output.formats,
                    target_shard_bytes=dag.output.target_shard_mb * 1e6,
                    audio_fingerprint=json_digest(audio_settings), text_fingerprint=json_digest(text_fingerprint),
                    encode_chunk_seconds=max(60.0, dag.codec.batch_seconds))
            for plan in plans for unit in plan.units]
    remove_orphans(out, {j.unit.name for j in jobs})

    summary = RunSummary(units=len(jobs))
    pending = [j for j in jobs if not is_current(j)]
    summary.skipped = len(jobs) - len(pending)
    index_path = out / INDEX_NAME
    if pending or not index_path.exists():
        index_path.unlink(missing_ok=True)  # never leave an index describing a changing corpus
    if pending:
        results, summary.failed, summary.codec_forward_passes = run_units_on_ray(
            pending, dag, codec_cfg, weights.sha256, progress)
        for r in results:
            summary.encoded += r["action"] == "codes"
            summary.reshard += r["action"] == "shards"
            summary.skipped += r["action"] == "skip"
        clock.log(f"units done: {summary.encoded} encoded, {summary.reshard} re-sharded")
        if summary.failed:
            lines = "\n".join(f"  {f['unit']}: {f['error']}" for f in summary.failed)
            raise RunFailed(f"{len(summary.failed)} unit(s) failed; the rest is committed. "
                            f"Fix the cause and run the same command again:\n{lines}")
    if not index_path.exists():
        provenance = {
            "codec": {"model": "encodec_24khz", "sample_rate": 24000,
                      "bandwidth_kbps": dag.codec.bandwidth,
                      "codebooks": num_codebooks(dag.codec.bandwidth), "codebook_size": 1024,
                      "frame_rate": 75, "weights": weights.kind,
                      "weights_sha256": weights.sha256, "weights_source": weights.source},
            "text": {"field": dag.text.field, "normalization": NORMALIZATION},
            "bpe": bpe_info,
        }
        build_index(out, plans, dag.name, dag.fingerprint(), provenance,
                    num_codebooks(dag.codec.bandwidth))
        clock.log("index written")
    summary.index = read_json(index_path)
    return summary


class _Clock:
    def __init__(self):
        self.start = time.monotonic()

    def log(self, what: str) -> None:
        log.info("%s (%.1f s)", what, time.monotonic() - self.start)


def fetch_sources(dag: Dag, out: Path, progress: bool):
    """Download (or find) every manifest and audio archive; returns manifests and the audio store."""
    src = dag.source
    folder = Path(src.download_dir) if src.download_dir else out / "downloads"
    if src.checksums is None:
        log.warning("source.checksums is null: downloads are NOT verified")
    checksums = {name: Checksum.parse(text) for name, text in (src.checksums or {}).items()}

    def fetch(base: str, name: str) -> Path:
        return download(base + name, folder / name, checksums.get(name), progress=progress)

    manifests = {s: fetch(src.manifest_base_url, src.manifest_name(s)) for s in dag.subsets.roles()}
    if src.audio_dir:
        return manifests, DirAudioStore(Path(src.audio_dir))
    tars = [fetch(src.audio_base_url, name) for name in src.audio_archives]
    for tar in tars:
        index_tar(tar)
    return manifests, TarAudioStore(tars)


def ensure_bpe(dag: Dag, out: Path, plans: list[SubsetPlan]) -> tuple[Tokenizer, dict]:
    """Train the BPE model on the training subsets' text unless the committed one still fits."""
    train_plans = [p for p in plans if p.role == "train"]
    key = json_digest({"bpe": dag.text.bpe.fingerprint(), "field": dag.text.field,
                   "normalization": NORMALIZATION,
                   "units": [u.sha256 for p in train_plans for u in p.units]})
    model, record_path = out / "text" / "bpe.model", out / "text" / "bpe.json"
    record = read_json(record_path)
    if not (record and record.get("key") == key and model.exists()
            and sha256_file(model) == record["sha256"]):
        def sentences():
            for plan in train_plans:
                for unit in plan.units:
                    for cut in read_unit_cuts(out, unit):
                        text = select_text(cut["texts"], dag.text.field)
                        if text:
                            yield cut["id"], text
        train_bpe(sentences(), model, dag.text.bpe)
        tokenizer = Tokenizer(model)
        record = {"key": key, "sha256": tokenizer.sha256, "vocab_size": tokenizer.vocab_size,
                  "model_type": dag.text.bpe.model_type}
        write_json_atomic(record_path, record)
    info = {"model": "text/bpe.model", "sha256": record["sha256"],
            "vocab_size": record["vocab_size"], "model_type": record["model_type"]}
    return Tokenizer(model), info


def resolve_codec(cfg: CodecConfig):
    """Settle `auto` once, in the driver, so every worker loads the same weights."""
    from pipeline.codec import resolve_weights

    _, weights = resolve_weights(cfg)
    concrete = replace(cfg, weights=weights.kind if weights.kind != "checkpoint" else cfg.weights)
    return concrete, weights


def check_audio_settings(out: Path, settings: dict, rebuild: bool) -> None:
    path = out / "corpus.json"
    previous = (read_json(path) or {}).get("audio")
    if previous is not None and previous != settings and not rebuild:
        changes = "\n".join(f"  {k}: {a!r} -> {b!r}" for k, a, b in _diff(previous, settings))
        raise SettingsChanged(
            f"{out} holds codes made with other audio settings:\n{changes}\n"
            "Codes from different settings are never mixed. Write to a new --out, or pass "
            "--rebuild-audio to re-encode every unit here.")
    if previous != settings:
        write_json_atomic(path, {"audio": settings})


def remove_orphans(out: Path, units: set[str]) -> None:
    """Drop ledger entries and files of units the current plan no longer has."""
    folder = out / "ledger"
    for path in sorted(folder.glob("*.json")) if folder.exists() else []:
        if path.stem in units:
            continue
        entry = ledger.read_entry(out, path.stem)
        for f in [entry.get("codes") or {}] + (entry.get("shards") or {}).get("files", []):
            if f.get("path"):
                (out / f["path"]).unlink(missing_ok=True)
        path.unlink()


class CodecActor:
    """EnCodec loaded once per Ray worker (a GPU each, or CPU threads)."""

    def __init__(self, cfg: CodecConfig, threads: int | None, expected_sha256: str):
        import torch

        from pipeline.codec import CodecEncoder

        if threads:
            torch.set_num_threads(threads)
        self.encoder = CodecEncoder(cfg)
        self.encoder.setup()
        # Units are submitted before this check finishes, so a worker with other weights must
        # refuse to encode anything: its units then fail instead of committing foreign codes.
        if self.encoder.weights.sha256 != expected_sha256:
            raise RuntimeError(
                f"this codec worker loaded weights {self.encoder.weights.sha256[:12]}, the driver "
                f"resolved {expected_sha256[:12]}; make codec.cache_dir hold the same checkpoint "
                "on every node")

    def encode(self, waves):
        return self.encoder.encode(waves)

    def forward_passes(self) -> int:
        return self.encoder.forward_passes


def _unit_task(job: UnitJob, actor) -> dict:
    import ray

    def encode_async(waves):
        ref = actor.encode.remote(waves)
        return lambda: ray.get(ref)

    return run_unit(job, encode_async)


def codec_uses_gpu(cfg: CodecConfig, resources: dict) -> bool:
    return cfg.device.startswith("cuda") or (cfg.device == "auto" and resources.get("GPU", 0) > 0)


def codec_threads(dag: Dag, resources: dict) -> int:
    """Torch threads of a CPU codec worker: by default every CPU. Decoding, slicing and
    resampling cost ~1% of encoding, so the unit tasks beside it barely compete."""
    return dag.ray.cpus_per_codec_worker or max(1, int(resources.get("CPU", 1)))


def run_units_on_ray(jobs: list[UnitJob], dag: Dag, codec_cfg: CodecConfig, weights_sha256: str,
                     progress: bool):
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        # "local": a new embedded Ray, never a cluster that happens to run on this machine
        # (address=None would join the latest `ray start` cluster found in /tmp/ray).
        ray.init(address=dag.ray.address or "local", include_dashboard=False,
                 logging_level=logging.WARNING)
    actors = []
    try:
        resources = ray.cluster_resources()
        use_gpu = codec_uses_gpu(codec_cfg, resources)
        workers = dag.ray.codec_workers or (max(1, int(resources.get("GPU", 0))) if use_gpu else 1)
        threads = None if use_gpu else codec_threads(dag, resources)
        # A CPU codec worker books at most all CPUs but one, so unit tasks can always run.
        booked = 1 if use_gpu else max(1, min(threads, int(resources.get("CPU", 2)) - 1))
        actor_cls = ray.remote(CodecActor).options(num_cpus=booked, num_gpus=1 if use_gpu else 0)
        actors = [actor_cls.remote(codec_cfg, threads, weights_sha256) for _ in range(workers)]
        log.info("%d codec worker(s) starting (%s)", workers,
                 "GPU" if use_gpu else f"CPU, {threads} threads each")
        task = ray.remote(_unit_task).options(num_cpus=1, max_retries=2)
        limit = dag.ray.units_in_flight or 2 * workers
        results, failed, running = [], [], {}
        queue = list(enumerate(jobs))
        # Progress in seconds of audio, so the rate reads as "x real time".
        bar = tqdm(total=round(sum(j.unit.seconds for j in jobs)), unit="s audio", unit_scale=True,
                   desc=f"encoding {len(jobs)} units", disable=not progress)
        while queue or running:
            while queue and len(running) < limit:
                i, job = queue.pop(0)
                running[task.remote(job, actors[i % workers])] = job
            ready, _ = ray.wait(list(running), num_returns=1)
            job = running.pop(ready[0])
            try:
                results.append(ray.get(ready[0]))
            except Exception as err:  # a unit's failure must not cost the others
                failed.append({"unit": job.unit.name, "error": f"{type(err).__name__}: {err}"})
            bar.update(round(job.unit.seconds))
        bar.close()
        passes = sum(ray.get([a.forward_passes.remote() for a in actors]))
        return results, failed, passes
    finally:
        for actor in actors:
            ray.kill(actor)
        if started_here:
            ray.shutdown()


def _diff(a: dict, b: dict, prefix: str = ""):
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            yield from _diff(x, y, f"{prefix}{key}.")
        elif x != y:
            yield f"{prefix}{key}", x, y

