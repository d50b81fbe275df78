"""valle-eval's continuation scored on its generated part alone: where the reference splits after
the prompt, the generated-part scores of every row, their summary and their tables."""

from __future__ import annotations

import json

import pytest

from pipeline.evalsets.from_corpus import build_from_corpus
from pipeline.evalsets.selection import Selection
from schemas.evalset import EvalSet
from tests.test_eval_errors import valle_eval
from tokens.codecs import SPECS
from trainer.eval.backends import asr_backend, to_16k
from trainer.eval.generated import prefix_distances, split_reference
from trainer.eval.run import ROWS, summarize
from trainer.eval.wer import WordErrors, corpus_wer, normalize, word_errors

ENCODEC = SPECS["encodec_24khz"]

REF = "the cat sat on the mat".split()


def split(prompt: str, rest: str, share: float) -> int:
    return split_reference(REF, prompt.split(), rest.split(), share)


def test_prefix_distances():
    assert prefix_distances(["a", "b"], ["a", "c"]) == [2, 1, 1]
    assert prefix_distances(["a", "b"], []) == [0, 1, 2]


def test_reference_splits_after_the_words_heard_in_the_prompt():
    assert split("the cat", "sat on the mat", 0.9) == 2  # heard exactly: the share does not matter
    assert split("a cat", "sad on the mat", 0.9) == 2  # misheard words still place it
    # "sat" cut in half by the prompt: it goes to the side where it was heard, whatever the share
    assert split("the cat sa", "on the mat", 0.1) == 3
    assert split("the cat", "at on the mat", 0.9) == 2
    # heard on neither side, or on both: equally near; an even speaking rate decides
    assert split("the cat", "on the mat", 0.45) == 3 and split("the cat", "on the mat", 0.35) == 2
    assert split("the cat sa", "at on the mat", 0.45) == 3 and split("the cat sa", "at on the mat", 0.35) == 2
    # nothing heard in the prompt: every split up to the heard rest is as near; the rate decides
    assert split("", "sat on the mat", 0.3) == 2 and split("", "sat on the mat", 0.0) == 0
    assert split("", "", 0.5) == 3 and split("", "", 2.5 / 6) == 2  # exactly between two: the smaller
    assert split_reference([], ["noise"], [], 0.5) == 0


def test_summary_pools_the_generated_parts():
    def scores(errors, words, sim, gen_errors, gen_words):
        return {
            "errors": errors,
            "words": words,
            "sim": sim,
            "generated": {"errors": gen_errors, "words": gen_words, "sim": sim / 2},
        }

    rows = [{"ground_truth": scores(1, 6, 0.8, 1, 4)}, {"ground_truth": scores(0, 5, 0.6, 2, 0)}]
    entry = summarize(rows, 1)["ground_truth"]
    assert entry["wer"] == pytest.approx(1 / 11)
    generated = entry["generated"]
    assert {k: generated[k] for k in ("wer", "sim", "utterances")} == {
        "wer": pytest.approx(3 / 4),
        "sim": pytest.approx(0.35),
        "utterances": 2,
    }
    assert generated["wer_mean"] == pytest.approx((1 / 4 + 1) / 2)  # 2 errors in no word count as wrong
    assert set(generated["interval"]) == {"wer", "wer_mean", "sim"}
    rows[0]["ground_truth"]["generated"]["words"] = 0  # no generated part has a word: no WER, never 0 %
    assert summarize(rows, 1)["ground_truth"]["generated"]["wer"] is None


def test_continuation_scores_its_generated_part_on_every_row(trained, built_corpus, tmp_path, capsys):
    folder, out = tmp_path / "set", tmp_path / "eval"
    build_from_corpus(built_corpus[0], "small", folder, Selection(0.0, 20.0), progress=False)
    assert valle_eval(trained, folder, out, "--samples", "2", "--max-utterances", "2") == 0  # 0.5 s prompts
    capsys.readouterr()
    results = json.loads((out / "results.json").read_text())
    body = results["tasks"]["continuation"]
    evalset, asr = EvalSet(folder), asr_backend("pocketsphinx")
    cut = round(0.5 * ENCODEC.frame_rate) * ENCODEC.hop
    assert body["utterances"]
    for row in body["utterances"]:
        for name in ROWS:
            assert set(row[name]["generated"]) >= {"errors", "words", "sim"}, name
        # the split comes from the ground truth alone: what the ASR hears before and after the prompt
        gt = evalset.audio(evalset.by_id[row["id"]])
        heard_prompt, heard_rest = (asr.transcribe(to_16k(w, ENCODEC.sample_rate)) for w in (gt[:cut], gt[cut:]))
        words, k = normalize(row["reference"]).split(), row["split"]["prompt_words"]
        truth = row["ground_truth"]["generated"]
        assert (row["split"]["heard_in_prompt"], truth["hypothesis"]) == (heard_prompt, heard_rest)
        assert k == split_reference(
            words, normalize(heard_prompt).split(), normalize(heard_rest).split(), cut / len(gt)
        )
        # and the ground truth's generated part is scored against the words after it
        suffix = " ".join(words[k:])
        assert WordErrors(truth["errors"], truth["words"]) == word_errors(suffix, heard_rest)
        assert truth["words"] == len(words) - k == row["split"]["words"] - k
        for name in ("single", "best_of_n"):
            part = row[name]["generated"]
            assert WordErrors(part["errors"], part["words"]) == word_errors(suffix, part["hypothesis"])
    summary = body["summary"]
    for name in ROWS:
        parts = [r[name]["generated"] for r in body["utterances"]]
        assert summary[name]["generated"]["utterances"] == len(body["utterances"])
        assert summary[name]["generated"]["wer"] == pytest.approx(
            corpus_wer([WordErrors(p["errors"], p["words"]) for p in parts])
        )
    cross = results["tasks"]["cross"]  # its output is all generated: scored as it was
    assert (
        all("generated" not in r[n] for r in cross["utterances"] for n in ROWS)
        and "split" not in cross["utterances"][0]
    )
    assert all("generated" not in entry for entry in cross["summary"].values())
    md = (out / "results.md").read_text()
    table = md.split("### Continuation, generated part alone")[1].split("## Cross-sentence")[0]
    single = summary["single"]["generated"]
    lo, hi = single["interval"]["wer"]
    assert f"| model, single sampling | {100 * single['wer']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] | " in table
    assert lo <= single["wer"] <= hi and single["interval"]["sim"][0] <= single["sim"] <= single["interval"]["sim"][1]
    assert "generated part alone" not in md.split("## Cross-sentence")[1]
    page = (out / "index.html").read_text()
    assert "<h3>Continuation, generated part alone</h3>" in page and "after the prompt: WER" in page
