"""The field's WER text normalizations beside valle-eval's own (trainer.eval.wer's "english-v1"),
so that a WER can be put next to a published one scored the same way.

"whisper": Whisper's English normalizer (Radford et al. 2022, appendix C) as the
`whisper_normalizer` package ships it (with its British-to-American spelling list): lower case,
bracketed and parenthesized spans removed, fillers ("hmm", "uh") dropped, contractions and
abbreviations expanded ("don't" -> "do not", "Mr." -> "mister"), spelled-out numbers written as
digits ("eighteen twenty" -> "1820"), British spellings made American ("colour" -> "color"),
remaining punctuation and diacritics removed.

"seed-tts": seed-tts-eval's English rule (its run_wer.py, as F5-TTS and others report on the
Seed-TTS test set): every ASCII punctuation mark except the straight apostrophe, and the CJK,
typographic-quote, dash and ellipsis marks of the zhon package's list, are deleted (not replaced
by a space: "well-known" -> "wellknown", "don\u2019t" with a curly apostrophe -> "dont"), then
lower case. Numbers stay as written ("1820" and "eighteen twenty" differ).
"""

from __future__ import annotations

import functools
import string

# What seed-tts-eval deletes besides ASCII punctuation: the zhon package's Chinese punctuation
# (fullwidth forms, CJK brackets and stops, en/em dash, curly quotes, ellipsis, middle dots).
_ZHON_PUNCTUATION = (
    "\uff02\uff03\uff04\uff05\uff06\uff07\uff08\uff09\uff0a\uff0b\uff0c\uff0d\uff0f\uff1a\uff1b\uff1c"
    "\uff1d\uff1e\uff20\uff3b\uff3c\uff3d\uff3e\uff3f\uff40\uff5b\uff5c\uff5d\uff5e\uff5f\uff60\uff62"
    "\uff63\uff64\u3000\u3001\u3003\u3008\u3009\u300a\u300b\u300c\u300d\u300e\u300f\u3010\u3011\u3014"
    "\u3015\u3016\u3017\u3018\u3019\u301a\u301b\u301c\u301d\u301e\u301f\u3030\u303e\u303f\u2013\u2014"
    "\u2018\u2019\u201b\u201c\u201d\u201e\u201f\u2026\u2027\ufe4f\ufe51\ufe54\u00b7"
    "\uff01\uff1f\uff61\u3002"
)
_SEED_TTS_DELETE = str.maketrans("", "", string.punctuation.replace("'", "") + _ZHON_PUNCTUATION)


def seed_tts(text: str) -> str:
    return " ".join(text.translate(_SEED_TTS_DELETE).lower().split())


@functools.cache
def _whisper_normalizer():
    try:
        from whisper_normalizer.english import EnglishTextNormalizer
    except ImportError:
        raise ValueError(
            "the whisper WER normalizer needs the whisper_normalizer package: pip install 'valle-corpus[eval]'"
        ) from None
    return EnglishTextNormalizer()


def whisper(text: str) -> str:
    return " ".join(_whisper_normalizer()(text).split())
