"""Model sizes: one config dataclass shared by the AR and NAR models, and named presets.

In: the text vocabulary size (from the corpus index: SentencePiece BPE, pad=0 unk=1 bos=2 eos=3)
and optional overrides. Out: a `ModelConfig`. Presets are plain builder functions, torchtune-style:

    cfg = PRESETS["tiny"](text_vocab=500, group_size=2, **codec_sizes(codebook_size=2048, frame_rate=12.5))

The code vocabulary and the frame rate are the corpus's codec's (its index.json provenance.codec;
`codec_sizes` turns them into overrides): EnCodec 24 kHz's 1,024 entries at 75 frames/s are the
defaults, so a config saved before they were recorded loads as EnCodec's. The position tables hold
`MAX_AUDIO_SECONDS` (40 s) at the codec's frame rate: 3,000 frames of EnCodec, 500 of Mimi.

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


@dataclass(frozen=True)
class ModelConfig:
    text_vocab: int  # BPE vocabulary size; id 0 is padding
    d_model: int
    n_heads: int
    n_layers: int
    d_ff: int
    dropout: float = 0.1
    codebook_size: int = 1024  # entries per codebook of the corpus's codec (EnCodec 24 kHz's by default)
    n_codebooks: int = 8  # K
    group_size: int = 1  # AR only: VALL-E 2 code group size G (1 = VALL-E)
    max_text_len: int = 512  # longest text (tokens) the models accept
    max_audio_frames: int = 3000  # longest audio (codec frames) the models accept: 40 s at 75 frames/s
    prompt_seconds: tuple[float, float] = (1.5, 10.0)  # NAR only: acoustic prompt lengths trained on
    frame_rate: float = 75  # code frames per second of the corpus's codec (EnCodec 24 kHz's by default)

    def frames(self, seconds: float) -> int:
        """Code frames in `seconds` of audio at the model's frame rate, rounded."""
        return round(seconds * self.frame_rate)

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
        if not self.frame_rate > 0 or self.codebook_size < 2:
            raise ValueError(f"frame_rate {self.frame_rate}, codebook_size {self.codebook_size}: need > 0 and >= 2")
        lo, hi = self.prompt_seconds
        if not 0 < lo <= hi:
            raise ValueError(f"prompt_seconds {self.prompt_seconds}: need 0 < low <= high")


MAX_AUDIO_SECONDS = 40  # the longest audio the position tables hold


def codec_sizes(codebook_size: int, frame_rate: float) -> dict:
    """The ModelConfig fields a codec decides: its code vocabulary, its frame rate, and the
    position tables' length (`MAX_AUDIO_SECONDS` at that rate)."""
    return {
        "codebook_size": int(codebook_size),
        "frame_rate": frame_rate,
        "max_audio_frames": round(MAX_AUDIO_SECONDS * frame_rate),
    }


def tiny(text_vocab: int, **overrides) -> ModelConfig:
    cfg = ModelConfig(text_vocab=text_vocab, d_model=128, n_heads=4, n_layers=3, d_ff=512, dropout=0.0)
    return replace(cfg, **overrides)


def base(text_vocab: int, **overrides) -> ModelConfig:
    cfg = ModelConfig(text_vocab=text_vocab, d_model=1024, n_heads=16, n_layers=12, d_ff=4096, dropout=0.1)
    return replace(cfg, **overrides)


PRESETS = {"tiny": tiny, "base": base}
