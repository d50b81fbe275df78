"""Trainer throughput: the loader alone against what training consumes, side by side in one run.

    python bench/bench_trainer.py --data out/sample [--config trainer/configs/ar-tiny.yaml] [--steps 60]

- loader: batches of whole epochs from the corpus's shards (decode tars, unpack codes, collate),
  in positions (codec frames + text tokens) per second;
- trainer: `valle-train`'s own tokens/s over `--steps` optimizer steps of the config's model on
  this machine (GPU when present, else CPU), and MFU where the GPU's peak is known;
- the padding fraction of the planned batches.
Prints one table and the command that produced it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.config import load_config  # noqa: E402
from trainer.corpus import open_corpus  # noqa: E402
from trainer.train import epoch_loader, train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="out/sample")
    parser.add_argument("--config", default="trainer/configs/ar-tiny.yaml")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(args.config, [f"run.out={out}", f"run.max_steps={args.steps}",
                                        f"run.log_every={max(1, args.steps // 3)}", "run.eval_every=1000000",
                                        "run.checkpoint_every=1000000", f"data.workers={args.workers}"])
        corpus = open_corpus(args.data, fmt=cfg.data.format, allow_random_codec=True)

        positions, padding, seconds = 0.0, [], 0.0
        for epoch in range(3):
            start = time.perf_counter()
            for batch in epoch_loader([corpus], cfg, epoch, world=1, rank=0, workers=args.workers):
                positions += float(batch["code_lens"].sum() + batch["text_lens"].sum())
                padding.append(batch["padding"])
            seconds += time.perf_counter() - start
        loader_rate = positions / seconds

        train(cfg, [args.data], allow_random_codec=True)
        records = [r for r in map(json.loads, Path(out, "log.jsonl").open()) if "tokens_per_s" in r]
        train_rate = statistics.median(r["tokens_per_s"] for r in records)
        mfu = records[-1]["mfu"]

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    rows = [
        ("device", device),
        ("model", f"{cfg.model.kind} {cfg.model.preset} G={cfg.model.group_size}"),
        ("loader (positions/s, 3 epochs)", f"{loader_rate:,.0f}"),
        ("trainer consumption (positions/s, median)", f"{train_rate:,.0f}"),
        ("loader / trainer (goal >= 10)", f"{loader_rate / train_rate:.1f}"),
        ("MFU", "n/a (no GPU peak known)" if mfu is None else f"{mfu:.3f}"),
        ("padding fraction (mean over batches)", f"{statistics.mean(padding):.3f}"),
    ]
    print(f"$ python bench/bench_trainer.py --data {args.data} --config {args.config} --steps {args.steps} "
          f"--workers {args.workers}")
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
