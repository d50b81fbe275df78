"""Train the BPE model on the training subsets' transcripts.

In:  a stream of (cut_id, normalized text) pairs (`tokens.text.normalize_text`) and a `BpeConfig`.
Out: a SentencePiece model file written atomically and byte-identical for the same input and
     config; `tokens.text.Tokenizer` reads it (pipeline and trainer alike).
"""

from __future__ import annotations

import hashlib
import heapq
import io
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import sentencepiece as spm

from storage.files import write_bytes_atomic
from tokens.constants import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from tokens.text import MAX_VOCAB, normalize_text

log = logging.getLogger(__name__)

MIN_VOCAB = 5  # the 4 reserved ids and one piece
MODEL_TYPES = ("bpe", "unigram", "char")
SAMPLER = "blake2b64-bottom-k-v1"  # how the training sample is drawn; part of the fingerprint
MAX_SENTENCE_BYTES = 16384  # sentencepiece silently drops longer lines; we drop and count instead

# Fixed trainer options. num_threads is stored in the .model file and changes unigram results,
# so it is a constant (not the machine's core count) to keep models byte-identical everywhere.
_TRAINER_OPTIONS = {
    "num_threads": 16,
    "input_sentence_size": 0,  # use every sentence we feed: sampling is done by cut-id hash
    "hard_vocab_limit": False,  # a small corpus yields a smaller vocab instead of an error
    "normalization_rule_name": "identity",  # normalize_text already ran; keep text as is
    "remove_extra_whitespaces": False,
    "split_digits": True,  # numbers are read digit by digit; no vocab slots for "1876" etc.
    "byte_fallback": False,  # unseen characters map to unk rather than 256 byte pieces
    "max_sentence_length": MAX_SENTENCE_BYTES,
    "pad_id": PAD_ID,
    "unk_id": UNK_ID,
    "bos_id": BOS_ID,
    "eos_id": EOS_ID,
}


@dataclass
class BpeConfig:
    # 1024: see docs/configuration.md "Text and vocabulary" (small pieces let the model learn spelling -> sound for
    # unseen words; room beyond the ~100-300 cased characters and punctuation for common words).
    vocab_size: int = 1024
    model_type: str = "bpe"  # sentencepiece model type: bpe | unigram | char
    character_coverage: float = 1.0
    max_sentences: int = 2_000_000  # training sample cap; the sample is chosen by cut-id hash
    # An existing model used as is, not trained: a SentencePiece .model file, or a corpus folder
    # (its text/bpe.model). Corpora mixed in training (repeated --data) must share one model.
    model: str | None = None

    def __post_init__(self) -> None:
        # Messages start with the field name: load_dag prefixes the section (text.bpe.).
        if not MIN_VOCAB <= self.vocab_size <= MAX_VOCAB:
            raise ValueError(
                f"vocab_size={self.vocab_size}: must be in [{MIN_VOCAB}, {MAX_VOCAB}]: the 4 "
                "reserved ids and at least one piece, and tokens are stored as uint16"
            )
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type={self.model_type!r}: must be one of {MODEL_TYPES}")
        if not 0.0 < self.character_coverage <= 1.0:
            raise ValueError(f"character_coverage={self.character_coverage}: must be in (0, 1]")
        if self.max_sentences < 1:
            raise ValueError(f"max_sentences={self.max_sentences}: must be >= 1")

    def fingerprint(self) -> dict:
        """JSON-able description of everything that decides the model bytes, given the input.
        (A given `model` is keyed by its bytes where it is used: pipeline.runner.ensure_bpe.)"""
        settings = asdict(self)
        del settings["model"]  # None when trained here: the key of models trained before it existed
        return {
            **settings,
            "sampler": SAMPLER,
            "trainer": dict(_TRAINER_OPTIONS),
            "sentencepiece": spm.__version__,
        }


def _cut_hash(cut_id: str) -> int:
    # A stable hash (Python's hash() is salted per process).
    return int.from_bytes(hashlib.blake2b(cut_id.encode("utf-8"), digest_size=8).digest(), "big")


