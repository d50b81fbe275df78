"""tokens.text (normalization, field choice, Tokenizer) and pipeline.text.bpe (deterministic BPE training)."""

from __future__ import annotations

import pickle
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.text import bpe
from pipeline.text.bpe import BpeConfig, sample_sentences, train_bpe
from tokens import constants
from tokens.text import TEXT_FIELDS, Tokenizer, normalize_text, select_text

# About the size of the bundled sample: a few dozen short, cased, punctuated book sentences.
BOOK = [
    "\u201cNot yet,\u201d she said, and closed the door.",
    "The little girl was thoughtful for a moment.",
    '"But why do folks dive in the water?" she asked.',
    "It was the best of times; it was the worst of times.",
    "Call me Ishmael. Some years ago, never mind how long precisely...",
    "Mr. Holmes, they were the footprints of a gigantic hound!",
    "In 1876 the house on Baker Street was quiet.",
    "Whither goest thou, O captain? Speak!",
    "She laughed\u2014a short, bright laugh\u2014and turned away.",
    "\u2018Tis but a scratch,\u2019 said the knight.",
    "Chapter XII. The Return of the King.",
    "Dorothy lived in the midst of the great Kansas prairies.",
    "Alice was beginning to get very tired of sitting by her sister on the bank.",
    "What a curious feeling! said Alice; I must be shutting up like a telescope.",
    "Happy families are all alike; every unhappy family is unhappy in its own way.",
    "The sun shone, having no alternative, on the nothing new.",
    "All this happened, more or less.",
    "He was an old man who fished alone in a skiff in the Gulf Stream.",
    "It is a truth universally acknowledged, that a single man must want a wife.",
    "Marley was dead: to begin with.",
    "There was no possibility of taking a walk that day.",
    "Far out in the uncharted backwaters of the unfashionable end of the Galaxy...",
    "The Time Traveller (for so it will be convenient to speak of him) was expounding.",
    "I am an invisible man. No, I am not a spook.",
    "Once upon a time and a very good time it was.",
    "Riverrun, past Eve and Adam's, from swerve of shore to bend of bay.",
    "Mother died today. Or maybe yesterday; I can't be sure.",
    "Lolita, light of my life, fire of my loins.",
    "You don't know about me without you have read a book.",
    "Where's Papa going with that ax? said Fern to her mother.",
    "Squire Trelawney, Dr. Livesey, and the rest of these gentlemen asked me.",
    "It was a bright cold day in April, and the clocks were striking thirteen.",
    "The boy with fair hair lowered himself down the last few feet of rock.",
    "Ships at a distance have every man's wish on board.",
    "To be, or not to be: that is the question.",
]
SMALL = [(f"small/42/book/ch_{i}", t) for i, t in enumerate(BOOK)]


def synthetic(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """n (cut_id, sentence) pairs made of words from BOOK, reproducibly."""
    rng = random.Random(seed)
    words = " ".join(BOOK).split()
    return [(f"large/{i % 97}/b/c_{i}", " ".join(rng.choices(words, k=rng.randint(3, 15)))) for i in range(n)]


_MODELS: dict = {}


def small_model(tmp_path_factory) -> Tokenizer:
    """One tiny model per test session (training takes ~0.1 s, but hypothesis reuses it)."""
    if "small" not in _MODELS:
        path = tmp_path_factory.mktemp("bpe") / "small.model"
        _MODELS["small"] = Tokenizer(train_bpe(SMALL, path, BpeConfig(vocab_size=256)))
    return _MODELS["small"]


# --- normalization -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Not\u00a0yet,\tshe  said.\n", "Not yet, she said."),  # NBSP, tab, runs, newline
        (
            "\u201cNot yet,\u201d she said \u2018so\u2019.",
            "\u201cNot yet,\u201d she said \u2018so\u2019.",
        ),  # curly quotes kept
        ("\ufb01ne o\ufb03ce", "fine office"),  # NFKC ligatures
        ("\uff28ello", "Hello"),  # full-width
        ("co\u00adoperate\u200b now\x07\ufeff", "cooperate now"),  # soft hyphen, ZWSP, BEL, BOM
        ("wait\u2026 What?!", "wait... What?!"),  # case and punctuation kept
        ("line\u2028two\r\nthree", "line two three"),
        ("\u00a0 \t\x00\u200b\n", ""),  # nothing left
        ("", ""),
        ("Page 12 The End 13", "Page 12 The End 13"),  # book noise is not "fixed"
    ],
)
def test_normalize_examples(raw, expected):
    assert normalize_text(raw) == expected


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_normalize_idempotent_and_clean(raw):
    out = normalize_text(raw)
    assert normalize_text(out) == out
    assert out == out.strip() and "  " not in out and "\t" not in out and "\n" not in out


