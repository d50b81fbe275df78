"""`valle-train`: one training loop for the AR and NAR models, one process or DDP under torchrun.

    valle-train trainer/configs/ar-tiny.yaml --data OUT [--data OUT2 ...] [section.key=value ...] [--resume]
    torchrun --nproc_per_node 2 -m trainer.train trainer/configs/ar-tiny.yaml --data OUT

In: a config, one or more corpora (folders or http(s)/s3 URLs). Out: run.out/ with checkpoints
(model, optimizer, schedule, loader state of every rank, RNG; loaded with weights_only=True),
log.jsonl and TensorBoard events. `--resume` continues from the newest checkpoint exactly: the
loader skips what the interrupted epoch had delivered and the RNG streams continue.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from trainer.batching import BatchingConfig, plan_epoch, sample_lengths
from trainer.config import TrainConfig, load_config
from trainer.corpus import Corpus, CorpusError, check_compatible, open_corpus
from trainer.loader import LoaderState, PlanDataset

PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16, per GPU


class Run:
    """Process-group facts: rank, world size, device."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
        if self.world > 1:
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def sum(self, *values: float) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(t)
        return t.tolist()


def build_model(cfg: TrainConfig, vocab: int, codebooks: int):
    from trainer.models import ARModel, NARModel
    from trainer.models.config import PRESETS

    overrides = {"n_codebooks": codebooks}
    if cfg.model.dropout is not None:
        overrides["dropout"] = cfg.model.dropout
    if cfg.model.kind == "ar":
        overrides["group_size"] = cfg.model.group_size
    model_cfg = PRESETS[cfg.model.preset](vocab, **overrides)
    return (ARModel if cfg.model.kind == "ar" else NARModel)(model_cfg)


def schedule(cfg: TrainConfig):
    warmup, total = cfg.optim.warmup_steps, cfg.run.max_steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))
    return factor


