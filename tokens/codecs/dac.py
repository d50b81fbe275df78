"""DAC 24 kHz (Descript Audio Codec, transformers' DacModel) as a tokens.codecs backend.

75 frames/s (hop 320), 32 codebooks of 1,024 entries; the first 8 are 6 kbps, as EnCodec's.
Its encoder is not causal: every convolution pads both sides with zeros. Alone, an utterance's
last frames see those zeros; in a batch they would see what the batch padding became after the
previous layer (biases, not zeros). So each convolution's input is masked to its row's own
length (`_masked`), which makes the padding exactly the zeros a lone utterance gets: batched
codes equal one-by-one codes, and `DacModel.encode` of the utterance alone when its length is a
whole number of frames (the float caveat of tokens.codec applies: kernels chosen by shape).
"""

from __future__ import annotations

import contextlib
import functools

import torch
from transformers import DacConfig, DacModel

from tokens.codecs import hub

# descript/dac_24khz as transformers converted it: encoder 64 -> 1024 channels over strides
# 2, 4, 5, 8 (hop 320), 32 codebooks of 1,024 entries in 8 dimensions.
CONFIG = DacConfig(
    encoder_hidden_size=64,
    downsampling_ratios=[2, 4, 5, 8],
    decoder_hidden_size=1536,
    upsampling_ratios=[8, 5, 4, 2],
    n_codebooks=32,
    codebook_size=1024,
    codebook_dim=8,
    sampling_rate=24000,
)


CODEC = hub.HubCodec(
    name="dac_24khz",
    model_class=DacModel,
    config=CONFIG,
    repo="descript/dac_24khz",
    checked=("sampling_rate", "hop_length", "n_codebooks", "codebook_size", "codebook_dim", "downsampling_ratios"),
    # No fit_random: DAC's random codebooks already give varied codes (cosine lookup of normal entries).
)


load = functools.partial(hub.load, CODEC)
from_state = functools.partial(hub.from_state, CODEC)


def encode(model: DacModel, x: torch.Tensor, lengths: list[int], codebooks: int, autocast) -> torch.Tensor:
    """(B, 1, T) -> (B, codebooks, T / 320), every row as if encoded alone (`_masked`)."""
    with _masked(model.encoder, lengths, x.shape[-1]), autocast:
        latents = model.encoder(x)
    return model.quantizer(latents.float(), codebooks)[1]


def decode(model: DacModel, codes: torch.Tensor) -> torch.Tensor:
    """(1, codebooks, frames) -> (1, frames x 320) samples. The decoder's transposed convolutions
    of odd stride (5) give one sample less than the stride each, 8 at the output: zeros end it."""
    wave = model.decode(audio_codes=codes).audio_values
    return torch.nn.functional.pad(wave, (0, codes.shape[-1] * CODEC.config.hop_length - wave.shape[-1]))


@contextlib.contextmanager
def _masked(encoder: torch.nn.Module, lengths: list[int], total: int):
    """Zero each convolution's input past its row's own length for the block's duration. Row b's
    length at a layer with input length L is L * lengths[b] / total: every length is a whole
    number of frames, and every stride divides the hop."""
    if all(n == total for n in lengths):
        yield  # nothing padded: no mask needed
        return
    fractions = torch.tensor(lengths, dtype=torch.float64) / total

    def zero_padding(module, args):
        (x,) = args
        valid = (fractions * x.shape[-1]).round().long().to(x.device)  # (B,)
        keep = torch.arange(x.shape[-1], device=x.device)[None, :] < valid[:, None]  # (B, L)
        return (x * keep[:, None, :].to(x.dtype),)

    handles = [m.register_forward_pre_hook(zero_padding) for m in encoder.modules() if isinstance(m, torch.nn.Conv1d)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