def test_select_text_fields():
    texts = ["\u201cNot yet,\u201d she\u00a0said.", "NOT YET SHE SAID"]
    assert select_text(texts, "book") == "\u201cNot yet,\u201d she said."
    assert select_text(texts, "asr") == "NOT YET SHE SAID"
    assert select_text(texts[:1], "asr") == ""  # missing
    assert select_text(None, "book") == ""
    assert select_text(["\u200b \t", "X"], "book") == ""  # empty after normalization
    with pytest.raises(ValueError, match=r"'asr', 'book'"):
        select_text(texts, "phones")
    assert TEXT_FIELDS == {"book": 0, "asr": 1}


# --- sampling ----------------------------------------------------------------------------------


def test_capped_sample_is_deterministic_and_hits_the_cap():
    pairs = synthetic(5000)
    shuffled = pairs[:]
    random.Random(1).shuffle(shuffled)
    a, counts = sample_sentences(iter(pairs), 1000)
    b, _ = sample_sentences(iter(shuffled), 1000)
    assert a == b and len(a) == 1000 and counts == {"seen": 5000, "empty": 0, "too_long": 0, "sampled": 1000}
    bigger, _ = sample_sentences(pairs, 2000)
    assert set(a) <= set(bigger)  # raising the cap only adds sentences
    # Spread over the whole input, not its head.
    chosen = {t for t in a}
    positions = [i for i, (_, t) in enumerate(pairs) if t in chosen]
    assert min(positions) < 500 and max(positions) > 4500


def test_sample_counts_drops():
    pairs = [("a", ""), ("b", "x" * (bpe.MAX_SENTENCE_BYTES + 1)), ("c", "ok")]
    texts, counts = sample_sentences(pairs, 10)
    assert texts == ["ok"] and counts == {"seen": 3, "empty": 1, "too_long": 1, "sampled": 1}


# --- training ----------------------------------------------------------------------------------


def test_train_twice_is_byte_identical_and_order_free(tmp_path):
    pairs = synthetic(3000)
    cfg = BpeConfig(vocab_size=300, max_sentences=2000)
    a = train_bpe(pairs, tmp_path / "a.model", cfg).read_bytes()
    b = train_bpe(iter(pairs), tmp_path / "b.model", cfg).read_bytes()
    random.Random(2).shuffle(pairs)
    c = train_bpe(pairs, tmp_path / "c.model", cfg).read_bytes()
    assert a == b == c
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.model", "b.model", "c.model"]  # no temp left


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_thread_count_is_pinned(tmp_path, monkeypatch, model_type):
    """num_threads is written into the model (and changes unigram pieces), so it is a constant."""
    pairs = synthetic(2000)
    cfg = BpeConfig(vocab_size=300, model_type=model_type)
    a = Tokenizer(train_bpe(pairs, tmp_path / "a.model", cfg))
    assert cfg.fingerprint()["trainer"]["num_threads"] == bpe._TRAINER_OPTIONS["num_threads"]
    monkeypatch.setitem(bpe._TRAINER_OPTIONS, "num_threads", 1)
    b = Tokenizer(train_bpe(pairs, tmp_path / "b.model", cfg))
    assert a.sha256 != b.sha256  # the file records the thread count
    if model_type == "bpe":  # BPE merges themselves do not depend on threads
        assert [a._processor().id_to_piece(i) for i in range(a.vocab_size)] == [
            b._processor().id_to_piece(i) for i in range(b.vocab_size)
        ]


def test_small_corpus_trains_smaller_vocab(tmp_path, caplog):
    # The default vocab trains on a bundled-sample-sized corpus (BPE keeps merging rare pairs).
    default = Tokenizer(train_bpe(SMALL, tmp_path / "m" / "default.model", BpeConfig()))
    assert default.vocab_size <= 1024
    # Asking for more pieces than the text can give is not an error: fewer pieces, a warning.
    tok = Tokenizer(train_bpe(SMALL[:5], tmp_path / "m" / "small.model", BpeConfig(vocab_size=4000)))
    assert 50 < tok.vocab_size < 4000
    assert "text too small for vocab_size=4000" in caplog.text
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (
        constants.PAD_ID,
        constants.UNK_ID,
        constants.BOS_ID,
        constants.EOS_ID,
    )


