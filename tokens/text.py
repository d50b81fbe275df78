"""Transcript text as both halves read it: choose, normalize, tokenize.

In:  Libriheavy supervision `custom.texts` (a list of strings: [book text, ASR hypothesis]), or
     a sentence typed for synthesis; a trained SentencePiece model file.
Out: normalized text (str); token ids (list[int], each < 65536 so they fit uint16).

Reserved ids, fixed in every model trained here (`tokens.constants`): pad=0, unk=1, bos=2,
eos=3. encode() returns text pieces only; adding BOS/EOS and padding is the trainer's job.
Training the BPE model is the pipeline's (`pipeline.text.bpe`).
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path

import sentencepiece as spm

TEXT_FIELDS = {"book": 0, "asr": 1}  # index into supervision custom.texts
NORMALIZATION = "nfkc-ws-v1"  # bump whenever normalize_text's output can change
MAX_VOCAB = 65535  # tokens are stored as uint16

_DROP_CATEGORIES = {"Cc", "Cf", "Cs", "Co"}  # control, format (soft hyphen, ZWSP, BOM), surrogate, private use


def _clean_chars(text: str) -> str:
    """Every whitespace character becomes a space; control/format characters disappear."""
    if text.isprintable():  # the common case: no whitespace but " ", nothing in C*/Z* to map
        return text
    out = []
    for ch in text:
        if ch.isspace() or unicodedata.category(ch).startswith("Z"):  # tabs, newlines, NBSP, U+2028
            out.append(" ")
        elif unicodedata.category(ch) not in _DROP_CATEGORIES:
            out.append(ch)
    return "".join(out)


def normalize_text(text: str) -> str:
    """NFKC, drop control/format characters, collapse all whitespace to single spaces, strip.

    Case and punctuation are kept: the TTS model reads them (questions, pauses, emphasis). Curly
    quotes survive NFKC; ligatures and full-width forms fold to plain letters; "..." replaces
    the ellipsis character. Page numbers, footnote marks and other book noise are NOT repaired
    here: guessing would change what the speaker said as often as fix it.
    """
    # Clean before NFKC so that removed characters cannot block a composition, and after it
    # because NFKC itself produces spaces (NBSP -> " ", U+00A8 -> " \u0308").
    text = unicodedata.normalize("NFKC", _clean_chars(text))
    return " ".join(_clean_chars(text).split())


def select_text(texts: Sequence[str] | Mapping[str, str] | None, field: str) -> str:
    """The normalized transcript `field` of a cut; "" if absent. `texts` is Libriheavy's list
    (`field` "book" or "asr") or, for other sources, a mapping of field name -> text."""
    if isinstance(texts, Mapping):
        value = texts.get(field)
        return normalize_text(value) if isinstance(value, str) else ""
    if field not in TEXT_FIELDS:
        raise ValueError(f"unknown text field {field!r}; valid fields: {sorted(TEXT_FIELDS)}")
    index = TEXT_FIELDS[field]
    if not texts or index >= len(texts) or not isinstance(texts[index], str):
        return ""
    return normalize_text(texts[index])


def has_words(text: str) -> bool:
    """True when a text holds a letter or a digit (any script): something a speaker says."""
    return any(ch.isalnum() for ch in text)


def text_problem(text: str, field: str) -> tuple[str, str] | None:
    """Why a selected, normalized text cannot be a training target: (reason, detail), or None.

    Punctuation alone ("... \u2014 !") is not speech: its audio would be trained against no words.
    """
    if not text:
        return "empty_text", f"text field {field!r} normalizes to nothing"
    if not has_words(text):
        return "no_words", f"text field {field!r} has no letter or digit: {text[:80]!r}"
    return None


class Tokenizer:
    """A trained SentencePiece model. Pickles as the model bytes (ships to Ray workers without a
    shared filesystem) and reloads the processor lazily on first use."""

    def __init__(self, model_path: Path | str, data: bytes | None = None):
        """`data`: the model's bytes when they were read elsewhere (e.g. from a remote corpus);
        `model_path` then only names them in messages."""
        self.model_path = Path(model_path)
        if data is None:
            if not self.model_path.is_file():
                raise FileNotFoundError(f"BPE model {self.model_path} not found; train it first (train_bpe)")
            data = self.model_path.read_bytes()
        self._model = data
        self.sha256 = hashlib.sha256(self._model).hexdigest()
        self._sp: spm.SentencePieceProcessor | None = None
        sp = self._processor()
        self.vocab_size = sp.get_piece_size()
        if self.vocab_size > MAX_VOCAB:
            raise ValueError(f"BPE model {self.model_path}: vocab_size {self.vocab_size} > {MAX_VOCAB} (uint16 tokens)")
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()

    def _processor(self) -> spm.SentencePieceProcessor:
        if self._sp is None:
            try:
                self._sp = spm.SentencePieceProcessor(model_proto=self._model)
            except RuntimeError as e:
                raise ValueError(f"BPE model {self.model_path} is not a SentencePiece model: {e}") from e
        return self._sp

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_sp"] = None  # the C++ processor does not pickle; rebuilt from the bytes on use
        return state

    def encode(self, text: str) -> list[int]:
        """Ids of a normalized text (no BOS/EOS); unseen characters give unk_id."""
        return self._processor().encode(text, out_type=int)

    def decode(self, ids: list[int]) -> str:
        return self._processor().decode([int(i) for i in ids])