def epoch_loader(corpora: list[Corpus], cfg: TrainConfig, epoch: int, world: int, rank: int,
                 workers: int, skip: list[int] | None = None) -> DataLoader:
    shards = [s for c in corpora for s in c.shards]
    lengths = sample_lengths([c.frames[s.id] for c in corpora for s in c.shards],
                             [c.text_tokens[s.id] for c in corpora for s in c.shards])
    plans = max(1, workers)
    batching = BatchingConfig(cfg.data.max_frames, cfg.data.buckets, cfg.data.shuffle_buffer, cfg.run.seed)
    plan = plan_epoch(lengths, epoch, world, plans, batching)
    dataset = PlanDataset(shards, plan.ranks[rank], skip or [0] * plans)
    return DataLoader(dataset, batch_size=None, num_workers=workers)


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def rng_state(generator: torch.Generator) -> dict:
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "model": generator.get_state(),
             "numpy": {"keys": [int(x) for x in keys], "pos": int(pos), "has_gauss": int(has_gauss),
                       "gauss": float(gauss)},  # plain data: checkpoints load with weights_only
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["model"])
    n = state["numpy"]
    np.random.set_state(("MT19937", np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def latest_checkpoint(out: Path) -> Path | None:
    found = sorted(out.glob("checkpoint-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    return found[-1] if found else None


def evaluate(model: "LossModule", corpora: list[Corpus], cfg: TrainConfig, run: Run) -> float | None:
    """Mean loss on the dev split. Every rank reads the (small) dev set and takes every world-th
    batch, so any number of dev shards works with any number of ranks."""
    if not corpora or not any(c.shards for c in corpora):
        return None
    model.eval()
    loss_sum = tokens = 0.0
    eval_gen = torch.Generator().manual_seed(cfg.run.seed)  # the same prompt splits every time
    with torch.no_grad(), autocast(run):
        for i, batch in enumerate(epoch_loader(corpora, cfg, epoch=0, world=1, rank=0, workers=0)):
            if i % run.world != run.rank:
                continue
            loss, stats = model(to_device(batch, run.device), eval_gen)
            loss_sum += float(loss) * float(stats["tokens"])
            tokens += float(stats["tokens"])
    model.train()
    total, count = run.sum(loss_sum, tokens)
    return total / max(count, 1.0)


class LossModule(torch.nn.Module):
    """forward() computes the model's teacher-forced loss: the one thing DDP wraps, so its
    gradient hooks run the same way with one process or many."""

    def __init__(self, model, takes_generator: bool):
        super().__init__()
        self.model, self.takes_generator = model, takes_generator

    def forward(self, batch: dict, generator: torch.Generator):
        if self.takes_generator:  # NAR: the prompt split and the codebook drawn per utterance
            return self.model.loss(batch, generator)
        return self.model.loss(batch)


def autocast(run: Run):
    if run.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def train(cfg: TrainConfig, data: list[str], *, resume: bool = False,
          allow_random_codec: bool = False) -> dict:
    run = Run()
    torch.manual_seed(cfg.run.seed + run.rank)
    out = Path(cfg.run.out)
    corpora = [open_corpus(d, roles=("train",), fmt=cfg.data.format,
                           allow_random_codec=allow_random_codec) for d in data]
    check_compatible(corpora)
    dev = [c for c in (open_corpus(d, roles=("dev",), fmt=cfg.data.format,
                                   allow_random_codec=allow_random_codec) for d in data) if c.shards]
    model = build_model(cfg, corpora[0].vocab_size, corpora[0].codebooks).to(run.device)
    generator = torch.Generator().manual_seed(cfg.run.seed * 1000 + run.rank)
    loss_module = LossModule(model, takes_generator=cfg.model.kind == "nar")
    wrapped = loss_module
    if run.world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            loss_module, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.optim.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=cfg.optim.lr, betas=tuple(cfg.optim.betas))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(cfg))

    step, state = 0, LoaderState(0, [0] * max(1, cfg.data.workers))
    checkpoint = latest_checkpoint(out) if resume else None
    if checkpoint is not None:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if saved["provenance"] != corpora[0].provenance_key:
            raise CorpusError(f"{checkpoint} was trained on a corpus with other codec/BPE provenance")
        if saved["world"] != run.world or len(saved["loader"][run.rank]["delivered"]) != len(state.delivered):
            raise CorpusError(f"{checkpoint}: resume with the same number of processes "
                              f"({saved['world']}) and data.workers as the run that saved it")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        step = saved["step"]
        state = LoaderState.from_dict(saved["loader"][run.rank])
        set_rng_state(saved["rng"][run.rank], generator)

    writer = _tensorboard(out) if run.main else None
    log = (out / "log.jsonl").open("a") if run.main else None
    flops_per_position = model.flops_per_token(1024)
    peak = next((v for k, v in PEAK_FLOPS.items() if run.device.type == "cuda"
                 and k in torch.cuda.get_device_name(run.device)), None)
    model.train()
    window = {"loss": 0.0, "correct": 0.0, "tokens": 0.0, "positions": 0.0, "padding": 0.0, "batches": 0}
    started = time.perf_counter()
    last = {}
    while step < cfg.run.max_steps:
        loader = epoch_loader(corpora, cfg, state.epoch, run.world, run.rank, cfg.data.workers,
                              state.delivered)
        micro = 0
        for batch in loader:
            state.delivered[batch["worker"]] += 1
            with autocast(run):
                loss, stats = wrapped(to_device(batch, run.device), generator)
            (loss / cfg.optim.accumulate).backward()
            window["loss"] += float(loss.detach()) * float(stats["tokens"])
            window["correct"] += float(stats["accuracy"]) * float(stats["tokens"])
            window["tokens"] += float(stats["tokens"])
            window["positions"] += float(batch["code_lens"].sum() + batch["text_lens"].sum())
            window["padding"] += batch["padding"]
            window["batches"] += 1
            micro += 1
            if micro % cfg.optim.accumulate:
                continue
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % cfg.run.log_every == 0 or step == cfg.run.max_steps:
                last = _log_window(window, run, step, scheduler, norm, started, flops_per_position, peak, log, writer)
                started = time.perf_counter()
            if step % cfg.run.eval_every == 0 or step == cfg.run.max_steps:
                dev_loss = evaluate(loss_module, dev, cfg, run)
                if dev_loss is not None and run.main:
                    _emit({"step": step, "dev_loss": dev_loss}, log, writer)
                    last["dev_loss"] = dev_loss
            if step % cfg.run.checkpoint_every == 0 or step == cfg.run.max_steps:
                save_checkpoint(out, run, model, optimizer, scheduler, step, state, generator, corpora[0])
            if step >= cfg.run.max_steps:
                break
        else:
            state = LoaderState(state.epoch + 1, [0] * len(state.delivered))
    if log:
        log.close()
    if writer:
        writer.close()
    if run.world > 1:
        dist.destroy_process_group()
    return last


def save_checkpoint(out, run, model, optimizer, scheduler, step, state, generator, corpus) -> None:
    loaders = run.all_gather(state.to_dict())
    rngs = run.all_gather(rng_state(generator))
    if not run.main:
        return
    out.mkdir(parents=True, exist_ok=True)
    payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
               "scheduler": scheduler.state_dict(), "step": step, "loader": loaders, "rng": rngs,
               "world": run.world, "provenance": corpus.provenance_key,
               "model_kind": model.__class__.__name__, "model_config": vars(model.cfg),
               "bpe_sha256": corpus.index["provenance"]["bpe"]["sha256"]}
    tmp = out / f".checkpoint-{step}.pt.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, out / f"checkpoint-{step}.pt")


def _log_window(w, run, step, scheduler, norm, started, flops_per_position, peak, log, writer) -> dict:
    loss, correct, tokens, positions, padding, batches = run.sum(
        w["loss"], w["correct"], w["tokens"], w["positions"], w["padding"], w["batches"])
    seconds = time.perf_counter() - started
    record = {"step": step, "loss": loss / max(tokens, 1), "accuracy": correct / max(tokens, 1),
              "lr": scheduler.get_last_lr()[0], "grad_norm": float(norm),
              "tokens_per_s": positions / seconds, "padding": padding / max(batches, 1),
              "mfu": (flops_per_position * positions / seconds / (peak * run.world)) if peak else None}
    for key in w:
        w[key] = 0.0 if key != "batches" else 0
    if run.main:
        _emit(record, log, writer)
    return record


def _emit(record: dict, log, writer) -> None:
    log.write(json.dumps(record) + "\n")
    log.flush()
    if writer is not None:
        for key, value in record.items():
            if key != "step" and value is not None:
                writer.add_scalar(key, value, record["step"])
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()),
          flush=True)


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
    parser.add_argument("--allow-random-codec", action="store_true",
                        help="train on a corpus whose codes came from a random-init EnCodec (tests only)")
    args = parser.parse_intermixed_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        train(cfg, args.data, resume=args.resume, allow_random_codec=args.allow_random_codec)
    except (CorpusError, ValueError) as err:
        print(f"valle-train: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
