"""Transcript agreement: how far a cut's book text is from what the ASR heard.

In:  a supervision's `custom.texts` ([book text, ASR hypothesis], as Libriheavy ships them).
Out: the character error rate between their comparison forms (float, or None when the cut has
     no ASR text to compare with), and whether a cut passes `filter.max_text_cer`.

Libriheavy's ASR text is upper case without punctuation and reads numbers as words, while the
book text is cased and punctuated, so both are compared in a form that only keeps what a
speaker says: normalized (tokens.text), case-folded, every character that is not a letter or
a digit turned into a space, spaces collapsed ("an' wink?" and "AN WINK" agree). A number the
book writes in digits ("1907", "3rd") and the ASR wrote as number words ("NINETEEN O SEVEN")
agrees too: the words are aligned first (Levenshtein opcodes over words), and a differing span
whose book side is all digits and whose ASR side is all number words is left out of both
texts, since how a reader says a number is not something the book text can be wrong about.
The distance is rapidfuzz's Levenshtein distance over characters (C++, linear memory) divided
by the length of the book text's form: the share of the training text the audio does not back.
"""

from __future__ import annotations

from collections.abc import Sequence

from rapidfuzz.distance import Levenshtein

from tokens.text import normalize_text

# Bump when comparison_form or text_cer can give another number: it keys the shards stage.
AGREEMENT = "casefold-alnum-numbers-levenshtein-v1"

_UNITS = (
    "zero oh o one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_LARGE = "hundred thousand million billion".split()
_ORDINALS = (
    "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth "
    "thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth"
).split()
NUMBER_WORDS = frozenset(
    _UNITS + _TENS + _LARGE + _ORDINALS + ["and", "a"] + [t[:-1] + "ieth" for t in _TENS] + [w + "th" for w in _LARGE]
)


def comparison_form(text: str) -> str:
    """Lower case letters and digits separated by single spaces; nothing else."""
    kept = "".join(ch if ch.isalnum() else " " for ch in normalize_text(text).casefold())
    return " ".join(kept.split())


def text_cer(texts: Sequence[str] | None) -> float | None:
    """CER of the ASR text (texts[1]) against the book text (texts[0]); None without an ASR text.

    0 is perfect agreement; it can exceed 1 when the ASR heard much more than the book says.
    A book text with nothing to compare (no letter or digit) against any ASR text gives 1.0.
    Other sources' texts (a mapping of field -> text) have no such pair: None.
    """
    if not isinstance(texts, list) or len(texts) < 2 or not isinstance(texts[1], str) or not isinstance(texts[0], str):
        return None
    asr = comparison_form(texts[1])
    if not asr:
        return None  # an empty hypothesis says nothing about the book text
    book = comparison_form(texts[0])
    if not book:
        return 1.0
    book_kept, asr_kept = _without_spoken_numbers(book.split(), asr.split())
    return round(Levenshtein.distance(" ".join(book_kept), " ".join(asr_kept)) / len(book), 4)


def _without_spoken_numbers(book: list[str], asr: list[str]) -> tuple[list[str], list[str]]:
    """Both word lists without the differing spans where the book has digits and the ASR the
    number words for them (e.g. ["1907"] / ["nineteen", "o", "seven"])."""
    book_kept, asr_kept, span = [], [], None  # span: (book words, asr words) of a differing run
    for op in [*Levenshtein.opcodes(book, asr), None]:  # None flushes the last span
        if op is not None and op.tag != "equal":
            b, a = book[op.src_start : op.src_end], asr[op.dest_start : op.dest_end]
            span = (span[0] + b, span[1] + a) if span else (b, a)
            continue
        if span:
            b, a = span
            spoken_number = (
                b and a and all(any(ch.isdigit() for ch in w) for w in b) and all(w in NUMBER_WORDS for w in a)
            )
            if not spoken_number:
                book_kept += b
                asr_kept += a
            span = None
        if op is not None:
            book_kept += book[op.src_start : op.src_end]
            asr_kept += asr[op.dest_start : op.dest_end]
    return book_kept, asr_kept


def agreement_problem(cer: float | None, texts: Sequence[str], max_cer: float | None) -> tuple[str, str] | None:
    """(reason, detail) when the transcripts disagree by more than `max_cer` (None: filter off)."""
    if max_cer is None or cer is None or cer <= max_cer:
        return None
    return "text_mismatch", (
        f"CER {cer:.3f} > {max_cer:g} between book text {texts[0][:80]!r} and ASR text {texts[1][:80]!r}"
    )
