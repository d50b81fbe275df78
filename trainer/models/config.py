"""Model sizes: one config dataclass shared by the AR and NAR models, and named presets.

In: the text vocabulary size (from the corpus index: SentencePiece BPE, pad=0 unk=1 bos=2 eos=3)
and optional overrides. Out: a `ModelConfig`. Presets are plain builder functions, torchtune-style:

    cfg = PRESETS["tiny"](text_vocab=500, group_size=2)

- `tiny`: 3 layers, d 128, 4 heads, FFN 512, no dropout; for CPU tests and learning smoke tests
  (dropout 0 so a handful of samples can be overfitted quickly).
- `base`: the VALL-E / VALL-E 2 papers' size: 12 layers, 16 heads, d 1024, FFN 4096, dropout 0.1.
  Parameters besides the text embedding (text_vocab x 1024): the 12 blocks hold 151.2 M
  (12 x 12 d^2 + biases, norms); AR G=1 153.3 M (G=2 155.4 M, G=8 168.0 M: one embedding table
  per group slot and a G-way head); NAR 167.2 M (8 codebook tables, 7 stage heads, AdaLN).
  With text_vocab 1024: AR G=1 154.3 M, NAR 168.2 M (tests/test_models.py prints them).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tokens.constants import CODEBOOK_SIZE


@dataclass(frozen=True)
class ModelConfig:
    text_vocab: int  # BPE vocabulary size; id 0 is padding
    d_model: int
    n_heads: int
    n_layers: int
    d_ff: int
    dropout: float = 0.1
    codebook_size: int = CODEBOOK_SIZE  # entries per EnCodec codebook
    n_codebooks: int = 8  # K
    group_size: int = 1  # AR only: VALL-E 2 code group size G (1 = VALL-E)
    max_text_len: int = 512  # longest text (tokens) the models accept
    max_audio_frames: int = 3000  # longest audio (codec frames) the models accept: 40 s
    prompt_seconds: tuple[float, float] = (1.5, 10.0)  # NAR only: acoustic prompt lengths trained on

    def fits(self, text_tokens, frames):
        """Which samples the position tables can hold (numpy arrays or tensors, elementwise)."""
        return (text_tokens <= self.max_text_len) & (frames <= self.max_audio_frames)

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of n_heads {self.n_heads}")
        if self.group_size not in (1, 2, 4, 8):
            raise ValueError(f"group_size {self.group_size}: use 1, 2, 4 or 8")
        if self.text_vocab < 4:
            raise ValueError(f"text_vocab {self.text_vocab}: needs at least pad/unk/bos/eos")
        lo, hi = self.prompt_seconds
        if not 0 < lo <= hi:
            raise ValueError(f"prompt_seconds {self.prompt_seconds}: need 0 < low <= high")


def tiny(text_vocab: int, **overrides) -> ModelConfig:
    cfg = ModelConfig(text_vocab=text_vocab, d_model=128, n_heads=4, n_layers=3, d_ff=512, dropout=0.0)
    return replace(cfg, **overrides)


def base(text_vocab: int, **overrides) -> ModelConfig:
    cfg = ModelConfig(text_vocab=text_vocab, d_model=1024, n_heads=16, n_layers=12, d_ff=4096, dropout=0.1)
    return replace(cfg, **overrides)


PRESETS = {"tiny": tiny, "base": base}
