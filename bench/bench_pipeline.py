"""Pipeline throughput against the bare EnCodec encoder, and code bytes per audio second.

    python bench/bench_pipeline.py [--dag dags/sample.yaml] [--repeat 2] [--weights random]
    python bench/bench_pipeline.py --synthetic-minutes 8     # a larger generated look-alike corpus

Side by side in one process on the same cores, alternating, because these machines are noisy:
- bare: the EnCodec encoder alone over the kept utterances of the DAG, already decoded and
  resampled, with the same batch size and thread count as the pipeline's codec worker; timed
  with and without building the model (the pipeline's figure includes its codec worker's load);
- pipeline: `run()` from nothing to index.json against a running Ray cluster (start-up of the
  cluster itself is reported separately), i.e. download, plan, BPE, decode, slice, resample,
  encode, shards and index.
Prints one table; the figures in the issue notes come from it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from itertools import groupby
from pathlib import Path

import ray
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.dag import load_dag  # noqa: E402
from pipeline.encode.segment import segment_recording  # noqa: E402
from pipeline.executors.placement import plan_slots  # noqa: E402
from pipeline.plan.subsets import read_unit_cuts  # noqa: E402
from pipeline.runner import resolve_codec, run  # noqa: E402
from tokens.audio import codec_input  # noqa: E402
from tokens.codec import CodecEncoder  # noqa: E402
from tokens.text import select_text  # noqa: E402


def kept_waves(out: Path, dag, store_dir: Path):
    """The waveforms the pipeline encoded, rebuilt from its plan with the same stage code."""
    from pipeline.fetch.audio_store import TarAudioStore
    from pipeline.plan.subsets import load_plan

    store = TarAudioStore([store_dir / name for name in dag.source.audio_archives])
    waves = []
    for subset in dag.subsets.roles():
        for unit in load_plan(out, subset).units:
            cuts = [c for c in read_unit_cuts(out, unit) if select_text(c["texts"], dag.text.field)]
            for _, rec in groupby(cuts, key=lambda c: c["recording_id"]):
                segs, _ = segment_recording(
                    list(rec), store.read_bytes, dag.segment.min_duration, dag.segment.max_duration
                )
                waves += [codec_input(s.audio, s.rate, 24000) for s in segs]
    return waves


def synthetic_dag(minutes: float) -> Path:
    """A generated corpus (speech-like tones, 2-5 s utterances) and a DAG over it, in a temp dir."""
    import yaml

    from sample.lookalike import synthetic_chapters, write_corpus

    root = Path(tempfile.mkdtemp(prefix="valle-bench-corpus-"))
    per_chapter = 10  # utterances of ~3.5 s
    chapters = max(2, round(minutes * 60 / (3.5 * per_chapter)))
    files = write_corpus(
        synthetic_chapters(
            n_speakers=chapters // 2, chapters_per_speaker=2, utterances_per_chapter=per_chapter, seconds=(2.0, 5.0)
        ),
        root,
    )
    dag = yaml.safe_load((Path(__file__).resolve().parents[1] / "dags/sample.yaml").read_text())
    dag["source"] = {
        "manifest_base_url": (root / "manifests").as_uri() + "/",
        "audio_base_url": (root / "audio").as_uri() + "/",
        "audio_archives": ["small.tar"],
        "checksums": None,
    }
    dag["subsets"] = {"train": sorted(files.manifests)}
    dag["plan"]["unit_hours"] = 0.05
    path = root / "bench.yaml"
    path.write_text(yaml.safe_dump(dag))
    return path


def code_bytes(out: Path, index: dict) -> dict:
    seconds = sum(s["hours"] for s in index["subsets"].values()) * 3600
    codes = sum(
        m.size
        for s in index["shards"]
        if s["format"] == "webdataset"
        for m in tarfile.open(out / s["path"])
        if m.name.endswith(".codes.npy")
    )
    per_format = {
        f: sum(s["bytes"] for s in index["shards"] if s["format"] == f) / seconds
        for f in ("webdataset", "parquet", "lhotse_shar")
    }
    return {"seconds": seconds, "codes_Bps": codes / seconds, **{f"{k}_Bps": v for k, v in per_format.items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dag", default="dags/sample.yaml")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--weights", default="random", help="codec.weights for both sides")
    parser.add_argument(
        "--synthetic-minutes",
        type=float,
        default=0,
        help="instead of --dag, generate a Libriheavy look-alike of about this much speech",
    )
    args = parser.parse_args()
    if args.synthetic_minutes:
        args.dag = str(synthetic_dag(args.synthetic_minutes))

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    t0 = time.perf_counter()
    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray_start = time.perf_counter() - t0

    work = Path(tempfile.mkdtemp(prefix="valle-bench-"))
    dag = load_dag(args.dag, [f"codec.weights={args.weights}"], out=str(work / "warmup"))
    run(dag, progress=False)  # fetches the sources once; later runs reuse them
    waves = kept_waves(dag.out, dag, dag.out / "downloads")
    audio_seconds = sum(len(w) for w in waves) / 24000

    threads = plan_slots(ray.nodes(), False, None, dag.ray.cpus_per_codec_worker, None)[0].threads
    torch.set_num_threads(threads)
    codec_cfg = resolve_codec(dag.codec).cfg

    bare, bare_load, pipe = [], [], []
    for i in range(args.repeat):
        t = time.perf_counter()
        encoder = CodecEncoder(codec_cfg)
        encoder.setup()
        bare_load.append(time.perf_counter() - t)
        t = time.perf_counter()
        encoder.encode(waves)
        bare.append(time.perf_counter() - t)
        bare_load[-1] += bare[-1]
        out = work / f"run{i}"
        dag_i = load_dag(
            args.dag, [f"codec.weights={args.weights}", f"source.download_dir={dag.out / 'downloads'}"], out=str(out)
        )
        t = time.perf_counter()
        result = run(dag_i, progress=False)
        pipe.append(time.perf_counter() - t)
        assert result.encoded == result.units
    sizes = code_bytes(out, result.index)
    ray.shutdown()
    shutil.rmtree(work)

    bare_rate = audio_seconds / statistics.median(bare)
    bare_load_rate = audio_seconds / statistics.median(bare_load)
    pipe_rate = audio_seconds / statistics.median(pipe)
    rows = [
        ("audio encoded (s)", f"{audio_seconds:.1f}"),
        ("codec threads (CPU)", f"{threads} of {os.cpu_count()}"),
        ("ray.init (s, not counted)", f"{ray_start:.1f}"),
        ("bare encode runs (s)", ", ".join(f"{x:.2f}" for x in bare)),
        ("bare load + encode runs (s)", ", ".join(f"{x:.2f}" for x in bare_load)),
        ("pipeline runs (s)", ", ".join(f"{x:.2f}" for x in pipe)),
        ("bare encode (audio s/s, median)", f"{bare_rate:.2f}"),
        ("bare load + encode (audio s/s)", f"{bare_load_rate:.2f}"),
        ("pipeline end to end (audio s/s)", f"{pipe_rate:.2f}"),
        ("ratio pipeline / bare encode", f"{pipe_rate / bare_rate:.2f}"),
        ("ratio pipeline / bare load+encode (goal >= 0.85)", f"{pipe_rate / bare_load_rate:.2f}"),
        ("codes bytes per audio s, .npy members (bench_code_bytes.py: per format)", f"{sizes['codes_Bps']:.0f}"),
        ("webdataset shard bytes per audio s", f"{sizes['webdataset_Bps']:.0f}"),
        ("parquet shard bytes per audio s", f"{sizes['parquet_Bps']:.0f}"),
        ("lhotse_shar shard bytes per audio s (cuts + codes)", f"{sizes['lhotse_shar_Bps']:.0f}"),
    ]
    print(f"$ python bench/bench_pipeline.py --dag {args.dag} --repeat {args.repeat} --weights {args.weights}")
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print(json.dumps({"bare_s": bare, "bare_load_s": bare_load, "pipeline_s": pipe, "audio_s": audio_seconds, **sizes}))


if __name__ == "__main__":
    main()
