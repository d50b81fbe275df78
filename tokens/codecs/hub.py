"""Weights of the codecs transformers ships (DAC, Mimi): from the model hub, a local folder, or
a seeded random init; and the provenance that names them, as EnCodec's (tokens.codec_weights).

- "pretrained": `from_pretrained(<hub repo>)` into `<cache>/huggingface` (the hub verifies what
  it downloads; the commit is recorded in the weights' source, the safetensors file's sha256 as
  their file_sha256);
- "auto": pretrained if it is cached or can be downloaded, else random (with a loud warning);
- "random": the real architecture, seeded, with its codebooks fitted to noise so that codes vary;
- a folder: what `save_pretrained` wrote (config.json, model.safetensors); refused unless its
  config is this codec's architecture.
Weights load as float32 tensors from safetensors: nothing is unpickled.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from storage.hashing import sha256_file
from tokens.codec_settings import CodecConfig, CodecWeights
from tokens.codec_weights import WeightsUnavailable, cache_dir, state_dict_sha256, warn_random

log = logging.getLogger(__name__)

RANDOM_INIT_SEED = 20261207
PROBE_TIMEOUT_S = 10  # seconds "auto" waits for the model hub to answer


@dataclass(frozen=True)
class HubCodec:
    """One transformers codec: its model class, the exact architecture this project uses it with
    (what a folder's config.json must agree with), and where its pretrained weights live."""

    name: str  # the tokens.codecs name
    model_class: type
    config: object  # a transformers PretrainedConfig of the real architecture
    repo: str  # model hub repository of the pretrained weights
    checked: tuple[str, ...]  # config keys a folder's config.json must share with `config`
    # Makes random-init codes vary (in place); None where the library's init already does.
    fit_random: Callable[[torch.nn.Module], None] | None = None


def load(codec: HubCodec, cfg: CodecConfig) -> tuple[torch.nn.Module, CodecWeights]:
    if cfg.weights in ("pretrained", "auto"):
        try:
            model, snapshot = _from_hub(codec, cfg)
        except WeightsUnavailable as e:
            if cfg.weights == "pretrained":
                raise
            model, weights = load(codec, replace(cfg, weights="random"))
            warn_random(codec.name, str(e), weights.sha256)
            return model, weights
        kind, source = "pretrained", f"https://huggingface.co/{codec.repo} @ {snapshot.name if snapshot else '?'}"
        safetensors = snapshot / "model.safetensors" if snapshot else None
        file_sha256 = sha256_file(safetensors) if safetensors and safetensors.is_file() else None
    elif cfg.weights == "random":
        model = random_model(codec)
        kind, file_sha256 = "random", None
        source = f"random init: seed {RANDOM_INIT_SEED}, torch {torch.__version__}"
    else:
        folder = Path(cfg.weights).expanduser()
        model = _from_folder(codec, folder)
        safetensors = folder / "model.safetensors"
        kind, source = "checkpoint", str(folder.resolve())
        file_sha256 = sha256_file(safetensors) if safetensors.is_file() else None
    model = model.float().eval()
    return model, CodecWeights(kind, state_dict_sha256(model.state_dict()), source, file_sha256)


def from_state(
    codec: HubCodec, state: dict[str, torch.Tensor], weights: CodecWeights, cfg: CodecConfig
) -> torch.nn.Module:
    """The architecture with `state` loaded (strict: every tensor, no other)."""
    model = codec.model_class(codec.config)
    model.load_state_dict(state, strict=True)
    return model.float().eval()


def random_model(codec: HubCodec) -> torch.nn.Module:
    """The real architecture, initialized from a fixed seed (the same weights in every process
    on the same kind of machine), its codebooks fitted to noise (`fit_random`)."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(RANDOM_INIT_SEED)
        model = codec.model_class(codec.config).float().eval()
        if codec.fit_random is not None:
            codec.fit_random(model)
    return model


def fitted_codebook(residual: torch.Tensor, size: int) -> torch.Tensor:
    """(size, dim) float64 entries drawn around seeded latents `residual` (frames, dim): Gaussian
    with their per-dimension mean and std, as a k-means init would place them."""
    return residual.mean(0) + residual.std(0) * torch.randn(size, residual.shape[1], dtype=torch.float64)


def _from_hub(codec: HubCodec, cfg: CodecConfig) -> tuple[torch.nn.Module, Path | None]:
    """The pretrained model and the cache's snapshot folder it came from (named by the commit):
    from the cache if it is there (no network), else downloaded. With
    "auto", one quick look at the hub first: offline, the hub's own retries of a download would
    take half a minute before the fallback to random weights."""
    cache = str(cache_dir(cfg, "huggingface"))
    try:
        model = codec.model_class.from_pretrained(
            codec.repo, cache_dir=cache, local_files_only=True, dtype=torch.float32
        )
    except Exception:  # not cached (or only in part): download
        model = None
    try:
        if model is None:
            if cfg.weights == "auto":
                _reachable(codec.repo)
            model = codec.model_class.from_pretrained(codec.repo, cache_dir=cache, dtype=torch.float32)
    except Exception as e:  # offline, a missing repo, a damaged download: all mean "not here"
        first = str(e).splitlines()[0] if str(e) else ""
        raise WeightsUnavailable(
            f"cannot obtain the pretrained {codec.name} weights from the model hub repo {codec.repo} "
            f"({type(e).__name__}: {first[:300]}); download them elsewhere with "
            f"{codec.model_class.__name__}.from_pretrained({codec.repo!r}).save_pretrained(FOLDER) "
            "and pass codec.weights=FOLDER"
        ) from e
    # The repo's own config.json, not the loaded model's: transformers reads another model's
    # config into this class's (its model_type replaced), which would hide what the repo holds.
    snapshot = _snapshot(codec, cfg)
    config = json.loads((snapshot / "config.json").read_text()) if snapshot else model.config.to_dict()
    _check_config(codec, config, f"the hub repo {codec.repo}")
    return model, snapshot


def _snapshot(codec: HubCodec, cfg: CodecConfig) -> Path | None:
    """The hub cache's snapshot folder `from_pretrained` loaded (its name is the repo's commit)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(codec.repo, "config.json", cache_dir=str(cache_dir(cfg, "huggingface")))
    return Path(found).parent if isinstance(found, str) else None


