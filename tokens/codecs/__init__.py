"""The codecs a corpus can be coded with: their numbers here (no torch), their models one
module each (`backend`).

`SPECS` holds what every layer needs to know without loading a model: the sample rate the codec
takes, its frame rate, codebook size, and how many codebooks it has. The trainer sizes its models
from these (recorded in a corpus's index.json), the pipeline pads and counts frames with them.

A backend module (tokens/codecs/<module>.py) implements, over torch:
- `load(cfg: CodecConfig) -> (model, CodecWeights)`: the weights `cfg.weights` names
  ("pretrained", "auto", "random", or a local file/folder), with their provenance;
- `from_state(state, weights) -> model`: a model from a state dict resolved elsewhere (the
  driver's), checked against its hash;
- `encode(model, x, lengths, codebooks, autocast) -> (B, codebooks, T // hop)` integer codes of
  a zero-padded (B, 1, T) float32 batch; `lengths[b]` is row b's own length (a whole number of
  frames); a row's codes must not depend on what else is in the batch;
- `decode(model, codes) -> (samples,)` float waveform of (1, codebooks, frames) int64 codes;
- optionally `on_cpu(model)`: in place, faster CPU kernels for its encoder that give the same
  values (EnCodec's reflect padding); every encoder's ELUs become tokens.cpu_kernels.FastELU.
Adding a codec is one backend module and one `CodecSpec` line below.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass

DEFAULT_CODEC = "encodec_24khz"


@dataclass(frozen=True)
class CodecSpec:
    name: str  # the DAG's codec.name, and what index.json records as codec.model
    module: str  # the backend: tokens.codecs.<module>
    sample_rate: int  # Hz of the waveforms it takes and gives back
    frame_rate: float  # code frames per second (75 is written as an int: index.json keeps its bytes)
    codebook_size: int  # entries per codebook
    max_codebooks: int  # codebooks the model has
    default_codebooks: int  # codebooks used when codec.codebooks is null
    # Frames an utterance needs of its own so that what follows it in a batch cannot reach its
    # codes (a non-causal look-ahead; 1 for a causal model).
    min_frames: int = 1

    @property
    def hop(self) -> int:
        """Samples per code frame."""
        hop = self.sample_rate / self.frame_rate
        assert hop == int(hop), f"{self.name}: {self.sample_rate} Hz / {self.frame_rate} frames/s is not whole"
        return int(hop)

    @property
    def bits_per_code(self) -> int:
        return int(math.log2(self.codebook_size))

    def kbps(self, codebooks: int) -> float:
        """Bit rate of `codebooks` codebooks: EnCodec's 8 at 75 frames/s x 10 bits = 6.0 kbps."""
        return codebooks * self.bits_per_code * self.frame_rate / 1000

    def num_frames(self, num_samples: int) -> int:
        """Code frames for `num_samples` samples: ceil(num_samples / hop)."""
        return -(-int(num_samples) // self.hop)

    def frames(self, seconds: float) -> int:
        """Code frames in `seconds` of audio, rounded."""
        return round(seconds * self.frame_rate)


SPECS = {
    s.name: s
    for s in (
        # EnCodec 24 kHz (the `encodec` package): the VALL-E papers' codec; 6 kbps = 8 codebooks.
        CodecSpec("encodec_24khz", "encodec", 24000, 75, 1024, 32, 8, min_frames=7),
        # Descript Audio Codec 24 kHz (transformers' DacModel): 32 codebooks, the first 8 = 6 kbps.
        CodecSpec("dac_24khz", "dac", 24000, 75, 1024, 32, 8, min_frames=1),
        # Kyutai's Mimi (transformers' MimiModel): 12.5 frames/s, codebook 1 distilled from WavLM.
        CodecSpec("mimi", "mimi", 24000, 12.5, 2048, 32, 8, min_frames=1),
    )
}


class UnknownCodec(ValueError):
    pass


def spec(name: str) -> CodecSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise UnknownCodec(f"codec {name!r} is not one of {sorted(SPECS)}") from None


def backend(name: str):
    """The backend module of codec `name` (imports torch and the codec's library). DAC and Mimi
    need transformers: without it, an ImportError that names the extra to install."""
    module = spec(name).module
    try:
        return importlib.import_module(f"tokens.codecs.{module}")
    except ImportError as e:
        if e.name is None or e.name.split(".")[0] != "transformers":
            raise
        raise ImportError(
            f"codec {name!r} needs transformers (>= 4.45), which is not installed ({e}); "
            "install it with: pip install 'valle-corpus[codecs]'",
            name=e.name,
        ) from e
