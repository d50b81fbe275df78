"""VALL-E / VALL-E 2 models over codec codes and BPE text: AR (codebook 1, grouped) and NAR (2..K)."""

from .ar import ARModel, Cache
from .config import PRESETS, ModelConfig, base, codec_sizes, tiny
from .nar import NARModel

__all__ = ["ARModel", "Cache", "NARModel", "ModelConfig", "PRESETS", "base", "codec_sizes", "tiny"]
