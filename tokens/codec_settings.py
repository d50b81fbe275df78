"""Codec settings and numbers, without torch: what the DAG loader, the planner and unit tasks
need to know about the codec without loading it.

In: a `CodecConfig` (the DAG's `codec:` section; `name` picks one of tokens.codecs.SPECS). Out:
its checks (`problems`), the codebooks it uses, the padded seconds per forward pass on a device,
the record index.json and the audio settings keep of it, and `CodecWeights`, the provenance of
the weights that made a corpus's codes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from storage.hashing import Checksum
from storage.settings import Problems, positive
from tokens.codecs import DEFAULT_CODEC, SPECS, CodecSpec, spec

ENCODEC_24KHZ_URL = "https://dl.fbaipublicfiles.com/encodec/v0/encodec_24khz-d7cc33bc.th"
# sha256 of that file (93,171,529 bytes). Its first 8 hex digits are the "d7cc33bc" in the file
# name, which is what encodec/torch.hub check; the full digest is the one pinned by several
# independent public projects that verify this exact file.
ENCODEC_24KHZ_SHA256 = "sha256:d7cc33bcf1aad7f2dad9836f36431530744abeace3ca033005e3290ed4fa47bf"

BANDWIDTHS = (1.5, 3.0, 6.0, 12.0, 24.0)  # kbps EnCodec 24 kHz was trained for
DEFAULT_BANDWIDTH = 6.0
# EnCodec's widest reflect padding (the last conv: kernel 7 at 75 Hz) reads 6 frames ahead: an
# utterance needs 7 frames of its own so that reading never reaches what follows it in a batch.
MIN_FRAMES = SPECS[DEFAULT_CODEC].min_frames
WEIGHT_KINDS = ("pretrained", "auto", "random")  # or a checkpoint path

# Numerical modes of the encoder. "exact" is float32 with TF32 off: the reference. The fast modes
# trade a share of codes (measured per codebook by bench/bench_codec_gpu.py) for GPU speed:
# "tf32" lets CUDA matmuls and convolutions use TF32; "bf16" runs the encoder network (convolutions
# and LSTM) under bfloat16 autocast and the quantizer in float32. A mode is an audio setting:
# codes made in different modes are never mixed in one corpus.
PRECISIONS = ("exact", "tf32", "bf16")
# Padded audio seconds per forward pass when codec.batch_seconds is null: a GPU wants large
# batches to stay busy (600 s is ~14 M samples, a few GB of activations). On CPU 0 means one
# utterance per pass, in parallel lanes of one thread each (tokens.codec): as fast as the best
# batch measured (5 s; 120 s batches were half as fast: docs/benchmarks.md), and no padding.
DEFAULT_BATCH_SECONDS = {"cpu": 0.0, "cuda": 600.0}
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


@dataclass
class CodecConfig:
    name: str = DEFAULT_CODEC  # one of tokens.codecs.SPECS
    # "pretrained" | "auto" | "random" | a local checkpoint: EnCodec's state dict file, or the
    # folder of a transformers codec (config.json + model.safetensors)
    weights: str = "pretrained"
    bandwidth: float = DEFAULT_BANDWIDTH  # EnCodec's kbps; 6.0 -> 8 codebooks
    codebooks: int | None = None  # codebooks used; null: the codec's default (EnCodec: by bandwidth)
    device: str = "auto"  # "auto" (cuda if available) | "cpu" | "cuda" | "cuda:N"
    batch_seconds: float | None = None  # padded audio seconds per forward pass; null: by device
    precision: str = "exact"  # one of PRECISIONS
    weights_url: str = ENCODEC_24KHZ_URL  # EnCodec's; the others come from their model hub repo
    # "sha256:<hex>" (or "md5:<hex>"). None: only the hub-style 8-hex prefix in the file name (if
    # any) is checked.
    weights_checksum: str | None = ENCODEC_24KHZ_SHA256
    cache_dir: str | None = None  # default $VALLE_CORPUS_CACHE or ~/.cache/valle-corpus
    download_retries: int = 8
    # CPU: lanes, i.e. forward passes at once, one torch thread each (null: one per core); GPU:
    # torch's threads for host-side work (null: torch's default)
    threads: int | None = None

    @property
    def spec(self) -> CodecSpec:
        return spec(self.name)

    def problems(self) -> Problems:
        if self.name not in SPECS:
            yield "name", f"{self.name!r} is not a codec; use one of {sorted(SPECS)}"
            return
        yield from self._codebook_problems()
        if not _DEVICE.match(self.device):
            yield "device", f"must be auto, cpu, cuda or cuda:N, got {self.device!r}"
        yield from positive(self.batch_seconds, "batch_seconds", optional=True)
        if self.precision not in PRECISIONS:
            yield "precision", f"must be one of {list(PRECISIONS)}, got {self.precision!r}"
        yield from self._weights_problems()
        if not re.match(r"^(https?|file)://", self.weights_url):
            yield "weights_url", f"must be an http(s):// or file:// URL, got {self.weights_url!r}"
        if self.weights_checksum is not None:
            try:
                Checksum.parse(self.weights_checksum)
            except ValueError as err:
                yield "weights_checksum", f"is not a checksum: {err}"
        yield from positive(self.download_retries, "download_retries")
        yield from positive(self.threads, "threads", optional=True)

    def _codebook_problems(self) -> Problems:
        if self.name == DEFAULT_CODEC:
            if self.bandwidth not in BANDWIDTHS:
                yield "bandwidth", f"must be one of {list(BANDWIDTHS)} (kbps; 6.0 = 8 codebooks), got {self.bandwidth}"
            elif self.codebooks is not None and self.codebooks != num_codebooks(self.bandwidth):
                yield (
                    "codebooks",
                    (
                        f"{self.codebooks} disagrees with bandwidth {self.bandwidth} kbps "
                        f"({num_codebooks(self.bandwidth)} codebooks); EnCodec's is set by codec.bandwidth"
                    ),
                )
            return
        if self.bandwidth != DEFAULT_BANDWIDTH:
            yield "bandwidth", f"is EnCodec's setting; {self.name} uses codec.codebooks (1..{self.spec.max_codebooks})"
        if self.codebooks is not None and not 1 <= self.codebooks <= self.spec.max_codebooks:
            yield "codebooks", f"must be 1..{self.spec.max_codebooks} for {self.name}, got {self.codebooks}"
        for key in ("weights_url", "weights_checksum"):
            if getattr(self, key) != getattr(CodecConfig, key):
                yield key, f"is EnCodec's; {self.name} weights come from its model hub repo or a local folder"

    def _weights_problems(self) -> Problems:
        if self.weights in WEIGHT_KINDS:
            return
        path = Path(self.weights)
        if self.name == DEFAULT_CODEC and not path.is_file():
            yield "weights", f"{self.weights!r} is not pretrained, auto, random or an existing checkpoint file"
        elif self.name != DEFAULT_CODEC and not (path / "config.json").is_file():
            yield (
                "weights",
                (
                    f"{self.weights!r} is not pretrained, auto, random or a {self.name} model folder "
                    "(config.json and model.safetensors, as save_pretrained writes them)"
                ),
            )


@dataclass(frozen=True)
class CodecWeights:
    kind: str  # "pretrained" | "checkpoint" | "random"
    sha256: str  # state_dict_sha256(): identifies the weights whatever file they came from
    source: str  # URL, file path, or how the random init was made
    file_sha256: str | None = None  # sha256 of the checkpoint file's bytes (None for random)


def batch_seconds(cfg: CodecConfig, device_type: str) -> float:
    """The padded seconds per forward pass on a device of this type ("cpu" or "cuda")."""
    return cfg.batch_seconds if cfg.batch_seconds is not None else DEFAULT_BATCH_SECONDS[device_type]


def num_frames(num_samples: int) -> int:
    """EnCodec code frames for `num_samples` samples at 24 kHz: ceil(num_samples / 320)."""
    return SPECS[DEFAULT_CODEC].num_frames(num_samples)


def num_codebooks(bandwidth: float) -> int:
    """EnCodec codebooks used at `bandwidth` kbps (10 bits x 75 frames/s each): 6.0 -> 8."""
    if float(bandwidth) not in BANDWIDTHS:
        raise ValueError(f"codec bandwidth {bandwidth} kbps is not one of {BANDWIDTHS}")
    return round(bandwidth * 1000 / (SPECS[DEFAULT_CODEC].frame_rate * 10))


def codebooks_of(cfg: CodecConfig) -> int:
    """The codebooks `cfg` uses (raises UnknownCodec / ValueError on a bad setting)."""
    if cfg.name == DEFAULT_CODEC:
        return num_codebooks(cfg.bandwidth)
    codec = spec(cfg.name)
    n = codec.default_codebooks if cfg.codebooks is None else cfg.codebooks
    if not 1 <= n <= codec.max_codebooks:
        raise ValueError(f"codec.codebooks must be 1..{codec.max_codebooks} for {cfg.name}, got {n}")
    return n


def codec_record(cfg: CodecConfig) -> dict:
    """What index.json's provenance says of the codec, besides its weights: its name as `model`,
    and the numbers a reader and the trainer size things by."""
    codec, codebooks = spec(cfg.name), codebooks_of(cfg)
    return {
        "model": codec.name,
        "sample_rate": codec.sample_rate,
        "bandwidth_kbps": cfg.bandwidth if cfg.name == DEFAULT_CODEC else codec.kbps(codebooks),
        "codebooks": codebooks,
        "codebook_size": codec.codebook_size,
        "frame_rate": codec.frame_rate,
    }


def audio_codec_settings(cfg: CodecConfig) -> dict:
    """The codec's part of the audio settings (which key every unit's codes), before weights.
    EnCodec's predates the other codecs and keeps its keys: its corpora stay current."""
    if cfg.name == DEFAULT_CODEC:
        return {"model": cfg.name, "bandwidth": cfg.bandwidth}
    return {"model": cfg.name, "codebooks": codebooks_of(cfg)}


