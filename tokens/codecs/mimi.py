"""Mimi (Kyutai, transformers' MimiModel) as a tokens.codecs backend.

12.5 frames/s (hop 1,920 at 24 kHz), 32 codebooks of 2,048 entries; the first is distilled from
WavLM (semantic), the rest are acoustic. 8 codebooks (1.1 kbps) is what Moshi uses. Its encoder
is causal (convolutions padded on the left, a causal transformer), so what follows an utterance
in a batch never reaches its codes: batched codes equal one-by-one codes, and `MimiModel.encode`
of the utterance alone when its length is a whole number of frames (the float caveat of
tokens.codec applies).
"""

from __future__ import annotations

import copy
import functools

import torch
from transformers import MimiConfig, MimiModel

from tokens.codecs import hub

CONFIG = MimiConfig()  # transformers' defaults are kyutai/mimi's architecture


def _fit_random(model: MimiModel) -> None:
    """Mimi's codebooks start at zero (every code 0): place each one's entries around what is
    left for it to quantize of seeded noise, codebook by codebook. In float64, on copies of the
    encoder and projections: float32 sums change with the thread count, and so would the weights."""
    f64 = torch.float64
    noise = 0.1 * torch.randn(1, 1, 4 * CONFIG.sampling_rate, dtype=f64)
    latents = copy.deepcopy(model.encoder).to(f64)(noise).latents  # (1, 512, 50 frames)
    quantizer = model.quantizer
    for rvq in (quantizer.semantic_residual_vector_quantizer, quantizer.acoustic_residual_vector_quantizer):
        residual = copy.deepcopy(rvq.input_proj).to(f64)(latents)[0].T  # (frames, 256)
        for layer in rvq.layers:
            book = layer.codebook
            book.embed_sum.copy_(hub.fitted_codebook(residual, CONFIG.codebook_size).float())
            book.cluster_usage.fill_(1.0)
            book._embed = None  # the cached embed = embed_sum / cluster_usage
            embed = book.embed.to(f64)
            residual = residual - embed[torch.cdist(residual, embed).argmin(1)]


CODEC = hub.HubCodec(
    name="mimi",
    model_class=MimiModel,
    config=CONFIG,
    repo="kyutai/mimi",
    checked=(
        "sampling_rate",
        "upsampling_ratios",
        "codebook_size",
        "codebook_dim",
        "num_quantizers",
        "num_semantic_quantizers",
    ),
    fit_random=_fit_random,
)


load = functools.partial(hub.load, CODEC)
from_state = functools.partial(hub.from_state, CODEC)


def encode(model: MimiModel, x: torch.Tensor, lengths: list[int], codebooks: int, autocast) -> torch.Tensor:
    """(B, 1, T) -> (B, codebooks, T / 1920); causal, so `lengths` is not needed."""
    with autocast:
        latents = model.encoder(x).latents
    return model.quantizer.encode(latents.float(), codebooks).transpose(0, 1)


def decode(model: MimiModel, codes: torch.Tensor) -> torch.Tensor:
    return model.decode(codes).audio_values