def _reachable(repo: str) -> None:
    """One HEAD request for the repo's config.json, no retries (raises when the hub cannot be
    reached or has no such repo)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    get_hf_file_metadata(hf_hub_url(repo, "config.json"), timeout=PROBE_TIMEOUT_S, retry_on_errors=False)


def _from_folder(codec: HubCodec, folder: Path) -> torch.nn.Module:
    config_file = folder / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(
            f"codec.weights folder {folder} has no readable config.json ({e}); expected a {codec.name} "
            "model folder as save_pretrained writes it"
        ) from None
    _check_config(codec, config, f"codec.weights folder {folder}")
    try:
        return codec.model_class.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
    except Exception as e:
        raise ValueError(
            f"codec.weights folder {folder} cannot be loaded as {codec.name} "
            f"({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''})"
        ) from None


def _check_config(codec: HubCodec, config: dict, where: str) -> None:
    """Refuse weights of another model, or of this model at other numbers (rate, codebooks)."""
    expected = codec.config.to_dict()
    if config.get("model_type") != expected["model_type"]:
        raise ValueError(
            f"{where} holds a {config.get('model_type')!r} model, not {codec.name} "
            f"(model_type {expected['model_type']!r}); pass weights of {codec.name}, or set codec.name "
            "to the codec these weights are"
        )
    wrong = [f"{k} {config.get(k)!r} (expected {expected[k]!r})" for k in codec.checked if config.get(k) != expected[k]]
    if wrong:
        raise ValueError(f"{where} is a {config['model_type']} model but not {codec.name}: {', '.join(wrong)}")
