"""`valle-train`: one training loop for the AR and NAR models, one process or DDP under torchrun.

    valle-train trainer/configs/ar-tiny.yaml --data OUT [--data OUT2 ...] [section.key=value ...] [--resume]
    valle-torchrun --nproc_per_node 2 -m trainer.train trainer/configs/ar-tiny.yaml --data OUT   (or torchrun)

In: a config, one or more corpora (folders or http(s)/s3 URLs). Out: run.out/ with checkpoints
(model, optimizer, schedule, loader state of every rank, RNG, the data-plan key; loaded with
weights_only=True), log.jsonl and TensorBoard events. `--resume` continues from the newest
checkpoint exactly: the loader skips what the interrupted epoch had delivered and the RNG streams
continue; a resume that changed a setting shaping the data plan is refused, naming it. Exit
codes: 2 a config or corpus that cannot be used, 3 data that became unavailable (trainer/outage.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from schemas.codes import CodesSpace
from storage.remote import retry_budget_of
from trainer import checkpoint
from trainer.batching import BatchingConfig, EpochPlan, consumed_samples, plan_epoch, plan_stats
from trainer.config import TrainConfig, load_config
from trainer.corpus import Corpus, CorpusError, Samples, check_compatible, merge, open_corpus, two_codecs
from trainer.distributed import Run, agree_on_checkpoint, check_shared_folder
from trainer.launch import report
from trainer.loader import LoaderState, make_loader
from trainer.metrics import Window, peak_flops
from trainer.outage import (
    DataUnavailable,
    Reads,
    ReadStalled,
    agree_on_data,
    agreed_read,
    agreed_steps,
    fetched,
    leave_stuck_reads,
)


def build_model(cfg: TrainConfig, vocab: int, codebooks: int, codec: dict | None = None):
    """The configured model for a corpus of `vocab` BPE ids and `codebooks` codebooks of the codec
    its provenance `codec` record names (None: EnCodec 24 kHz): the code vocabulary, the frame rate
    (prompt seconds in frames) and the position tables (40 s) are that codec's."""
    from trainer.models import ARModel, NARModel
    from trainer.models.config import PRESETS, codec_sizes

    space = CodesSpace.of_record(codec or {})
    overrides = {"n_codebooks": codebooks, **codec_sizes(space.codebook_size, space.frame_rate)}
    if cfg.model.dropout is not None:
        overrides["dropout"] = cfg.model.dropout
    if cfg.model.kind == "ar":
        overrides["group_size"] = cfg.model.group_size
    else:
        overrides["prompt_seconds"] = tuple(cfg.model.prompt_seconds)
    model_cfg = PRESETS[cfg.model.preset](vocab, **overrides)
    return (ARModel if cfg.model.kind == "ar" else NARModel)(model_cfg)


def schedule(cfg: TrainConfig):
    warmup, total = cfg.optim.warmup_steps, cfg.run.max_steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


