"""How alike two encodings of the same audio are (fast codec modes against exact, a decoded
sample re-encoded against its codes)."""

from __future__ import annotations

import numpy as np


def code_agreement(reference: list[np.ndarray], other: list[np.ndarray]) -> list[float]:
    """Share of identical codes per codebook between two encodings of the same waveforms."""
    same = sum((a == b).sum(axis=1) for a, b in zip(reference, other))
    frames = sum(a.shape[1] for a in reference)
    return [float(x) / max(frames, 1) for x in np.atleast_1d(same)]
