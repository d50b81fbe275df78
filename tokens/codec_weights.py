"""Codec weights: fetched, checked, or made; and the provenance that names them.

`load_model`, `resolve_weights` and `model_from_state` serve every codec (each backend in
tokens.codecs loads its own); the rest of this module is EnCodec 24 kHz's weights.
In: `CodecConfig.weights`. Out: the model or its state dict, and `CodecWeights` (kind, a hash of
the state dict, where they came from):
- "pretrained": the official checkpoint, downloaded once (storage.download: resumable,
  sha256-verified) into the cache dir, loaded with `torch.load(..., weights_only=True)`;
- "auto": pretrained if it is cached or can be downloaded, else random (with a loud warning);
- "random": a deterministic random init (same seed, same weights, every process): for tests and
  for dry runs where nobody needs meaningful codes;
- a path: a local EnCodec 24 kHz state dict (e.g. the official file copied by hand).
Codec workers do not resolve weights themselves: they get the driver's state dict and check it
against its hash (`model_from_state`).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import re
import urllib.parse
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from storage.download import DownloadError, download, is_downloaded
from storage.hashing import Checksum, hash_file, sha256_file
from tokens.codec_settings import CodecConfig, CodecWeights
from tokens.codecs import DEFAULT_CODEC, SPECS
from tokens.stack import encodec_model_class

ENCODEC = SPECS[DEFAULT_CODEC]

EncodecModel = encodec_model_class()  # encodec without its torchaudio import (tokens.stack)

log = logging.getLogger(__name__)

RANDOM_INIT_SEED = 20240917


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


def cache_dir(cfg: CodecConfig, library: str = "encodec") -> Path:
    root = cfg.cache_dir or os.environ.get("VALLE_CORPUS_CACHE") or "~/.cache/valle-corpus"
    return Path(root).expanduser() / library


class WeightsUnavailable(RuntimeError):
    """The pretrained checkpoint could not be downloaded or verified."""


def new_model() -> EncodecModel:
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
        model = new_model()  # encodec's init draws uniforms only: the same bits everywhere
        f64 = torch.float64  # also keeps randn off its vectorized float32 path (CPU-specific)
        noise = 0.1 * torch.randn(1, 1, ENCODEC.sample_rate, dtype=f64)
        residual = copy.deepcopy(model.encoder).to(f64)(noise)[0].T  # (75 frames, 128)
        for layer in model.quantizer.vq.layers:
            book = layer._codebook
            embed = residual.mean(0) + residual.std(0) * torch.randn(ENCODEC.codebook_size, 128, dtype=f64)
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
    model = new_model()
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
    file_sha256 = sha256_file(dest)
    if not _matches_digest(file_sha256, checksum, name):
        raise WeightsUnavailable(
            f"{dest} (from {cfg.weights_url}) has sha256 {file_sha256}, which does not match "
            f"{checksum or 'the prefix in its name'}; delete it and run again"
        )
    return dest, file_sha256


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
        return hash_file(path, checksum.algo) == checksum.hexdigest
    return _matches_digest(sha256_file(path), checksum, name)


def warn_random(codec: str, reason: str, sha256: str) -> None:
    bar = "!" * 78
    log.warning(
        "\n%s\n!! %s: the pretrained weights are unavailable:\n!!   %s\n"
        "!! Falling back to RANDOM-INIT weights (codec.weights=auto). The codes written with\n"
        "!! them are MEANINGLESS for training; their provenance says kind='random',\n"
        "!! sha256=%s.\n!! Set codec.weights=pretrained to make this an error instead.\n%s",
        bar,
        codec,
        reason,
        sha256,
        bar,
    )


def load_model(cfg: CodecConfig):
    """The model `cfg` names, ready to encode at its codebooks, and its weights' provenance."""
    from tokens.codecs import backend

    return backend(cfg.name).load(cfg)


def load_encodec(cfg: CodecConfig) -> tuple[EncodecModel, CodecWeights]:
    if cfg.weights in ("pretrained", "auto"):
        try:
            # auto exists for offline runs: one quick try, not minutes of backoff.
            fetch_cfg = replace(cfg, download_retries=1) if cfg.weights == "auto" else cfg
            path, file_sha256 = _fetch_pretrained(fetch_cfg)
        except WeightsUnavailable as e:
            if cfg.weights == "pretrained":
                raise
            model, weights = load_encodec(CodecConfig(weights="random"))
            warn_random("EnCodec", str(e), weights.sha256)
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
        file_sha256, source, kind = sha256_file(path), str(path.resolve()), "checkpoint"
    weights = CodecWeights(kind, state_dict_sha256(model.state_dict()), source, file_sha256)
    return model, weights


def resolve_weights(cfg: CodecConfig) -> tuple[dict[str, torch.Tensor], CodecWeights]:
    """The state dict `cfg.weights` names (downloading it if needed) and its provenance."""
    model, weights = load_model(cfg)
    return model.state_dict(), weights


def model_from_state(state: dict[str, torch.Tensor], weights: CodecWeights, cfg: CodecConfig):
    """`cfg`'s model from a state dict resolved elsewhere, checked against the hash it was sent with."""
    from tokens.codecs import backend

    digest = state_dict_sha256(state)
    if digest != weights.sha256:
        raise RuntimeError(
            f"codec weights arrived with sha256 {digest[:12]}, expected "
            f"{weights.sha256[:12]} ({weights.kind}); they were damaged on the way"
        )
    return backend(cfg.name).from_state(state, weights, cfg), weights
