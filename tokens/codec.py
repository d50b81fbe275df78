"""EnCodec 24 kHz at 6 kbps: mono waveforms in, discrete codes out.

In:  float32 mono 24 kHz waveforms (1-D numpy arrays, any lengths).
Out: one uint16 array per waveform, shape (n_q, num_frames(len)) = (8, ceil(len / 320)) at
     6 kbps, values in [0, 1024), in input order; plus `CodecWeights`, the provenance of the
     weights that made them (kind, a hash of the state dict, where they came from).

Weights (`CodecConfig.weights`):
- "pretrained": the official checkpoint, downloaded once (resumable, sha256-verified) into the
  cache dir, loaded with `torch.load(..., weights_only=True)`.
- "auto": pretrained if it is cached or can be downloaded, else random (with a loud warning).
- "random": a deterministic random init (same seed, same weights, every process): for tests and
  for dry runs where nobody needs meaningful codes.
- a path: a local EnCodec 24 kHz state dict (e.g. the official file copied by hand).
Codec workers do not resolve weights themselves: they get the driver's state dict and check it.

What the codes are, exactly: each utterance is zero-padded at the end to whole frames (a multiple
of 320 samples, and at least MIN_FRAMES frames), encoded, and trimmed to ceil(len / 320) frames.
The model is causal except for one detail: its convolutions pad on the left by *reflection*, so
the first outputs of a layer peek up to `kernel - 1` steps ahead. Within an utterance of at least
MIN_FRAMES frames that peek stays inside the utterance's own (padded) samples, so what follows it
in a batch cannot change its codes: batched codes equal one-by-one codes bit for bit. For an
utterance of MIN_FRAMES frames or more whose length is a multiple of 320, they also equal
`EncodecModel.encode` on that waveform alone (otherwise encodec pads the end by reflection
instead of zeros, which may change the last frame).
Caveat: float32 kernels are chosen by shape (the LSTM's recurrent step is a matrix-vector
product at batch 1 and a matrix product above; oneDNN convolutions at some thread counts), so
a latent that sits on a near-tie between two codebook entries can round to a different code
in another batch, or with another thread count. The batches of a given list of waves are
deterministic, so re-encoding the same unit with the same settings on the same kind of
machine gives the same codes.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import re
import urllib.parse
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from tokens.constants import CODEBOOK_SIZE, FRAME_RATE, HOP, SAMPLE_RATE
from tokens.stack import encodec_model_class

if TYPE_CHECKING:
    from pipeline.download import Checksum

EncodecModel = encodec_model_class()  # encodec without its torchaudio import (tokens.stack)

log = logging.getLogger("tokens.codec")

ENCODEC_24KHZ_URL = "https://dl.fbaipublicfiles.com/encodec/v0/encodec_24khz-d7cc33bc.th"
# sha256 of that file (93,171,529 bytes). Its first 8 hex digits are the "d7cc33bc" in the file
# name, which is what encodec/torch.hub check; the full digest is the one pinned by several
# independent public projects that verify this exact file.
ENCODEC_24KHZ_SHA256 = "sha256:d7cc33bcf1aad7f2dad9836f36431530744abeace3ca033005e3290ed4fa47bf"

BANDWIDTHS = (1.5, 3.0, 6.0, 12.0, 24.0)  # kbps the 24 kHz model was trained for
# The widest reflect padding (the last conv: kernel 7 at 75 Hz) reads 6 frames ahead: an
# utterance needs 7 frames of its own so that reading never reaches what follows it in a batch.
MIN_FRAMES = 7
RANDOM_INIT_SEED = 20240917


# Numerical modes of the encoder. "exact" is float32 with TF32 off: the reference. The fast modes
# trade a share of codes (measured per codebook by bench/bench_codec_gpu.py) for GPU speed:
# "tf32" lets CUDA matmuls and convolutions use TF32; "bf16" runs the encoder network (convolutions
# and LSTM) under bfloat16 autocast and the quantizer in float32. A mode is an audio setting:
# codes made in different modes are never mixed in one corpus.
PRECISIONS = ("exact", "tf32", "bf16")
# Padded audio seconds per forward pass when codec.batch_seconds is null: a GPU wants large
# batches to stay busy (600 s is ~14 M samples, a few GB of activations); on CPU larger batches
# gain nothing and 120 s keeps the codes of existing CPU corpora unchanged.
DEFAULT_BATCH_SECONDS = {"cpu": 120.0, "cuda": 600.0}


@dataclass
class CodecConfig:
    weights: str = "pretrained"  # "pretrained" | "auto" | "random" | a local checkpoint path
    bandwidth: float = 6.0  # kbps; 6.0 -> 8 codebooks
    device: str = "auto"  # "auto" (cuda if available) | "cpu" | "cuda" | "cuda:N"
    batch_seconds: float | None = None  # padded audio seconds per forward pass; null: by device
    precision: str = "exact"  # one of PRECISIONS
    weights_url: str = ENCODEC_24KHZ_URL
    # "sha256:<hex>" (or "md5:<hex>"). None: only the hub-style 8-hex prefix in the file name (if
    # any) is checked.
    weights_checksum: str | None = ENCODEC_24KHZ_SHA256
    cache_dir: str | None = None  # default $VALLE_CORPUS_CACHE or ~/.cache/valle-corpus
    download_retries: int = 8
    threads: int | None = None  # torch CPU threads; None leaves torch's default alone


def batch_seconds(cfg: CodecConfig, device_type: str) -> float:
    """The padded seconds per forward pass on a device of this type ("cpu" or "cuda")."""
    return cfg.batch_seconds if cfg.batch_seconds is not None else DEFAULT_BATCH_SECONDS[device_type]


@dataclass(frozen=True)
class CodecWeights:
    kind: str  # "pretrained" | "checkpoint" | "random"
    sha256: str  # state_dict_sha256(): identifies the weights whatever file they came from
    source: str  # URL, file path, or how the random init was made
    file_sha256: str | None = None  # sha256 of the checkpoint file's bytes (None for random)


def num_frames(num_samples: int) -> int:
    """Code frames for `num_samples` samples at 24 kHz: ceil(num_samples / 320)."""
    return -(-int(num_samples) // HOP)


def num_codebooks(bandwidth: float) -> int:
    """Codebooks used at `bandwidth` kbps (10 bits x 75 frames/s each): 6.0 -> 8."""
    if float(bandwidth) not in BANDWIDTHS:
        raise ValueError(f"codec bandwidth {bandwidth} kbps is not one of {BANDWIDTHS}")
    return round(bandwidth * 1000 / (FRAME_RATE * 10))


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, raw bytes) of every tensor, sorted by name.

    Unlike a file digest, it does not depend on how the weights were serialized. Raw bytes are
    in the machine's byte order (little-endian on every platform we run on).
    """
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        header = f"{name}\0{t.dtype}\0{tuple(t.shape)}\0{t.numel() * t.element_size()}\0"
        h.update(header.encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cache_dir(cfg: CodecConfig) -> Path:
    root = cfg.cache_dir or os.environ.get("VALLE_CORPUS_CACHE") or "~/.cache/valle-corpus"
    return Path(root).expanduser() / "encodec"


class WeightsUnavailable(RuntimeError):
    """The pretrained checkpoint could not be downloaded or verified."""


def _new_model() -> EncodecModel:
    """The 24 kHz architecture, with encodec's own (random) init from torch's global RNG."""
    with warnings.catch_warnings():
        # encodec uses torch.nn.utils.weight_norm, deprecated in favour of parametrizations;
        # the old one is what the official checkpoint's key names (weight_g/weight_v) match.
        warnings.simplefilter("ignore", FutureWarning)
        return EncodecModel.encodec_model_24khz(pretrained=False)


def _random_model() -> EncodecModel:
    """A deterministic random init whose codes actually vary.

    encodec initializes codebooks to zeros (they are meant to be set by k-means on the first
    training batch), which makes every code 0. So, like that k-means init, fit each codebook
    to the latents of seeded noise: Gaussian with the per-dimension mean/std of what is left for
    that codebook to quantize. That fit runs in float64 and is rounded to float32 at the end:
    in float32 its bits depend on the thread count (parallel reductions), which would give each
    process different weights; float64 differences vanish in the rounding.
    """
    # no_grad, not inference_mode: parameters made under inference_mode could not be used
    # outside it (e.g. moved to another dtype, or fine-tuned).
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(RANDOM_INIT_SEED)
        model = _new_model()  # encodec's init draws uniforms only: the same bits everywhere
        f64 = torch.float64  # also keeps randn off its vectorized float32 path (CPU-specific)
        noise = 0.1 * torch.randn(1, 1, SAMPLE_RATE, dtype=f64)
        residual = copy.deepcopy(model.encoder).to(f64)(noise)[0].T  # (75 frames, 128)
        for layer in model.quantizer.vq.layers:
            book = layer._codebook
            embed = residual.mean(0) + residual.std(0) * torch.randn(CODEBOOK_SIZE, 128, dtype=f64)
            book.embed.copy_(embed.float())  # (1024, 128)
            book.embed_avg.copy_(embed.float())
            embed = book.embed.to(f64)
            dist = (residual**2).sum(1, keepdim=True) - 2 * residual @ embed.T + (embed**2).sum(1)
            residual = residual - embed[dist.argmin(1)]  # what the next codebook has to quantize
    return model


def _load_state(path: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{what} {path} does not exist; check codec.weights") from None
    except Exception as e:  # unreadable, not a torch file, or pickled objects beyond tensors
        raise ValueError(
            f"{what} {path} cannot be read as a tensor state dict with weights_only=True "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            f"expected an EnCodec 24 kHz state dict saved with torch.save(model.state_dict())"
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(
            f"{what} {path} holds a {type(state).__name__}, not a state dict of tensors; "
            f"expected an EnCodec 24 kHz state dict saved with torch.save(model.state_dict())"
        )
    return state


def _model_from_file(path: Path, what: str) -> EncodecModel:
    state = _load_state(path, what)
    model = _new_model()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0:3]
        raise ValueError(
            f"{what} {path} is not an EnCodec 24 kHz state dict ({' '.join(first)[:400]}); "
            f"use the official encodec_24khz checkpoint or one saved from the same architecture"
        ) from None
    return model


def _fetch_pretrained(cfg: CodecConfig) -> tuple[Path, str]:
    """Download (or find in the cache) and verify the checkpoint; returns (path, file sha256)."""
    # The pipeline's resumable downloader, imported only when a checkpoint must be fetched: the
    # trainer reads codes without ever loading it, and synthesis only with pretrained weights.
    from pipeline.download import Checksum, DownloadError, download, is_downloaded

    name = Path(urllib.parse.urlparse(cfg.weights_url).path).name
    dest = cache_dir(cfg) / name
    checksum = Checksum.parse(cfg.weights_checksum) if cfg.weights_checksum else None
    try:
        if dest.is_file() and not is_downloaded(dest, checksum) and _matches(dest, checksum, name):
            pass  # put there by hand and verified: download() would delete a file without marker
        else:
            download(cfg.weights_url, dest, checksum, retries=cfg.download_retries)
    except (DownloadError, OSError) as e:
        raise WeightsUnavailable(
            f"cannot obtain the pretrained EnCodec 24 kHz checkpoint from URL {cfg.weights_url}: "
            f"{e}; put the file at {dest} or use codec.weights=<path>"
        ) from e
    file_sha256 = _file_digest(dest, "sha256")
    if not _matches_digest(file_sha256, checksum, name):
        raise WeightsUnavailable(
            f"{dest} (from {cfg.weights_url}) has sha256 {file_sha256}, which does not match "
            f"{checksum or 'the prefix in its name'}; delete it and run again"
        )
    return dest, file_sha256


def _file_digest(path: Path, algo: str) -> str:
    """Hex digest of a checkpoint file (~90 MB), read in 1 MB blocks."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _hub_prefix(name: str) -> str | None:
    """The torch.hub convention: `<stem>-<first 8+ hex of sha256>.<ext>` carries a digest prefix."""
    m = re.search(r"-([0-9a-f]{8,})\.[^.]+$", name)
    return m.group(1) if m else None


def _matches_digest(file_sha256: str, checksum: Checksum | None, name: str) -> bool:
    if checksum is not None and checksum.algo == "sha256":
        return file_sha256 == checksum.hexdigest
    if checksum is not None:  # md5: download() verified it; nothing more to compare here
        return True
    prefix = _hub_prefix(name)
    if prefix is None:
        log.warning("%s: no checksum configured and none in the file name; NOT verified", name)
        return True
    return file_sha256.startswith(prefix)


def _matches(path: Path, checksum: Checksum | None, name: str) -> bool:
    if checksum is not None and checksum.algo != "sha256":
        return _file_digest(path, checksum.algo) == checksum.hexdigest
    return _matches_digest(_file_digest(path, "sha256"), checksum, name)


def _warn_random(reason: str, sha256: str) -> None:
    bar = "!" * 78
    log.warning(
        "\n%s\n!! EnCodec: the pretrained weights are unavailable:\n!!   %s\n"
        "!! Falling back to RANDOM-INIT weights (codec.weights=auto). The codes written with\n"
        "!! them are MEANINGLESS for training; their provenance says kind='random',\n"
        "!! sha256=%s.\n!! Set codec.weights=pretrained to make this an error instead.\n%s",
        bar, reason, sha256, bar,
    )


def _load_model(cfg: CodecConfig) -> tuple[EncodecModel, CodecWeights]:
    if cfg.weights in ("pretrained", "auto"):
        try:
            # auto exists for offline runs: one quick try, not minutes of backoff.
            fetch_cfg = replace(cfg, download_retries=1) if cfg.weights == "auto" else cfg
            path, file_sha256 = _fetch_pretrained(fetch_cfg)
        except WeightsUnavailable as e:
            if cfg.weights == "pretrained":
                raise
            model, weights = _load_model(CodecConfig(weights="random"))
            _warn_random(str(e), weights.sha256)
            return model, weights
        model = _model_from_file(path, "pretrained EnCodec checkpoint")
        source = cfg.weights_url
        kind = "pretrained"
    elif cfg.weights == "random":
        model, file_sha256 = _random_model(), None
        source = f"random init: seed {RANDOM_INIT_SEED}, torch {torch.__version__}"
        kind = "random"
    else:
        path = Path(cfg.weights).expanduser()
        model = _model_from_file(path, "codec.weights checkpoint")
        file_sha256, source, kind = _file_digest(path, "sha256"), str(path.resolve()), "checkpoint"
    weights = CodecWeights(kind, state_dict_sha256(model.state_dict()), source, file_sha256)
    return model, weights


def resolve_weights(cfg: CodecConfig) -> tuple[dict[str, torch.Tensor], CodecWeights]:
    """The state dict `cfg.weights` names (downloading it if needed) and its provenance."""
    model, weights = _load_model(cfg)
    return model.state_dict(), weights


def _model_from_state(state: dict[str, torch.Tensor], weights: CodecWeights) -> tuple[EncodecModel, CodecWeights]:
    """A model from a state dict resolved elsewhere, checked against the hash it was sent with."""
    digest = state_dict_sha256(state)
    if digest != weights.sha256:
        raise RuntimeError(f"codec weights arrived with sha256 {digest[:12]}, expected "
                           f"{weights.sha256[:12]} ({weights.kind}); they were damaged on the way")
    model = _new_model()
    model.load_state_dict(state, strict=True)
    return model, weights


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"codec.device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"codec.device={name!r} but CUDA is not available here; use auto or cpu")
    return device


def _batches(lengths: list[int], max_samples: int) -> list[list[int]]:
    """Group indices, longest first, so that padded length x count <= max_samples (>= 1 each)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        # The first (longest) member sets the padded length of its batch.
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_samples:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


@dataclass
class PreparedBatches:
    """Waveforms padded into host tensors (pinned for a GPU), ready for `CodecEncoder.run`."""
    lengths: list[int]  # samples of each input waveform, in input order
    batches: list[tuple[list[int], torch.Tensor]]  # (input indices, (B, 1, T) float32 host tensor)


class CodecEncoder:
    """Encodes batches of waveforms; cheap to build and to pickle, `setup()` loads the model.

    `given`: (state dict, CodecWeights) already resolved elsewhere (the driver, through Ray's
    object store), used instead of loading or downloading the weights again; its hash is checked.
    Encoding is two steps so that a worker can overlap them: `prepare` (host: pad into batches,
    pinned memory on a GPU) and `run` (device: copy in without blocking, forward, codes out).
    `run` is not thread-safe: one caller at a time (CodecWorker holds a lock around it).
    """

    def __init__(self, cfg: CodecConfig, given: tuple[dict, CodecWeights] | None = None):
        self.cfg = cfg
        self.n_q = num_codebooks(cfg.bandwidth)  # fail early on a bad bandwidth
        if cfg.batch_seconds is not None and cfg.batch_seconds <= 0:
            raise ValueError(f"codec.batch_seconds must be > 0, got {cfg.batch_seconds}")
        if cfg.precision not in PRECISIONS:
            raise ValueError(f"codec.precision must be one of {list(PRECISIONS)}, got {cfg.precision!r}")
        self.weights: CodecWeights | None = None
        self.forward_passes = 0
        self._given = given
        self._model: EncodecModel | None = None
        self._device: torch.device | None = None

    def __getstate__(self) -> dict:
        # Ship the config, not the model: the receiving worker calls setup() itself.
        return {**self.__dict__, "_model": None, "_device": None, "weights": None, "_given": None}

    @property
    def device(self) -> torch.device:
        self.setup()
        return self._device

    def setup(self) -> None:
        if self._model is not None:
            return
        if self.cfg.threads is not None:
            torch.set_num_threads(self.cfg.threads)
        device = _device(self.cfg.device)
        if device.type == "cuda":
            # Per-shape autotuning makes the numbers depend on the batch, TF32 on the mode; this
            # process is the encoder's own (a Ray actor), so changing these globals is ours to do.
            fast = self.cfg.precision == "tf32"
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.allow_tf32 = fast
            torch.backends.cuda.matmul.allow_tf32 = fast
        elif self.cfg.precision == "tf32":
            log.warning("codec.precision=tf32 only changes CUDA kernels; on %s the codes are exact", device)
        if self._given is not None:
            model, self.weights = _model_from_state(*self._given)
            self._given = None  # the model holds its own copy now
        else:
            model, self.weights = _load_model(self.cfg)
        model.set_target_bandwidth(self.cfg.bandwidth)
        self._model, self._device = model.to(device).eval(), device
        log.info("EnCodec 24 kHz on %s (%s): %s weights sha256=%s (%s)", device, self.cfg.precision,
                 self.weights.kind, self.weights.sha256, self.weights.source)

    def encode(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        """float32 mono 24 kHz waveforms -> uint16 codes (n_q, num_frames(len)), same order."""
        return self.run(self.prepare(waves))

    def prepare(self, waves: list[np.ndarray]) -> PreparedBatches:
        """Host work: check the waveforms and pad them, longest first, into batches."""
        self.setup()
        waves = [_as_wave(w, i) for i, w in enumerate(waves)]
        lengths = [len(w) for w in waves]
        padded = [max(num_frames(n), MIN_FRAMES) * HOP for n in lengths]
        todo = [i for i, n in enumerate(lengths) if n > 0]
        max_samples = int(batch_seconds(self.cfg, self._device.type) * SAMPLE_RATE)
        pin = self._device.type == "cuda"  # page-locked, so the copy to the GPU need not block
        batches = []
        for group in _batches([padded[i] for i in todo], max_samples):
            rows = [todo[j] for j in group]
            x = torch.zeros((len(rows), 1, padded[rows[0]]), dtype=torch.float32, pin_memory=pin)
            view = x.numpy()  # (B, 1, T), zero tail
            for row, i in enumerate(rows):
                view[row, 0, : lengths[i]] = waves[i]
            batches.append((rows, x))
        return PreparedBatches(lengths, batches)

    def run(self, prepared: PreparedBatches) -> list[np.ndarray]:
        """Device work: every batch is queued without waiting, then the codes come back at once."""
        self.setup()
        out: list[np.ndarray | None] = [np.zeros((self.n_q, 0), np.uint16) if n == 0 else None
                                        for n in prepared.lengths]
        pending = []
        with torch.inference_mode():
            for rows, x in prepared.batches:
                codes = self._forward(x.to(self._device, non_blocking=True))  # (B, n_q, T / 320)
                # Codes are < 1024: int16 halves (of int32) the bytes copied back.
                host = torch.empty(codes.shape, dtype=torch.int16, pin_memory=self._device.type == "cuda")
                host.copy_(codes.to(torch.int16), non_blocking=True)
                pending.append((rows, host))
                self.forward_passes += 1
            if self._device.type == "cuda":
                torch.cuda.current_stream(self._device).synchronize()
        for rows, host in pending:
            codes = host.numpy().view(np.uint16)
            for row, i in enumerate(rows):
                out[i] = codes[row, :, : num_frames(prepared.lengths[i])].copy()
        return out

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, T) at 24 kHz -> (B, n_q, T / 320) codes: EncodecModel.encode for one segment
        (the 24 kHz model neither splits nor normalizes), with the encoder network under
        autocast in bf16 mode and the quantizer always in float32."""
        model = self._model
        autocast = (torch.autocast(self._device.type, dtype=torch.bfloat16)
                    if self.cfg.precision == "bf16" else contextlib.nullcontext())
        with autocast:
            emb = model.encoder(x)
        codes = model.quantizer.encode(emb.float(), model.frame_rate, model.bandwidth)  # (n_q, B, T)
        return codes.transpose(0, 1)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """(n_q, T) codes -> float32 mono 24 kHz waveform of T * 320 samples (for synthesis)."""
        self.setup()
        x = torch.as_tensor(np.asarray(codes, dtype=np.int64))[None].to(self._device)  # (1, n_q, T)
        with torch.inference_mode():
            wave = self._model.decode([(x, None)])  # (1, 1, samples)
        return wave[0, 0, : x.shape[-1] * HOP].float().cpu().numpy()


def code_agreement(reference: list[np.ndarray], other: list[np.ndarray]) -> list[float]:
    """Share of identical codes per codebook between two encodings of the same waveforms."""
    same = sum((a == b).sum(axis=1) for a, b in zip(reference, other))
    frames = sum(a.shape[1] for a in reference)
    return [float(x) / max(frames, 1) for x in np.atleast_1d(same)]


def _as_wave(wave: np.ndarray, index: int) -> np.ndarray:
    wave = np.asarray(wave)
    if wave.ndim != 1 or not np.issubdtype(wave.dtype, np.floating):
        raise ValueError(
            f"waves[{index}]: expected a 1-D float mono waveform at 24 kHz, got dtype {wave.dtype} "
            f"shape {wave.shape}; downmix to mono, resample to 24 kHz and scale to [-1, 1] first"
        )
    return wave.astype(np.float32, copy=False)
