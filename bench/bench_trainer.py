"""Trainer throughput: what one DataLoader worker delivers against what training consumes.

    python bench/bench_trainer.py [--data out/sample] [--config trainer/configs/ar-tiny.yaml] [--steps 60]
                                  [--utterances 1600]

- loader, per worker: a generated corpus of `--utterances` Libriheavy-like utterances (1-30 s,
  ~14 s median, random codes, sample/corpora.py) read by one worker in this process, in
  positions (codec frames + text tokens) per second, steady state, for both shard formats; and
  where the time goes (tar reading, JSON + code unpacking, planning + collation). The bundled
  sample's utterances are short and an epoch is 4 batches, so a DataLoader worker started per
  epoch measures process start-up, not reading: that figure is shown apart;
- trainer: valle-train's own tokens/s over `--steps` optimizer steps of the config's model on
  `--data` on this machine (GPU when present, else CPU), and MFU where the GPU's peak is known;
- the H100 budget: the positions per second ar-base (G=1 and G=2) consumes at 45 % MFU on an
  H100 (989 TFLOP/s bf16), from the models' FLOPs at the generated corpus's lengths, and the
  workers per GPU that takes at the measured per-worker rate.
Prints one table and the command that produced it.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import schemas  # noqa: E402
from sample.corpora import Cut, write_corpus  # noqa: E402
from trainer.batching import BatchingConfig, plan_epoch  # noqa: E402
from trainer.config import load_config  # noqa: E402
from trainer.corpus import open_corpus  # noqa: E402
from trainer.loader import make_loader  # noqa: E402
from trainer.models import ARModel, base  # noqa: E402
from trainer.train import train  # noqa: E402

H100_PEAK, TARGET_MFU = 989e12, 0.45


def generated_corpus(root: Path, utterances: int) -> None:
    rng = np.random.default_rng(0)
    seconds = np.clip(rng.lognormal(np.log(14.0), 0.45, utterances), 1.0, 30.0)
    cuts = [
        Cut(str(i // 200), f"large/{i // 200}/book/chapter", int(s * 75), max(1, int(s * 3)))
        for i, s in enumerate(seconds)
    ]
    write_corpus(root, [cuts[i : i + 200] for i in range(0, utterances, 200)], formats=("webdataset", "parquet"))


def epoch_rate(location: str, fmt: str, workers: int, epochs: int = 3) -> tuple[float, float]:
    """(positions/s, seconds per sample) of the fastest of `epochs` epochs, planning included
    (workers = 0 reads in this process)."""
    samples = open_corpus(location, fmt=fmt, allow_random_codec=True).samples
    cost = (samples.frames + samples.text_tokens).astype(np.int64)
    best = (0.0, 0.0)
    for epoch in range(epochs):
        start, positions = time.perf_counter(), 0
        plan = plan_epoch(
            cost,
            np.ones(len(cost), bool),
            samples.offsets,
            epoch,
            1,
            max(1, workers),
            BatchingConfig(max_frames=40_000),
        )
        for batch in make_loader(samples, plan.ranks[0], None, workers):
            positions += int(batch["code_lens"].sum() + batch["text_lens"].sum())
        seconds = time.perf_counter() - start
        best = max(best, (positions / seconds, seconds / len(samples)))
    return best


def tar_breakdown(root: Path, repeats: int = 3) -> tuple[float, float, int]:
    """(seconds reading the tars' members, seconds also decoding JSON and codes, samples): the
    fastest of `repeats` passes each."""
    tars = sorted(glob.glob(str(root / "webdataset" / "**" / "*.tar"), recursive=True))
    times = []
    for decode in [False] * repeats + [True] * repeats:
        start, samples = time.perf_counter(), 0
        for path in tars:
            with open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
                fields = {}
                for member in tar:
                    fields[member.name.partition(".")[2]] = tar.extractfile(member).read()
                    if len(fields) == 2:
                        if decode:
                            json.loads(fields["json"])
                            schemas.codes_from_npy(fields[schemas.CODES_MEMBER])
                        samples, fields = samples + 1, {}
        times.append(time.perf_counter() - start)
    return min(times[:repeats]), min(times[repeats:]), samples


def h100_need(location: str, group: int) -> float:
    """Positions/s ar-base consumes at 45 % MFU on an H100, at this corpus's batch lengths."""
    samples = open_corpus(location, allow_random_codec=True).samples
    with torch.device("meta"):
        model = ARModel(base(1024, group_size=group))
    text, frames = (
        torch.from_numpy(samples.text_tokens.astype(np.int64)),
        torch.from_numpy(samples.frames.astype(np.int64)),
    )
    positions = float(model.positions(text, frames).sum())
    return TARGET_MFU * H100_PEAK / (model.train_flops(text, frames) / positions)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="out/sample")
    parser.add_argument("--config", default="trainer/configs/ar-tiny.yaml")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--utterances", type=int, default=1600)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "generated"
        generated_corpus(corpus, args.utterances)
        rates = {fmt: epoch_rate(str(corpus), fmt, workers=0) for fmt in ("webdataset", "parquet")}
        read_s, decode_s, n = tar_breakdown(corpus)
        need = {g: h100_need(str(corpus), g) for g in (1, 2)}
        sample_worker, _ = epoch_rate(args.data, "webdataset", workers=1)

        out = Path(tmp) / "run"
        cfg = load_config(
            args.config,
            [
                f"run.out={out}",
                f"run.max_steps={args.steps}",
                f"run.log_every={max(1, args.steps // 3)}",
                "run.eval_every=1000000",
                "run.checkpoint_every=1000000",
            ],
        )
        train(cfg, [args.data], allow_random_codec=True)
        records = [r for r in map(json.loads, (out / "log.jsonl").open()) if "tokens_per_s" in r]
        train_rate = statistics.median(r["tokens_per_s"] for r in records)
        mfu = records[-1]["mfu"]

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    per_worker, per_sample = rates["webdataset"]
    rows = [
        ("device", device),
        (f"one worker, generated corpus ({args.utterances} utt.), webdataset", f"{per_worker:,.0f} positions/s"),
        ("  same, parquet", f"{rates['parquet'][0]:,.0f} positions/s"),
        (
            "  per sample: all / tar reading / JSON + code unpacking / plan + replay + collate",
            f"{per_sample * 1e6:.0f} / {read_s / n * 1e6:.0f} / {(decode_s - read_s) / n * 1e6:.0f} / "
            f"{(per_sample - decode_s / n) * 1e6:.0f} us",
        ),
        (f"one worker, {args.data}, a worker started per 4-batch epoch", f"{sample_worker:,.0f} positions/s"),
        ("ar-base G=1 at 45 % MFU on an H100 consumes", f"{need[1]:,.0f} positions/s"),
        ("ar-base G=2 at 45 % MFU on an H100 consumes", f"{need[2]:,.0f} positions/s"),
        (
            "workers per H100 (webdataset, G=1 / G=2)",
            f"{math.ceil(need[1] / per_worker)} / {math.ceil(need[2] / per_worker)}",
        ),
        (
            f"trainer consumption here ({cfg.model.kind} {cfg.model.preset} G={cfg.model.group_size}, median)",
            f"{train_rate:,.0f} positions/s",
        ),
        ("MFU", "n/a (no GPU peak known)" if mfu is None else f"{mfu:.3f}"),
    ]
    print(
        f"$ python bench/bench_trainer.py --data {args.data} --config {args.config} --steps {args.steps} "
        f"--utterances {args.utterances}"
    )
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
