"""VALL-E / VALL-E 2 models over EnCodec codes and BPE text: AR (codebook 1, grouped) and NAR (2..K)."""

from .ar import ARModel, Cache
from .config import PRESETS, ModelConfig, base, tiny
from .nar import NARModel

__all__ = ["ARModel", "Cache", "NARModel", "ModelConfig", "PRESETS", "base", "tiny"]