class TrainingData:
    """The samples of some corpora as the model sees them: each sample's cost in model positions
    (what `data.max_frames` budgets) and whether it fits the model's position tables at all."""

    def __init__(self, corpora: list[Corpus], model):
        self.samples: Samples = merge(corpora)
        text, frames = self.samples.text_tokens.astype(np.int64), self.samples.frames.astype(np.int64)
        self.cost = model.positions(text, frames)
        self.keep = np.asarray(model.cfg.fits(text, frames))
        self.too_long = int((~self.keep).sum())
        self._unconsumed = None  # (key, mask): see unconsumed()

    def plan(
        self, cfg: TrainConfig, epoch: int, world: int, workers: int, multiple_of: int, replanned: dict | None = None
    ) -> EpochPlan:
        """The epoch's plan for this layout; an epoch begun on another layout (`replanned`) plans
        only the samples that layout has not consumed (spread over the ranks when they are few)."""
        keep = self.unconsumed(cfg, epoch, multiple_of, replanned) if replanned else self.keep
        batching = self.batching(cfg, multiple_of)
        workers = max(1, workers)
        return plan_epoch(self.cost, keep, self.samples.offsets, epoch, world, workers, batching, bool(replanned))

    def batching(self, cfg: TrainConfig, multiple_of: int) -> BatchingConfig:
        data = cfg.data
        return BatchingConfig(
            data.max_frames, data.buckets, data.shuffle_buffer, data.interleave, cfg.run.seed, multiple_of
        )

    def unconsumed(self, cfg: TrainConfig, epoch: int, multiple_of: int, replanned: dict) -> np.ndarray:
        """The kept samples of the epoch that the layouts it ran on before (`replanned`, newest
        first, each naming the one before it) have not delivered. Each layout's plan is computed
        once, oldest first (it planned what the ones before it had left), so n layout changes in
        an epoch cost n plans; the answer for the last chain asked is kept (resume_elsewhere asks,
        then plan)."""
        chain = []
        while replanned:
            chain.append(replanned)
            replanned = replanned.get("replanned")
        key = (self.batching(cfg, multiple_of), epoch, json.dumps(chain[0], sort_keys=True))
        if self._unconsumed is not None and self._unconsumed[0] == key:
            return self._unconsumed[1]
        keep = self.keep.copy()
        for depth, layout in enumerate(reversed(chain)):
            before = plan_epoch(
                self.cost, keep, self.samples.offsets, epoch, layout["world"], layout["workers"], key[0], depth > 0
            )
            keep[consumed_samples(before, layout["delivered"])] = False
        self._unconsumed = (key, keep)
        return keep

    def resume_elsewhere(self, cfg: TrainConfig, saved: dict, layout: dict) -> LoaderState:
        """Where a checkpoint saved on another layout goes on: its epoch, re-planned over the samples
        not consumed yet (the next epoch when none are left)."""
        states = [LoaderState.from_dict(s) for s in saved["loader"]]
        epoch = states[0].epoch
        replanned = {**saved["layout"], "delivered": [s.delivered for s in states], "replanned": states[0].replanned}
        if not self.unconsumed(cfg, epoch, cfg.optim.accumulate, replanned).any():
            return LoaderState(epoch + 1, [0] * layout["workers"])
        return LoaderState(epoch, [0] * layout["workers"], replanned)

    def loader(self, plan: EpochPlan, rank: int, workers: int, skip=None, pin_memory=False) -> DataLoader:
        return make_loader(self.samples, plan.ranks[rank], skip, workers, pin_memory)

    def stats(self, plan: EpochPlan, rank: int) -> dict:
        return plan_stats(plan.ranks[rank], self.cost, self.samples.speakers, self.samples.books)


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def evaluate(model: LossModule, data: TrainingData | None, cfg: TrainConfig, run: Run, step: int) -> dict | None:
    """Dev loss and accuracy beside the majority baseline. Every rank plans the (small) dev set
    alone and takes every world-th batch, so any number of dev shards works with any world. Its
    reads go through the same budget as training's, and the ranks agree they all read it before
    they sum the results (a rank that could not stops them all)."""
    if data is None:
        return None
    model.eval()
    window = Window(run.device, model.model.histogram_shape)
    eval_gen = torch.Generator().manual_seed(cfg.run.seed)  # the same prompt splits every time
    plan = data.plan(cfg, epoch=0, world=1, workers=1, multiple_of=1)
    failed = None
    with torch.no_grad(), autocast(run):
        try:
            batches = fetched(data.loader(plan, rank=0, workers=0), Reads.of(cfg.data), "dev batch")
            for i, batch in enumerate(batches):
                if i % run.world == run.rank:
                    loss, stats = model(to_device(batch, run.device), eval_gen)
                    window.add(loss, stats, batch, 0.0, 0.0)
        except OSError as err:
            failed = err
    model.train()
    agree_on_data(run, failed, Path(cfg.run.out), f"at step {step}, reading the dev set")
    record = window.record(run, 0, 0.0, torch.zeros(()), None)
    return {"dev_loss": record["loss"], "dev_accuracy": record["accuracy"], "dev_majority": record["majority"]}


