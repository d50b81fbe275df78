"""CPU tokenization side by side: our pipeline end to end against the simplest lhotse tokenizer.

    python bench/bench_cpu_tokenizer.py                          # a generated 60-minute corpus
    python bench/bench_cpu_tokenizer.py --synthetic-minutes 8 --repeat 2 --peer-autograd
    python bench/bench_cpu_tokenizer.py --dag my.yaml --json rows.json

Both sides tokenize the same cuts of the same audio with the same EnCodec 24 kHz network (its
seeded random init, 6 kbps = 8 codebooks) on the same cores, each in its own process so that its
wall time includes its own start-up:
- ours: `valle-prep run DAG --out OUT --set codec.weights=random`, from nothing to index.json
  (Ray start, copying the archive from its file:// URL, plan, BPE, decode, slice, resample,
  encode, three shard formats, index). Its audio seconds are the kept cuts' (read from the
  shards), and those cuts are what the peer encodes.
- peer: lhotse's public API and the `encodec` package only: a `FeatureExtractor` wrapping
  `EncodecModel.encodec_model_24khz(pretrained=False)` loaded with the same weights, one cut at a
  time under `torch.no_grad()`, the cuts resampled to 24 kHz by lhotse (`cut.resample`), and
  `CutSet.compute_and_store_features(num_jobs=<cores>, storage_type=NumpyFilesWriter)`: one
  process per core with one torch thread each (OMP_NUM_THREADS=1). NumpyFilesWriter because
  codes are discrete (lilcom is lossy; h5py is not installed). lhotse requires
  num_frames = round(samples / 320) of every feature matrix, so, as lifeiteng/vall-e's
  tokenizer does, the peer drops EnCodec's last frame when the cut's last 320-sample hop is less
  than half full (the encoder still computes it). Extracting the FLACs and writing the peer's
  cut manifest is not timed; the peer's run (python start-up to its stored cuts) is.
  `--peer-autograd` adds the same peer without `torch.no_grad()`, as lifeiteng/vall-e runs it.
Every peer run is checked: one stored code matrix per cut, of lhotse's frame count, codes < 1024.
The default size, 60 minutes, amortizes fixed start-up costs (Ray's ~5 s, process spawning,
loading the model in every worker) about as they are at real scale; small corpora flatter the
peer. Runs alternate ours / peer (these machines are noisy); each side's best of --repeat counts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from lhotse import CutSet, MonoCut, NumpyFilesWriter, Recording
from lhotse.features.base import FeatureExtractor, register_extractor
from lhotse.utils import compute_num_frames_from_samples

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tokens/, in the peer's spawned workers too

RATE, HOP, CODEBOOKS, CODEBOOK_SIZE = 24000, 320, 8, 1024


@dataclass
class EncodecCodesConfig:
    weights: str = ""  # a torch.save'd state dict of encodec_model_24khz
    bandwidth: float = 6.0
    autograd: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict) -> EncodecCodesConfig:
        return EncodecCodesConfig(**data)


@register_extractor
class EncodecCodes(FeatureExtractor):
    """EnCodec codes as lhotse features: (frames, 8) per cut, one cut per call."""

    name = "encodec-codes"
    config_type = EncodecCodesConfig
    _model = None  # one per process, built at its first cut

    @property
    def frame_shift(self) -> float:
        return HOP / RATE

    def feature_dim(self, sampling_rate: int) -> int:
        return CODEBOOKS

    def model(self):
        if EncodecCodes._model is None:
            import torch

            from tokens.stack import encodec_model_class  # encodec, without importing torchaudio

            torch.set_num_threads(1)
            model = encodec_model_class().encodec_model_24khz(pretrained=False)
            model.load_state_dict(torch.load(self.config.weights, weights_only=True))
            model.set_target_bandwidth(self.config.bandwidth)
            EncodecCodes._model = model.eval()
        return EncodecCodes._model

    def extract(self, samples: np.ndarray, sampling_rate: int) -> np.ndarray:
        import torch

        assert sampling_rate == RATE, f"resample the cuts to {RATE} Hz first, got {sampling_rate}"
        x = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)).reshape(1, 1, -1)
        with contextlib.nullcontext() if self.config.autograd else torch.no_grad():
            codes = self.model().encode(x)[0][0][0]  # (8, ceil(samples / 320))
        frames = lhotse_frames(x.shape[-1])
        return codes[:, :frames].T.numpy()


def lhotse_frames(samples: int) -> int:
    return compute_num_frames_from_samples(samples, HOP / RATE, RATE)


def peer_main(cuts: Path, storage: Path, jobs: int, weights: Path, autograd: bool) -> None:
    """The peer's timed process: lhotse cuts in, their codes stored, the coded cuts written."""
    import torch

    torch.set_num_threads(1)
    extractor = EncodecCodes(EncodecCodesConfig(weights=str(weights), autograd=autograd))
    done = (
        CutSet.from_file(cuts)
        .resample(RATE)
        .compute_and_store_features(
            extractor, storage, num_jobs=jobs, storage_type=NumpyFilesWriter, progress_bar=False
        )
    )
    done.to_file(storage / "cuts.jsonl.gz")


