"""EnCodec 24 kHz (the `encodec` package) as a tokens.codecs backend: the default codec.

Its weights (official checkpoint, local state dict file, seeded random init) are
tokens.codec_weights'; what its codes are exactly, and why batched codes equal one-by-one
codes, is in tokens.codec's docstring.
"""

from __future__ import annotations

from functools import partial

import torch

from tokens import codec_weights
from tokens.codec_settings import CodecConfig, CodecWeights
from tokens.cpu_kernels import reflect_pad
from tokens.stack import import_without_torchaudio


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


def on_cpu(model) -> None:
    """The encoder's convolutions (causal, reflect-padded) pad by `tokens.cpu_kernels.reflect_pad`:
    the same values, faster on CPU. In place."""
    conv = import_without_torchaudio("encodec").modules.conv
    for module in model.encoder.modules():
        if isinstance(module, conv.SConv1d) and module.causal and module.pad_mode == "reflect":
            module.forward = partial(_padded_conv, module, conv.get_extra_padding_for_conv1d, conv.pad1d)


def _padded_conv(module, extra_padding, pad1d, x: torch.Tensor) -> torch.Tensor:
    """encodec's causal SConv1d.forward with `reflect_pad`: all the padding on the left but what
    completes the last stride (`extra`). An input no longer than a pad keeps encodec's pad1d,
    which pads it with zeros first."""
    kernel, stride, dilation = module.conv.conv.kernel_size[0], module.conv.conv.stride[0], module.conv.conv.dilation[0]
    total = (kernel - 1) * dilation - (stride - 1)
    extra = extra_padding(x, kernel, stride, total)
    if x.shape[-1] <= max(total, extra):
        return module.conv(pad1d(x, (total, extra), mode="reflect"))
    return module.conv(reflect_pad(x, total, extra))


def decode(model, codes: torch.Tensor) -> torch.Tensor:
    """(1, n_q, T) int64 codes -> (1, 1, samples) waveform."""
    return model.decode([(codes, None)])


def codebook_table(model, codebooks: int) -> torch.Tensor:
    """(codebooks * 1024, 128) float32 on the CPU: the entries of the first `codebooks` codebooks,
    stacked (what a Vocos decoder embeds codes with)."""
    layers = model.quantizer.vq.layers[:codebooks]
    return torch.cat([layer.codebook.detach().float().cpu() for layer in layers])