class LossModule(torch.nn.Module):
    """forward() computes the model's teacher-forced loss: the one thing DDP wraps, so its
    gradient hooks run the same way with one process or many."""

    def __init__(self, model, takes_generator: bool):
        super().__init__()
        self.model, self.takes_generator = model, takes_generator

    def forward(self, batch: dict, generator: torch.Generator):
        if not batch["ids"]:  # an empty batch (trainer.batching.spread_plan): a loss of zero that every
            return sum(p.sum() for p in self.parameters()) * 0.0, None  # parameter is in, as DDP wants
        if self.takes_generator:  # NAR: the prompt split and the codebook drawn per utterance
            return self.model.loss(batch, generator)
        return self.model.loss(batch)


def autocast(run: Run):
    if run.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def optimizer_steps(loader, accumulate: int):
    """Group an epoch's batches into optimizer steps of `accumulate` micro-batches. Plans give
    every rank a multiple of `accumulate` batches, so a step never spans two epochs."""
    group = []
    for batch in loader:
        group.append(batch)
        if len(group) == accumulate:
            yield group
            group = []
    if group:
        raise RuntimeError(
            f"{len(group)} micro-batches left over at the end of an epoch; "
            f"the plan should hold a multiple of optim.accumulate={accumulate}"
        )


def accumulate_gradients(
    wrapped, group: list[dict], run: Run, generator, window: Window, model, weight: float = 1.0
) -> None:
    """Forward and backward over one step's micro-batches; under DDP the gradients are averaged
    over ranks once, on the last micro-batch (no_sync() on the others). `weight` scales the
    losses: world x accumulate over the step's micro-batches that hold samples, so a step with
    empty ones (the end of a spread plan) averages over the others."""
    for i, batch in enumerate(group):
        last = i == len(group) - 1
        sync = contextlib.nullcontext() if last or not hasattr(wrapped, "no_sync") else wrapped.no_sync()
        with sync:
            with autocast(run):
                loss, stats = wrapped(to_device(batch, run.device), generator)
            (loss / len(group) * weight).backward()
        if batch["ids"]:
            positions = float(model.positions(batch["text_lens"], batch["code_lens"]).sum())
            flops = model.train_flops(batch["text_lens"], batch["code_lens"])  # from the CPU lengths
            window.add(loss, stats, batch, positions, flops)


def train(cfg: TrainConfig, data: list[str], *, resume: bool = False, allow_random_codec: bool = False) -> dict:
    reads = Reads.of(cfg.data)
    run = Run(control_wait_s=reads.stall_s)  # the agreements on data wait out a rank's reads
    try:
        with retry_budget_of(reads.retry_s, reads.timeout_s):  # every read, here and in the loader's workers
            return _train(run, cfg, data, resume, allow_random_codec)
    finally:
        run.close()


def open_corpora(cfg: TrainConfig, data: list[str], allow_random_codec: bool) -> tuple[list[Corpus], list[Corpus]]:
    """The corpora's training subsets, and those of them that have a dev subset."""

    def opened(role: str) -> list[Corpus]:
        return [open_corpus(d, roles=(role,), fmt=cfg.data.format, allow_random_codec=allow_random_codec) for d in data]

    corpora = opened("train")
    check_compatible(corpora)
    return corpora, [c for c in opened("dev") if c.shards]