def save_weights(path: Path) -> str:
    """The seeded random EnCodec that `codec.weights=random` builds, as a state dict file."""
    import torch

    from tokens.codec_settings import CodecConfig
    from tokens.codec_weights import load_model

    model, weights = load_model(CodecConfig(weights="random", device="cpu"))
    torch.save(model.state_dict(), path)
    return weights.sha256


def kept_cuts(out: Path) -> list[dict]:
    """id, recording_id, start and duration (seconds present) of every cut a built corpus holds."""
    shards = json.loads((out / "index.json").read_text())["shards"]
    cols = ["id", "recording_id", "start", "duration"]
    if any(s["format"] == "parquet" for s in shards):
        import pyarrow.parquet as pq

        tables = [pq.read_table(out / s["path"], columns=cols) for s in shards if s["format"] == "parquet"]
        return [row for table in tables for row in table.to_pylist()]
    cuts = []
    for s in shards:
        if s["format"] == "webdataset":
            with tarfile.open(out / s["path"]) as tar:
                cuts += [{k: json.load(tar.extractfile(m))[k] for k in cols} for m in tar if m.name.endswith(".json")]
    if not cuts:
        raise SystemExit(f"{out}: no parquet or webdataset shards to read the kept cuts from (output.formats)")
    return cuts


def peer_inputs(cuts: list[dict], archives: list[Path], folder: Path) -> Path:
    """The FLACs the cuts need, out of the audio tars, and a lhotse cut manifest over them."""
    wanted = {c["recording_id"] + ".flac" for c in cuts}
    audio = folder / "audio"
    for archive in archives:
        with tarfile.open(archive) as tar:
            for member in tar:
                if member.name in wanted:
                    tar.extract(member, audio, filter="data")
    missing = sorted(m for m in wanted if not (audio / m).is_file())
    if missing:
        raise SystemExit(f"{len(missing)} recordings not found in {[str(a) for a in archives]}, e.g. {missing[0]}")
    recs = {m[:-5]: Recording.from_file(audio / m, recording_id=m[:-5]) for m in sorted(wanted)}
    path = folder / "cuts.jsonl.gz"
    CutSet.from_cuts(
        MonoCut(id=c["id"], start=c["start"], duration=c["duration"], channel=0, recording=recs[c["recording_id"]])
        for c in cuts
    ).to_file(path)
    return path


