"""valle-eval's noise: mean WER beside pooled WER, bootstrap intervals over utterances, the paired
bootstrap and `valle-eval compare`, on constructed scores (no models)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trainer.eval import report
from trainer.eval.cli import main
from trainer.eval.run import summarize

BOOTSTRAP = {"level": 0.95, "over": "utterances", "seed": 0, "resamples": 1000}  # as results.json records it


def score(errors: int, sim: float, words: int = 10, dnsmos: float = 3.0) -> dict:
    return {"hypothesis": "", "errors": int(errors), "words": int(words), "sim": float(sim), "dnsmos": float(dnsmos)}


def noisy_scores(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    draws = zip(rng.integers(0, 5, n), rng.uniform(0.3, 0.7, n), rng.integers(5, 20, n), rng.uniform(2.5, 3.5, n))
    return [score(*d) for d in draws]


def utterance(i: int, model: dict, truth: dict | None = None, resynthesis: dict | None = None) -> dict:
    """One row of a task's `utterances` as evaluate() writes it."""
    truth = truth or score(0, 0.9)
    return {
        "id": f"spk{i % 3}-{i:04d}",
        "speaker": f"spk{i % 3}",
        "reference": f"sentence number {i}",
        "prompt_id": None,
        "ground_truth": truth,
        "resynthesis": resynthesis or truth,
        "single": model,
        "best_of_n": {**model, "sample": 0},
        "metric_wise": model,
        "samples": [{k: model[k] for k in ("errors", "words", "sim")} | {"frames": 100}] * 2,
    }


def results(tasks: dict[str, list[dict]], name: str = "test_clean", asr: str = "pocketsphinx en-us") -> dict:
    """A results dict shaped like evaluate()'s plus what cli.run adds."""
    n = max(len(rows) for rows in tasks.values())
    return {
        "tasks": {t: {"summary": summarize(rows, 2), "skipped": {}, "utterances": rows} for t, rows in tasks.items()},
        "timing": {"synthesis_s": 1, "generated_s": 2, "trials": n, "seconds_per_trial": 0.1, "real_time_factor": 0.5},
        "set": {"utterances": n, "speakers": 3, "name": name, "folder": f"sets/{name}", "source": {"kind": "corpus"}},
        "length_guard": {},
        "bootstrap": BOOTSTRAP,
        "settings": {"samples": 2, "sampling": {"top_p": 0.8}},
        "checkpoints": {"ar": "ar.pt", "nar": "nar.pt", "decoder": "encodec"},
        "backends": {"asr": asr, "speaker": "resemblyzer", "dnsmos": "DNSMOS P.808", "wer_normalization": "english-v1"},
        "device": "cpu",
    }


def test_pooled_and_mean_wer_differ_on_a_hand_computed_example():
    # 1 error in a 1-word utterance (WER 1), none in a 9-word one (WER 0):
    # pooled 1 / 10 = 0.1, mean (1 + 0) / 2 = 0.5
    entry = summarize([utterance(0, score(1, 0.5, words=1)), utterance(1, score(0, 0.7, words=9))], 2)["single"]
    assert entry["wer"] == pytest.approx(0.1) and entry["wer_mean"] == pytest.approx(0.5)
    assert entry["sim"] == pytest.approx(0.6)


def test_interval_holds_the_estimate_and_narrows_with_more_utterances():
    few, many = noisy_scores(40), noisy_scores(2000)
    widths = {}
    for scored in (few, many):
        entry = summarize([utterance(i, s) for i, s in enumerate(scored)], 2)["single"]
        assert set(entry["interval"]) == {"wer", "wer_mean", "sim", "dnsmos"}
        for metric, (lo, hi) in entry["interval"].items():
            assert lo < entry[metric] < hi, (metric, lo, entry[metric], hi)
            widths.setdefault(metric, []).append(hi - lo)
    for metric, (wide, narrow) in widths.items():
        assert narrow < wide / 3, (metric, wide, narrow)  # 50x the utterances: about 7x narrower


def test_the_same_seed_gives_the_same_interval():
    from trainer.eval import stats

    scored = noisy_scores(300)
    first = stats.describe(scored)
    assert stats.describe(scored) == first
    assert stats.describe(scored, seed=1)["interval"] != first["interval"]
    assert stats.settings() == BOOTSTRAP


def test_an_interval_without_dnsmos_has_none():
    from trainer.eval import stats

    scored = [{k: v for k, v in s.items() if k != "dnsmos"} for s in noisy_scores(20)]
    assert set(stats.describe(scored)["interval"]) == {"wer", "wer_mean", "sim"}