def sample_sentences(sentences: Iterable[tuple[str, str]], max_sentences: int) -> tuple[list[str], dict]:
    """Keep the `max_sentences` texts whose cut ids hash lowest, in hash order.

    One streaming pass, memory bounded by the sample, independent of input order; the sample for
    a larger cap contains the sample for a smaller one. Equivalent to a hash threshold chosen
    after the fact, so no counting pass or `total` is needed. Returns (texts, counts).
    """
    heap: list[tuple[int, str]] = []  # (-hash, text): heap[0] is the highest hash kept
    counts = {"seen": 0, "empty": 0, "too_long": 0}
    for cut_id, text in sentences:
        counts["seen"] += 1
        if not text:
            counts["empty"] += 1
            continue
        if len(text.encode("utf-8")) > MAX_SENTENCE_BYTES:
            counts["too_long"] += 1
            continue
        item = (-_cut_hash(cut_id), text)  # ties (a 64-bit collision) broken by text: still deterministic
        if len(heap) < max_sentences:
            heapq.heappush(heap, item)
        elif item > heap[0]:
            heapq.heapreplace(heap, item)
    texts = [text for _, text in sorted(heap, reverse=True)]  # lowest hash first
    counts["sampled"] = len(texts)
    return texts, counts


def train_bpe(sentences: Iterable[tuple[str, str]], model_path: Path, cfg: BpeConfig) -> Path:
    """Train a SentencePiece model on a hash-chosen sample of (cut_id, normalized text) pairs.

    The same input (in any order) and cfg give a byte-identical file at `model_path`. If the
    text is too small for cfg.vocab_size the model is smaller; the achieved size is logged and
    is Tokenizer(model_path).vocab_size.
    """
    model_path = Path(model_path)
    texts, counts = sample_sentences(sentences, cfg.max_sentences)
    if not texts:
        raise ValueError(f"train_bpe({model_path}): no non-empty sentences to train on ({counts})")
    for text in texts:
        if text != normalize_text(text):
            raise ValueError(f"train_bpe: sentence is not normalized (call normalize_text first): {text[:80]!r}")

    buf = io.BytesIO()
    try:
        # The iterator feeds sentencepiece directly: no temp file whose path would land in the model.
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=buf,
            vocab_size=cfg.vocab_size,
            model_type=cfg.model_type,
            character_coverage=cfg.character_coverage,
            minloglevel=2,
            **_TRAINER_OPTIONS,
        )
    except RuntimeError as e:
        if "smaller than required_chars" in str(e):
            raise ValueError(
                f"vocab_size={cfg.vocab_size} cannot hold the {model_path.name} sample's characters "
                f"plus 4 reserved ids; raise vocab_size or lower character_coverage ({e})"
            ) from e
        raise
    data = buf.getvalue()
    write_bytes_atomic(model_path, data)

    achieved = spm.SentencePieceProcessor(model_proto=data).get_piece_size()
    log.info("BPE %s: %s, vocab %d (requested %d)", model_path, counts, achieved, cfg.vocab_size)
    if achieved < cfg.vocab_size:
        log.warning("BPE %s: text too small for vocab_size=%d, got %d pieces", model_path, cfg.vocab_size, achieved)
    return model_path


def model_type_of(data: bytes) -> str:
    """The model type a SentencePiece model was trained as (bpe, unigram, char, word)."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(data)
    return sentencepiece_model_pb2.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type).lower()


def given_model_problem(data: bytes, where: str) -> str | None:
    """Why a given model cannot be this corpus's tokenizer (None if it can): it must load, and its
    reserved ids must be ours (the trainer pads, starts and ends sequences with them)."""
    try:
        sp = spm.SentencePieceProcessor(model_proto=data)
        kind = model_type_of(data)
    except Exception as err:  # sentencepiece and protobuf raise several types for damaged bytes
        return f"{where} is not a SentencePiece model ({err})"
    ids = (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id())
    if ids != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
        return f"{where} reserves pad/unk/bos/eos as {ids}, not ({PAD_ID}, {UNK_ID}, {BOS_ID}, {EOS_ID})"
    if kind not in MODEL_TYPES:
        return f"{where} is a {kind} model; valle-corpus uses {', '.join(MODEL_TYPES)}"
    return None