def run_peer(cuts: Path, storage: Path, jobs: int, weights: Path, autograd: bool = False) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--peer-only", str(cuts), str(storage), "--jobs", str(jobs)]
    cmd += ["--weights", str(weights)] + ["--peer-autograd"] * autograd
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if done.returncode:
        raise SystemExit(f"the peer failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return wall


def check_peer(cuts: Path, storage: Path) -> int:
    """Fail loudly unless the peer stored one (frames, 8) code matrix per cut; its frame total."""
    samples = {c.id: c.resample(RATE).num_samples for c in CutSet.from_file(cuts)}
    coded = storage / "cuts.jsonl.gz"
    done = {c.id: c for c in CutSet.from_file(coded) if c.has_features} if coded.is_file() else {}
    if set(done) != set(samples):
        raise SystemExit(f"the peer stored codes for {len(set(done) & set(samples))} of {len(samples)} cuts")
    total = 0
    for cut_id, n in samples.items():
        codes, frames = done[cut_id].features.load(), lhotse_frames(n)
        if codes.shape != (frames, CODEBOOKS) or math.ceil(n / HOP) - frames not in (0, 1):
            raise SystemExit(f"{cut_id}: codes of shape {codes.shape}, not ({frames}, {CODEBOOKS}) for {n} samples")
        if codes.min() < 0 or codes.max() >= CODEBOOK_SIZE:
            raise SystemExit(f"{cut_id}: codes outside [0, {CODEBOOK_SIZE})")
        total += frames
    return total


def run_ours(dag: Path, out: Path) -> float:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "pipeline.cli", "run", str(dag), "--out", str(out)]
    cmd += ["--set", "codec.weights=random", "--no-progress"]
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if done.returncode:
        raise SystemExit(f"valle-prep run failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dag", help="an existing DAG (parquet or webdataset output) instead of a generated one")
    parser.add_argument("--synthetic-minutes", type=float, default=60, help="size of the generated corpus")
    parser.add_argument("--repeat", type=int, default=1, help="runs per side, alternating; the best counts")
    cores = len(os.sched_getaffinity(0))
    parser.add_argument("--jobs", type=int, default=cores, help="peer processes (default: the cores)")
    parser.add_argument("--peer-autograd", action="store_true", help="also the peer without torch.no_grad()")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--peer-only", nargs=2, type=Path, metavar=("CUTS", "STORAGE"), help=argparse.SUPPRESS)
    parser.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer_only:
        return peer_main(*args.peer_only, args.jobs, args.weights, args.peer_autograd)

    from bench_pipeline import synthetic_dag  # only here: the peer's workers re-import this file

    dag = Path(args.dag) if args.dag else synthetic_dag(args.synthetic_minutes)
    work = Path(tempfile.mkdtemp(prefix="valle-bench-tokenizer-"))
    weights = work / "encodec-random.pt"
    sha256 = save_weights(weights)
    sides = ["ours", "peer"] + ["peer, autograd"] * args.peer_autograd
    walls: dict[str, list[float]] = {side: [] for side in sides}
    cuts = inputs = None
    for i in range(args.repeat):
        out = work / f"ours-{i}"
        walls["ours"].append(run_ours(dag, out))
        index = json.loads((out / "index.json").read_text())
        if index["provenance"]["codec"]["weights_sha256"] != sha256:
            raise SystemExit("ours and the peer would run different weights")
        kept = kept_cuts(out)
        if cuts is None:
            cuts, inputs = kept, peer_inputs(kept, sorted((out / "downloads").glob("*.tar")), work / "peer-in")
        elif sorted(c["id"] for c in kept) != sorted(c["id"] for c in cuts):
            raise SystemExit("two runs of ours kept different cuts")
        shutil.rmtree(out)
        for side in sides[1:]:
            storage = work / "peer-out"
            walls[side].append(run_peer(inputs, storage, args.jobs, weights, autograd=side != "peer"))
            check_peer(inputs, storage)
            shutil.rmtree(storage)
    shutil.rmtree(work)
    if not args.dag:
        shutil.rmtree(dag.parent)  # the generated corpus

    audio = sum(c["duration"] for c in cuts)
    peer_rate = audio / min(walls["peer"])
    rows = [
        {"path": s, "audio_s": audio, "wall_s": min(w), "runs_s": w, "rate": audio / min(w)} for s, w in walls.items()
    ]
    for r in rows:
        r["ratio"] = r["rate"] / peer_rate
    print(f"$ python bench/bench_cpu_tokenizer.py {' '.join(sys.argv[1:])}")
    print(f"{len(cuts)} cuts, {audio:.1f} s of audio, {args.jobs} cores (peer: {args.jobs} processes x 1 thread)\n")
    print("| path | audio s | wall s | audio s per s | ratio to peer |\n|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['path']} | {r['audio_s']:.1f} | {r['wall_s']:.1f} | {r['rate']:.2f} | {r['ratio']:.2f} |")
    print(f"\nours / peer = {rows[0]['ratio']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