def _train(run: Run, cfg: TrainConfig, data: list[str], resume: bool, allow_random_codec: bool) -> dict:
    torch.manual_seed(cfg.run.seed + run.rank)
    out = Path(cfg.run.out)
    reads = Reads.of(cfg.data)
    corpora, dev = agreed_read(
        run, lambda: open_corpora(cfg, data, allow_random_codec), reads, out, "at startup, reading the corpora"
    )
    model = build_model(cfg, corpora[0].vocab_size, corpora[0].codebooks, corpora[0].codec)
    training = TrainingData(corpora, model)
    dev_data = TrainingData(dev, model) if dev else None
    key = checkpoint.plan_key(cfg, corpora, (model.cfg.max_text_len, model.cfg.max_audio_frames))
    layout = checkpoint.layout(run.world, cfg.data.workers)
    check_shared_folder(run, out)

    step, state, saved, path = 0, LoaderState(0, [0] * max(1, cfg.data.workers)), None, None
    if resume:
        found = checkpoint.checkpoints(out) if run.main and out.is_dir() else []
        path = agree_on_checkpoint(run, out, found[-1] if found else None)
    if path is not None:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        codecs = two_codecs(str(path), saved["provenance"], "the corpus", corpora[0].provenance_key)
        if codecs:
            raise CorpusError(f"a checkpoint and a corpus of two codecs: {codecs}; resume on the corpus it began on")
        if saved["provenance"] != corpora[0].provenance_key:
            raise CorpusError(f"{path} was trained on a corpus with other codec/BPE provenance")
        checkpoint.check_plan_key(saved.get("plan"), key, path)
        model.load_state_dict(saved["model"])  # every rank, before the DDP wrap
    model.to(run.device)
    generator = torch.Generator().manual_seed(cfg.run.seed * 1000 + run.rank)
    loss_module = LossModule(model, takes_generator=cfg.model.kind == "nar")
    wrapped = loss_module
    if run.world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            loss_module,
            device_ids=[run.device.index] if run.device.type == "cuda" else None,
            broadcast_buffers=False,  # the only buffers are constant position tables: nothing to send each step
        )
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.optim.lr,
        betas=tuple(cfg.optim.betas),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(cfg))
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        step = saved["step"]
        if saved["layout"] == layout:  # exactly where it stopped
            state = LoaderState.from_dict(saved["loader"][run.rank])
        else:
            state = training.resume_elsewhere(cfg, saved, layout)
            if run.main:
                print(f"valle-train: {resumed_elsewhere(path, saved, layout, state)}", flush=True)
        if run.rank < len(saved["rng"]):  # a rank the saved layout did not have starts from its seed
            checkpoint.set_rng_state(saved["rng"][run.rank], generator)

    writer = _tensorboard(out) if run.main else None
    watch = watcher(cfg, corpora[0], run)
    watch_every = cfg.synth_eval.every or cfg.run.eval_every
    log = (out / "log.jsonl").open("a") if run.main else None
    if training.too_long and run.main:
        _emit({"step": step, "too_long_filtered": training.too_long}, log, writer)
    peak = peak_flops(run.device)
    model.train()
    window, last = Window(run.device, model.histogram_shape), {}
    optimizer.zero_grad(set_to_none=True)
    first_plan = True
    while step < cfg.run.max_steps:
        plan = training.plan(cfg, state.epoch, run.world, cfg.data.workers, cfg.optim.accumulate, state.replanned)
        if run.main:  # printed for the first epoch of this process, logged for every one
            _emit(
                {
                    "step": step,
                    "epoch": state.epoch,
                    **(
                        {"replanned_from": {k: state.replanned[k] for k in ("world", "workers")}}
                        if state.replanned
                        else {}
                    ),
                    **({"plan_spread": True} if plan.spread else {}),
                    **{f"plan_{k}": v for k, v in training.stats(plan, run.rank).items()},
                },
                log,
                None,
                quiet=not first_plan,
            )
            if plan.spread:
                print(f"valle-train: {spread_note(plan)}", flush=True)
            first_plan = False
        loader = training.loader(
            plan, run.rank, cfg.data.workers, state.delivered, pin_memory=run.device.type == "cuda"
        )
        filled = plan.filled_per_step(cfg.optim.accumulate)  # None: no empty batch
        batches = fetched(loader, reads, "batch", setup=run.use_device)  # waited for at most reads.stall_s
        for group in agreed_steps(optimizer_steps(batches, cfg.optim.accumulate), run, out, step):
            weight = 1.0
            if filled is not None:
                weight = run.world * cfg.optim.accumulate / filled[sum(state.delivered) // cfg.optim.accumulate]
            accumulate_gradients(wrapped, group, run, generator, window, model, weight)
            for batch in group:
                state.delivered[batch["worker"]] += 1
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % cfg.run.log_every == 0 or step == cfg.run.max_steps:
                last = window.record(run, step, scheduler.get_last_lr()[0], norm, peak)
                if run.main:
                    _emit(last, log, writer)
            evaluating = step % cfg.run.eval_every == 0 or step == cfg.run.max_steps
            saving = step % cfg.run.checkpoint_every == 0 or step == cfg.run.max_steps
            watching = watch is not None and (step % watch_every == 0 or step == cfg.run.max_steps)
            if evaluating or saving or watching:
                window.pause()  # neither counts as training time
                if evaluating and (dev_stats := evaluate(loss_module, dev_data, cfg, run, step)) is not None:
                    last.update(dev_stats)
                    if run.main:
                        _emit({"step": step, **dev_stats}, log, writer)
                if watching:
                    _emit(watch(model, step, writer), log, writer)
                if saving:
                    save_checkpoint(out, cfg, run, model, optimizer, scheduler, step, state, generator, corpora[0], key)
                window.resume()
            if step >= cfg.run.max_steps:
                break
        else:
            state = LoaderState(state.epoch + 1, [0] * len(state.delivered))
    if log:
        log.close()
    if writer:
        writer.close()
    return last


def resumed_elsewhere(path: Path, saved: dict, layout: dict, state: LoaderState) -> str:
    """What a resume on another layout does with the checkpoint's epoch, in words."""
    was, now = saved["layout"], layout
    said = (
        f"{path} was saved by {was['world']} process(es) x {was['workers']} loader worker(s), "
        f"this run has {now['world']} x {now['workers']}: "
    )
    if state.replanned is None:
        return said + f"epoch {state.epoch - 1} had delivered every sample, epoch {state.epoch} begins"
    return said + (
        f"epoch {state.epoch} goes on with the samples it has not consumed, re-planned (a resume is "
        "bit-exact only on the layout it was saved on)"
    )


def spread_note(plan: EpochPlan) -> str:
    """What a spread plan (trainer.batching.spread_plan) does, in words."""
    samples = sum(len(w.samples) for plans in plan.ranks for w in plans)
    empty = sum(int((np.diff(w.bounds) == 0).sum()) for plans in plan.ranks for w in plans)
    return (
        f"epoch {plan.epoch}: its {samples} samples left are too few to plan shard by shard on "
        f"{len(plan.ranks)} process(es); they are dealt out batch by batch, {plan.batches_per_rank} per "
        f"process, each in exactly one"
        + (f", and {empty} batches are empty (a zero loss; their steps average the others)" if empty else "")
    )


def watcher(cfg: TrainConfig, corpus: Corpus, run: Run):
    """The synthesis check of trainer/eval/during_training.py on the first rank, or None (off)."""
    if not run.main or not cfg.synth_eval.set or cfg.synth_eval.every == 0:
        return None
    from trainer.eval.during_training import TrainingEval, settings_from

    return TrainingEval(settings_from(cfg.synth_eval), cfg.model.kind, corpus.provenance_key, run.device)


def save_checkpoint(out, cfg, run, model, optimizer, scheduler, step, state, generator, corpus, key) -> None:
    loaders = run.all_gather(state.to_dict())
    rngs = run.all_gather(checkpoint.rng_state(generator))
    if not run.main:
        return
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "loader": loaders,
        "rng": rngs,
        "world": run.world,
        "layout": checkpoint.layout(run.world, cfg.data.workers),
        "plan": key,
        "provenance": corpus.provenance_key,
        "model_kind": model.__class__.__name__,
        "model_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(model.cfg).items()},
        "bpe_sha256": corpus.index["provenance"]["bpe"]["sha256"],
    }
    checkpoint.save(out, payload, step, cfg.run.keep_last, cfg.run.keep_every)


def _emit(record: dict, log, writer, quiet: bool = False) -> None:
    log.write(json.dumps(record) + "\n")
    log.flush()
    if quiet:
        return
    if writer is not None:
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                writer.add_scalar(key, value, record["step"])
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()), flush=True)


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="valle-train", description=__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    parser.add_argument("--data", action="append", required=True, help="corpus folder or URL (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in run.out")
    parser.add_argument(
        "--allow-random-codec",
        action="store_true",
        help="train on a corpus whose codes came from a random-init EnCodec (tests only)",
    )
    args = parser.parse_intermixed_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        train(cfg, args.data, resume=args.resume, allow_random_codec=args.allow_random_codec)
    except DataUnavailable as err:
        code = report(str(err), 3)
        if isinstance(err.__cause__, ReadStalled):
            leave_stuck_reads(code)
        return code
    except (CorpusError, ValueError) as err:
        return report(str(err), 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
