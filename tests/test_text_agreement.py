"""Transcript agreement filter: the CER between book and ASR text, text_mismatch rejects with
their CER, every sample's CER in lengths.parquet, and a changed threshold handled on resume."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from pipeline.dag import DagError, load_dag
from pipeline.executors.local import LocalExecutor
from pipeline.inspect.verify import verify
from pipeline.runner import run
from pipeline.text.agreement import agreement_problem, comparison_form, text_cer
from sample.lookalike import MISMATCHED_ASR
from tests.conftest import write_dag


def test_comparison_form_keeps_only_what_is_said():
    assert comparison_form("\u201cBut why\u2014an' wink?\u201d she asked.") == "but why an wink she asked"
    assert comparison_form("BUT WHY AN WINK SHE ASKED") == "but why an wink she asked"
    assert comparison_form("\ufb01ne  \u00a0 day") == "fine day"  # NFKC ligature, odd spaces


def test_text_cer_is_edits_over_the_book_text():
    assert text_cer(["The cat sat.", "THE CAT SAT"]) == 0.0
    assert text_cer(["abcd", "ABXD"]) == 0.25  # one substitution in four characters
    assert text_cer(["ab", "AB CD EF"]) == 3.0  # more heard than written: above 1
    assert text_cer(["Hello.", ""]) is None and text_cer(["Hello."]) is None  # nothing to compare
    assert text_cer(["...", "HELLO"]) == 1.0


def test_numbers_in_digits_agree_with_number_words_and_nothing_else_is_excused():
    assert text_cer(["Locked since 1907.", "LOCKED SINCE ONE NINE ZERO SEVEN"]) == 0.0
    assert text_cer(["The 3rd of May, 1907.", "THE THIRD OF MAY NINETEEN O SEVEN"]) == 0.0
    assert text_cer(["Chapter 12 begins", "CHAPTER TWELVE BEGINS"]) == 0.0
    # Digits against words that are not numbers, or number words against a word: still errors.
    assert text_cer(["He had 5 dogs.", "HE HAD FIVE CATS"]) > 0.3
    assert text_cer(["He had some dogs.", "HE HAD FIVE DOGS"]) == text_cer(["he had some dogs", "he had five dogs"]) > 0


def test_agreement_problem_names_the_cer_and_both_texts():
    texts = ["The cat sat.", "A DOG RAN"]
    cer = text_cer(texts)
    reason, detail = agreement_problem(cer, texts, 0.1)
    assert reason == "text_mismatch" and f"CER {cer:.3f} > 0.1" in detail and "A DOG RAN" in detail
    assert agreement_problem(cer, texts, None) is None  # off
    assert agreement_problem(0.1, texts, 0.1) is None  # the threshold itself passes
    assert agreement_problem(None, texts, 0.1) is None  # no ASR text: kept


def test_dag_default_off_switch_and_bad_values(tiny_dag):
    assert load_dag(tiny_dag).filter.max_text_cer == 0.1
    assert load_dag(tiny_dag, ["filter.max_text_cer=null"]).filter.max_text_cer is None
    with pytest.raises(DagError, match=r"filter\.max_text_cer must be >= 0"):
        load_dag(tiny_dag, ["filter.max_text_cer=-0.5"])
    with pytest.raises(DagError, match=r"filter\.max_txt_cer .*did you mean 'max_text_cer'"):
        load_dag(tiny_dag, ["filter.max_txt_cer=0.2"])
    assert load_dag(tiny_dag).fingerprint() != load_dag(tiny_dag, ["filter.max_text_cer=0.3"]).fingerprint()


def _rejects(out):
    return [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]


def _cer_by_id(out, index):
    """cut id -> text_cer of every sample, joining lengths.parquet with the Parquet shards."""
    lengths = {r["shard"]: r["text_cer"] for r in pq.read_table(out / "lengths.parquet").to_pylist()}
    return {
        cut_id: cer
        for s in index["shards"]
        if s["format"] == "parquet"
        for cut_id, cer in zip(pq.read_table(out / s["path"]).column("id").to_pylist(), lengths[s["id"]])
    }


def test_mismatched_transcript_is_rejected_with_its_cer(built_corpus, tiny_corpus):
    dag, summary = built_corpus
    bad = next(t for t in tiny_corpus.cuts.values() if t.defect == "asr_mismatch")
    (row,) = [r for r in _rejects(dag.out) if r["reason"] == "text_mismatch"]
    assert row["cut_id"] == bad.cut_id and row["subset"] == "small"
    assert row["text_cer"] == text_cer([bad.text, MISMATCHED_ASR]) > 0.5
    assert f"CER {row['text_cer']:.3f} > 0.1" in row["detail"]
    # Every kept sample carries its CER, as computed from its manifest texts.
    cers = _cer_by_id(dag.out, summary.index)
    assert cers and bad.cut_id not in cers
    assert cers == pytest.approx(
        {i: text_cer([tiny_corpus.cuts[i].text, tiny_corpus.cuts[i].asr_text]) for i in cers}, abs=1e-6
    )
    assert summary.index["provenance"]["filter"]["max_text_cer"] == 0.1


def test_changing_the_threshold_reshards_and_encodes_only_what_it_must(tmp_path, tiny_corpus):
    dag_path = write_dag(tmp_path / "tiny.yaml", tiny_corpus)
    bad = next(t for t in tiny_corpus.cuts.values() if t.defect == "asr_mismatch")
    strict = run(load_dag(dag_path), progress=False, executor=LocalExecutor(threads=1))
    assert strict.index["rejects"]["by_reason"]["text_mismatch"] == 1

    off = run(load_dag(dag_path, ["filter.max_text_cer=null"]), progress=False, executor=LocalExecutor(threads=1))
    assert "text_mismatch" not in off.index["rejects"]["by_reason"]
    assert off.encoded == 1 and off.reshard == off.units - 1  # only the unit of the cut kept now
    assert bad.cut_id in _cer_by_id(tmp_path / "out", off.index)
    assert off.index["provenance"]["filter"]["max_text_cer"] is None

    again = run(load_dag(dag_path), progress=False, executor=LocalExecutor(threads=1))
    assert again.codec_forward_passes == 0 and again.reshard == again.units
    assert again.index == strict.index
    assert verify(tmp_path / "out") == []