# What a codec worker records of its device beyond its type (CodecWorker.stack): a GPU's model
# and compute capability ("9.0"), a CPU's vector instruction set as torch dispatches on it
# ("AVX512", "AVX2": kernels of other widths sum in another order). Stacks recorded before these
# were lack them and name only the device type.
DEVICE_FIELDS = ("gpu", "capability", "cpu")


def describe_stack(stack: dict) -> str:
    """A codec worker's compute stack in words: 'cuda (NVIDIA H100 80GB HBM3, compute capability
    9.0, torch 2.14.1+cu130, cuDNN 91002, exact)'; a CPU's: 'cpu (AVX512, one utterance, 1 thread,
    FastELU, torch 2.14.1, exact)'."""
    parts = [stack[k] for k in ("gpu", "cpu", "cpu_pass") if stack.get(k)]
    parts += [f"compute capability {stack['capability']}"] if stack.get("capability") else []
    parts += [f"torch {stack['torch']}"] + ([f"cuDNN {stack['cudnn']}"] if stack.get("cudnn") else [])
    return f"{stack['device']} ({', '.join(parts + [stack['precision']])})"


def unnamed_device(recorded: dict) -> bool:
    """True for a stack recorded before devices were named: it names no GPU model or CPU
    instruction set."""
    return not any(k in recorded for k in DEVICE_FIELDS)


def same_stack(stack: dict, recorded: dict) -> bool:
    """True when a codec worker's `stack` is the `recorded` one. A stack recorded before devices
    were named matches any model of the same device type with the same torch, cuDNN and
    precision: refusing every re-run of such a corpus would be spurious, and which model made
    its codes is not known."""
    if unnamed_device(recorded):
        stack = {k: v for k, v in stack.items() if k not in DEVICE_FIELDS}
    return stack == recorded
