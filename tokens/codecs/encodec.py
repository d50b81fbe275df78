"""EnCodec 24 kHz (the `encodec` package) as a tokens.codecs backend: the default codec.

Its weights (official checkpoint, local state dict file, seeded random init) are
tokens.codec_weights'; what its codes are exactly, and why batched codes equal one-by-one
codes, is in tokens.codec's docstring.
"""

from __future__ import annotations

import torch

from tokens import codec_weights
from tokens.codec_settings import CodecConfig, CodecWeights


def load(cfg: CodecConfig):
    model, weights = codec_weights.load_encodec(cfg)
    model.set_target_bandwidth(cfg.bandwidth)
    return model, weights


def from_state(state: dict, weights: CodecWeights, cfg: CodecConfig):
    model = codec_weights.new_model()
    model.load_state_dict(state, strict=True)
    model.set_target_bandwidth(cfg.bandwidth)
    return model


def encode(model, x: torch.Tensor, lengths: list[int], codebooks: int, autocast) -> torch.Tensor:
    """(B, 1, T) at 24 kHz -> (B, n_q, T / 320): EncodecModel.encode for one segment (the 24 kHz
    model neither splits nor normalizes), the encoder network under `autocast` and the quantizer
    always in float32. Reflect padding stays inside each row (MIN_FRAMES), so `lengths` is unused."""
    with autocast:
        emb = model.encoder(x)
    codes = model.quantizer.encode(emb.float(), model.frame_rate, model.bandwidth)  # (n_q, B, T)
    assert codes.shape[0] == codebooks
    return codes.transpose(0, 1)


def decode(model, codes: torch.Tensor) -> torch.Tensor:
    """(1, n_q, T) int64 codes -> (1, 1, samples) waveform."""
    return model.decode([(codes, None)])


def codebook_table(model, codebooks: int) -> torch.Tensor:
    """(codebooks * 1024, 128) float32 on the CPU: the entries of the first `codebooks` codebooks,
    stacked (what a Vocos decoder embeds codes with)."""
    layers = model.quantizer.vq.layers[:codebooks]
    return torch.cat([layer.codebook.detach().float().cpu() for layer in layers])
