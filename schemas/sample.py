"""One utterance as every shard format stores it: the record the writers take.

Its metadata is `schemas/sample.v2.json` (the WebDataset `<key>.json` member, the Parquet
columns but codes, the lhotse cut's fields); `codes` are (codebooks, frames) uint16.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Sample:
    id: str
    speaker: str
    subset: str
    duration: float
    text: str
    text_tokens: list[int]
    codes: np.ndarray  # (codebooks, frames) uint16
    recording_id: str
    start: float
    text_cer: float | None = None  # book vs ASR transcript (pipeline.text.agreement); lengths only
    source_texts: list[str] = field(default_factory=list)  # Libriheavy's [book, ASR] texts, as given

    def metadata(self) -> dict:
        return {
            "id": self.id,
            "speaker": self.speaker,
            "subset": self.subset,
            "duration": self.duration,
            "text": self.text,
            "text_tokens": list(self.text_tokens),
            "recording_id": self.recording_id,
            "start": self.start,
        }