def test_paired_bootstrap_tells_a_clear_difference_from_noise():
    from trainer.eval import stats

    a = noisy_scores(200)
    better = [score(max(0, s["errors"] - 1), s["sim"] + 0.05, s["words"], s["dnsmos"]) for s in a]
    clear = stats.paired(a, better)
    for metric in ("wer", "wer_mean"):
        assert clear[metric]["differs"] and clear[metric]["diff"] < 0 and clear[metric]["interval"][1] < 0
    assert clear["sim"]["differs"] and clear["sim"]["diff"] == pytest.approx(0.05)
    assert not clear["dnsmos"]["differs"] and clear["dnsmos"]["interval"] == [0.0, 0.0]

    same = stats.paired(a, a)
    assert not any(s["differs"] for s in same.values()) and all(s["diff"] == 0 for s in same.values())
    # noise without a difference: every utterance moves, half up, half down, by the same amount
    base = [score(s["errors"] + 1, s["sim"], s["words"], s["dnsmos"]) for s in a]
    step = [1 if i % 2 else -1 for i in range(len(a))]
    moved = [score(s["errors"] + d, s["sim"] + d / 10, s["words"], s["dnsmos"]) for s, d in zip(base, step)]
    noisy = stats.paired(base, moved)
    for metric in ("wer", "wer_mean", "sim"):
        lo, hi = noisy[metric]["interval"]
        assert not noisy[metric]["differs"] and lo < 0 < hi and hi - lo > 0.01, (metric, lo, hi)
    with pytest.raises(ValueError, match="same utterances"):
        stats.paired(a, a[:-1])


def _write(folder, data) -> None:
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(data))


def test_compare_prints_verdicts_per_task_row_and_metric(tmp_path, capsys):
    a_scores = noisy_scores(120)
    a = results({t: [utterance(i, s) for i, s in enumerate(a_scores)] for t in ("continuation", "cross")})
    # B: fewer errors and a higher SIM everywhere in continuation, the same model in cross; its
    # decoder changed the resynthesis row; two utterances of continuation were not scored in B
    b_cont = [
        utterance(i, score(max(0, s["errors"] - 2), s["sim"] + 0.1, s["words"], s["dnsmos"]), resynthesis=score(3, 0.8))
        for i, s in enumerate(a_scores)
    ][2:]
    b = results({"continuation": b_cont, "cross": [utterance(i, s) for i, s in enumerate(a_scores)]})
    b["set"]["folder"] = "/mnt/copy/test_clean"  # the same set read from elsewhere: said, not refused
    _write(tmp_path / "a", a)
    (tmp_path / "b.json").write_text(json.dumps(b))
    out = tmp_path / "compare.md"
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b.json"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.read_text() in printed
    cont, cross = printed.split("## Cross-sentence")
    assert "## Continuation: 118 utterances scored in both (A 120, B 118)" in cont
    assert "(A read it from sets/test_clean, B from /mnt/copy/test_clean)" in cont
    rows = [line for line in cont.splitlines() if line.startswith("| ")]
    lines = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in rows}
    for metric in ("WER %", "mean WER %", "SIM"):
        assert cont.count(f"| model, single sampling | {metric} |") == 1
        assert lines[("model, single sampling", metric)].endswith("| yes, B better |")
    assert "| model, single sampling | DNSMOS |" in cont
    assert "| model, best of 2 (sort on SIM and WER) | WER % |" in cont
    assert cont.count("| codec resynthesis |") == 4 and "| ground truth |" not in cont  # only what differs
    assert "The same in A and B (not shown): ground truth." in cont
    # cross: the same scores in A and B: no verdict says they differ, intervals are [0, 0]
    assert "yes," not in cross and "| model, single sampling | WER % |" in cross
    assert "+0.00 [+0.00, +0.00] | no |" in cross
    assert "The same in A and B (not shown): ground truth, codec resynthesis." in cross


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b["set"].update(name="test_other"), "different sets (name 'test_clean' vs 'test_other')"),
        (lambda b: b["backends"].update(asr="whisper large-v3"), "scored differently (asr:"),
        (lambda b: b["backends"].update(wer_normalization="whisper-english"), "scored differently (wer_normalization:"),
        (lambda b: b["tasks"]["cross"]["utterances"][0].update(reference="another text"), "another reference text"),
        (lambda b: [r.update(id=r["id"] + "x") for r in b["tasks"]["cross"]["utterances"]], "no utterance in common"),
        (lambda b: b.pop("tasks"), "not valle-eval results"),
    ],
)
def test_compare_refuses_runs_that_are_not_comparable(tmp_path, capsys, change, message):
    a = results({"cross": [utterance(i, s) for i, s in enumerate(noisy_scores(10))]})
    b = json.loads(json.dumps(a))
    change(b)
    _write(tmp_path / "a", a)
    _write(tmp_path / "b", b)
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert captured.err.startswith("valle-eval compare: ") and message in captured.err
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "none")]) == 2
    assert "no results.json there" in capsys.readouterr().err


def test_report_shows_mean_wer_and_intervals():
    scored = noisy_scores(60)
    res = results({"continuation": [utterance(i, s) for i, s in enumerate(scored)]})
    entry = res["tasks"]["continuation"]["summary"]["single"]
    lo, hi = entry["interval"]["wer"]
    md = report.markdown(res)
    assert "| row | WER % | mean WER % | SIM | DNSMOS | utterances |" in md
    wer = f"{100 * entry['wer']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
    mean = f"{100 * entry['wer_mean']:.1f} [{100 * entry['interval']['wer_mean'][0]:.1f}, "
    sim = f"{entry['sim']:.3f} [{entry['interval']['sim'][0]:.3f}, {entry['interval']['sim'][1]:.3f}]"
    assert f"| model, single sampling | {wer} | {mean}" in md and sim in md
    assert "In brackets: the 95 % interval, bootstrap over utterances (1000 resamples, seed 0)." in md
    page = report.page(res)
    assert f"<td class='num'>{wer}</td>" in page and "1000 resamples, seed 0" in page
