"""Which utterances an evaluation set keeps: a duration range (VALL-E and VALL-E 2 use LibriSpeech
test-clean utterances of 4 to 10 s), at most `per_speaker` each, at most `max_utterances` in all,
chosen deterministically: ids sorted, then taken round-robin over speakers so that a cap keeps as
many voices as it can."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from schemas.evalset import spread_over_speakers


@dataclass(frozen=True)
class Selection:
    min_seconds: float = 4.0
    max_seconds: float = 10.0
    per_speaker: int | None = None
    max_utterances: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.min_seconds <= self.max_seconds:
            raise ValueError(f"durations {self.min_seconds}-{self.max_seconds} s: need 0 <= min <= max")
        for name in ("per_speaker", "max_utterances"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}={value}: must be at least 1")

    def fits(self, seconds: float) -> bool:
        return self.min_seconds <= seconds <= self.max_seconds

    def choose(self, candidates: list[tuple[str, str]]) -> set[str]:
        """The ids kept among (id, speaker) pairs whose duration fits."""
        return set(spread_over_speakers(candidates, self.per_speaker)[: self.max_utterances])

    def record(self) -> dict:
        return asdict(self)