def test_training_errors(tmp_path):
    with pytest.raises(ValueError, match="no non-empty sentences"):
        train_bpe([], tmp_path / "x.model", BpeConfig())
    with pytest.raises(ValueError, match="no non-empty sentences"):
        train_bpe([("a", ""), ("b", "")], tmp_path / "x.model", BpeConfig())
    with pytest.raises(ValueError, match="not normalized"):
        train_bpe([("a", "two  spaces")], tmp_path / "x.model", BpeConfig())
    with pytest.raises(ValueError, match="raise vocab_size"):
        train_bpe(SMALL, tmp_path / "x.model", BpeConfig(vocab_size=20))
    assert not (tmp_path / "x.model").exists()


def test_config_bounds():
    with pytest.raises(ValueError, match="uint16"):
        BpeConfig(vocab_size=65536)
    BpeConfig(vocab_size=65535)
    with pytest.raises(ValueError, match="model_type"):
        BpeConfig(model_type="wordpiece")
    fp = BpeConfig().fingerprint()
    assert fp["vocab_size"] == 1024 and fp["sampler"] == bpe.SAMPLER
    assert fp != BpeConfig(vocab_size=512).fingerprint()


# --- tokenizer ---------------------------------------------------------------------------------


def test_round_trip_with_case_and_punctuation(tmp_path_factory):
    tok = small_model(tmp_path_factory)
    for sentence in BOOK + ["Whither goest thou, O King? \u201cSpeak!\u201d", "IN 1876; she said."]:
        ids = tok.encode(sentence)
        assert ids and all(0 <= i < tok.vocab_size for i in ids)
        assert constants.UNK_ID not in ids
        assert tok.decode(ids) == sentence


def test_unseen_character_is_unk(tmp_path_factory):
    tok = small_model(tmp_path_factory)
    assert tok.unk_id in tok.encode("caf\u00e9 \u03a9")


def test_tokenizer_pickles(tmp_path_factory):
    tok = small_model(tmp_path_factory)
    tok.encode("warm up")  # the processor exists before pickling
    copy = pickle.loads(pickle.dumps(tok))
    assert copy._sp is None  # reloaded lazily
    assert (copy.sha256, copy.vocab_size) == (tok.sha256, tok.vocab_size)
    assert copy.encode(BOOK[0]) == tok.encode(BOOK[0])


def test_tokenizer_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="train it first"):
        Tokenizer(tmp_path / "nope.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        Tokenizer(bad)


_WORDS = sorted(set(" ".join(BOOK).split()))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(_WORDS), min_size=1, max_size=20))
def test_round_trip_property(tmp_path_factory, words):
    """Any text over the training alphabet survives encode -> decode unchanged."""
    tok = small_model(tmp_path_factory)
    sentence = normalize_text(" ".join(words))
    assert tok.decode(tok.encode(sentence)) == sentence


@pytest.mark.parametrize(
    "raw, reason",
    [
        ("... \u2014 !", "no_words"),
        ("\u201c?\u201d", "no_words"),
        (" \u00a0 ", "empty_text"),
        ("", "empty_text"),
        ("A.", None),
        ("1876.", None),
        ("\u00e9t\u00e9", None),
        ("\u4e00\u3002", None),
        ("\u0663", None),  # an Arabic-Indic digit
    ],
)
def test_texts_without_a_letter_or_digit_are_not_targets(raw, reason):
    from tokens.text import text_problem

    problem = text_problem(normalize_text(raw), "book")
    assert (problem[0] if problem else None) == reason
    if problem:
        assert "'book'" in problem[1]


def test_unit_selection_rejects_no_words_before_any_audio_work():
    from types import SimpleNamespace

    from pipeline.encode.unit import _select

    cut = {"recording_id": "r", "start": 0.0, "duration": 2.0, "channel": 0, "speaker": "1"}
    cuts = [
        {**cut, "id": "a", "texts": ["... \u2014 !", "A"]},
        {**cut, "id": "b", "texts": ["Yes.", "YES"]},
        {**cut, "id": "c", "texts": ["  ", ""]},
    ]
    kept, rejects, texts, _ = _select(SimpleNamespace(text_field="book", max_text_cer=0.1, formats=["parquet"]), cuts)
    assert [c["id"] for c in kept] == ["b"] and texts == {"b": "Yes."}
    assert [(r["cut_id"], r["reason"]) for r in rejects] == [("a", "no_words"), ("c", "empty_text")]
    kept, rejects, _, _ = _select(SimpleNamespace(text_field="asr", max_text_cer=None, formats=["parquet"]), cuts)
    assert [c["id"] for c in kept] == ["a", "b"]
