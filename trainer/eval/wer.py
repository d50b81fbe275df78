"""Word error rate as valle-eval scores it: both texts normalized the same way, then jiwer's
word alignment (substitutions + deletions + insertions over reference words).

Normalization "english-v1", stated because WERs are only comparable under the same one:
NFKC, case folded; integers and decimals spelled out as cardinal English ("12" -> "twelve",
"1,500" -> "one thousand five hundred", "3.5" -> "three point five"; years are not read as
years); hyphens and dashes become spaces; apostrophes inside words are kept ("don't"), every
other punctuation mark is removed; whitespace collapsed. An empty hypothesis scores every
reference word as a deletion.

`--normalizer` picks another normalization (NORMALIZERS): "whisper" and "seed-tts", the field's
(trainer.eval.normalizers says what each does); english-v1 is the default.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

import jiwer

from trainer.eval import normalizers

NORMALIZATION = "english-v1"
_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred"))


def spell(n: int) -> str:
    """Cardinal English for 0 <= n < 10**12."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    for scale, word in _SCALES:
        if n >= scale:
            head, rest = divmod(n, scale)
            return f"{spell(head)} {word}" + ("" if rest == 0 else " " + spell(rest))
    raise AssertionError(n)


def _number(match: re.Match) -> str:
    whole, _, fraction = match.group(0).replace(",", "").partition(".")
    if len(whole) > 12:
        return " ".join(_ONES[int(d)] for d in whole)
    words = spell(int(whole))
    return words + (" point " + " ".join(_ONES[int(d)] for d in fraction) if fraction else "")


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?", lambda m: f" {_number(m)} ", text)
    text = re.sub(r"[\u2010-\u2015-]", " ", text).replace("\u2019", "'")
    text = re.sub(r"(?<![a-z0-9])'|'(?![a-z0-9])", " ", text)  # quotes, not apostrophes in words
    text = "".join(ch if ch.isalnum() or ch in " '" else " " for ch in text)
    return " ".join(text.split())


NORMALIZERS: dict[str, Callable[[str], str]] = {
    NORMALIZATION: normalize,
    "whisper": normalizers.whisper,
    "seed-tts": normalizers.seed_tts,
}


def normalizer_named(name: str) -> Callable[[str], str]:
    """The normalization called `name`; ValueError naming the choices for any other name."""
    if name not in NORMALIZERS:
        raise ValueError(f"unknown WER normalizer {name!r}; choose one of {', '.join(NORMALIZERS)}")
    return NORMALIZERS[name]


@dataclass(frozen=True)
class WordErrors:
    errors: int  # substitutions + deletions + insertions
    words: int  # reference words

    @property
    def wer(self) -> float:
        return self.errors / self.words if self.words else float(self.errors > 0)


def word_errors(reference: str, hypothesis: str, normalizer: str = NORMALIZATION) -> WordErrors:
    norm = normalizer_named(normalizer)
    ref, hyp = norm(reference), norm(hypothesis)
    if not ref:
        return WordErrors(len(hyp.split()), 0)
    if not hyp:
        return WordErrors(len(ref.split()), len(ref.split()))
    out = jiwer.process_words(ref, hyp)
    return WordErrors(out.substitutions + out.deletions + out.insertions, out.substitutions + out.deletions + out.hits)


def corpus_wer(counts: list[WordErrors]) -> float:
    """All errors over all reference words (as jiwer scores a list), not a mean of per-utterance WERs."""
    words = sum(c.words for c in counts)
    return sum(c.errors for c in counts) / words if words else 0.0
