"""valle-eval on bad input: each fault is one `valle-eval: ...` line naming the file and what to
do, and exit 2, found before any synthesis (the set is checked before the models load, its token
ids against the checkpoints' vocabulary before the first trial); utterances with nothing to read
or score are skipped and counted, and a run where everything was skipped exits 1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.evalsets.from_corpus import build_from_corpus
from pipeline.evalsets.selection import Selection
from schemas.contract import SchemaError
from schemas.evalset import EvalSet, EvalSetWriter
from trainer.eval.cli import main


@pytest.fixture(scope="module")
def good_set(built_corpus, tmp_path_factory) -> Path:
    """A set made from the tiny corpus (the `trained` checkpoints' codes and BPE); cases break a copy."""
    folder = tmp_path_factory.mktemp("evalset") / "set"
    build_from_corpus(built_corpus[0], "small", folder, Selection(0.0, 20.0), progress=False)
    return folder


@pytest.fixture
def bad_set(good_set, tmp_path) -> Path:
    return Path(shutil.copytree(good_set, tmp_path / "set"))


def valle_eval(trained, evalset: Path, out: Path, *extra: str) -> int:
    _, ar, nar, _ = trained
    args = ["--ar", str(ar), "--nar", str(nar), "--set", str(evalset), "--out", str(out), "--codec-weights", "random"]
    args += ["--samples", "1", "--prompt-seconds", "0.5", "--no-dnsmos", "--no-progress"]
    return main(args + ["--max-seconds-per-token", str(10 / 75), *extra])


def one_line(capsys) -> str:
    """What valle-eval said on stderr: exactly one line, its own."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("valle-eval: "), lines
    return lines[0]


def rows(evalset: Path) -> list[dict]:
    return [json.loads(line) for line in (evalset / "utterances.jsonl").read_text().splitlines()]


def rewrite_rows(evalset: Path, rows: list[dict]) -> None:
    (evalset / "utterances.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def rewrite_meta(evalset: Path, drop: str) -> None:
    meta = json.loads((evalset / "evalset.json").read_text())
    del meta[drop]
    (evalset / "evalset.json").write_text(json.dumps(meta))


def corrupt_wav(evalset: Path) -> str:
    path = evalset / rows(evalset)[-1]["audio"]  # the last: a run that synthesizes meets it late
    path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(64))
    return path.name


def missing_codes(evalset: Path) -> str:
    path = evalset / rows(evalset)[-1]["codes"]
    path.unlink()
    return path.name


def missing_utterances(evalset: Path) -> str:
    (evalset / "utterances.jsonl").unlink()
    return "utterances.jsonl"


def token_outside_vocabulary(evalset: Path) -> str:
    lines = rows(evalset)
    lines[-1]["text_tokens"] = [*lines[-1]["text_tokens"], 1_000_000]
    rewrite_rows(evalset, lines)
    return "outside the checkpoints' vocabulary"


def missing_provenance(evalset: Path) -> str:
    rewrite_meta(evalset, "provenance")
    return "provenance"


def missing_source(evalset: Path) -> str:
    rewrite_meta(evalset, "source")
    return "source"


@pytest.mark.parametrize(
    "breaks",
    [missing_utterances, missing_codes, corrupt_wav, missing_provenance, missing_source, token_outside_vocabulary],
)
def test_a_broken_set_is_one_line_and_exit_2_before_synthesis(breaks, trained, bad_set, tmp_path, capsys):
    said = breaks(bad_set)
    assert valle_eval(trained, bad_set, tmp_path / "out") == 2
    line = one_line(capsys)
    assert said in line and ("valle-prep evalset" in line or "BPE" in line), line
    assert not (tmp_path / "out" / "audio").exists()  # refused before the first trial


def test_a_folder_that_is_not_a_wavlm_model_is_one_line(trained, good_set, tmp_path, capsys):
    (tmp_path / "wavlm").mkdir()
    (tmp_path / "wavlm" / "notes.txt").write_text("not a model")
    assert valle_eval(trained, good_set, tmp_path / "out", "--speaker", f"wavlm:{tmp_path / 'wavlm'}") == 2
    line = one_line(capsys)
    assert f"wavlm:{tmp_path / 'wavlm'} is not a WavLMForXVector folder" in line, line


@pytest.mark.parametrize("name", ["model.ckpt", pytest.param("model.nemo", marks=pytest.mark.slow)])
def test_a_file_that_is_not_a_nemo_model_is_one_line(name, trained, good_set, tmp_path, capsys):
    if name.endswith(".nemo"):  # a broken archive reaches NeMo's restore (importing NeMo: ~15 s)
        pytest.importorskip("nemo.collections.asr")
    (tmp_path / name).write_bytes(b"not a tar archive" * 10)
    assert valle_eval(trained, good_set, tmp_path / "out", "--asr", f"nemo:{tmp_path / name}") == 2
    assert f"nemo:{tmp_path / name}" in one_line(capsys)


def test_utterances_with_nothing_to_read_or_score_are_skipped_and_counted(trained, bad_set, tmp_path, capsys):
    lines = rows(bad_set)
    kept = [u.id for u in EvalSet(bad_set).first(3)]
    by_id = {r["id"]: r for r in lines}
    by_id[kept[0]] |= {"text": "", "text_tokens": []}
    by_id[kept[1]]["reference"] = " -- "  # no words: WER undefined, never shown as 0 %
    rewrite_rows(bad_set, lines)
    out = tmp_path / "out"
    assert valle_eval(trained, bad_set, out, "--max-utterances", "3", "--tasks", "continuation") == 0
    task = json.loads((out / "results.json").read_text())["tasks"]["continuation"]
    assert task["skipped"] == {"empty text": 1, "no words in the reference (WER undefined)": 1}
    assert [r["id"] for r in task["utterances"]] == [kept[2]]
    assert task["summary"]["ground_truth"]["utterances"] == 1


def test_a_run_where_everything_was_skipped_exits_1(trained, bad_set, tmp_path, capsys):
    rewrite_rows(bad_set, [r | {"text": " ", "text_tokens": []} for r in rows(bad_set)])
    assert valle_eval(trained, bad_set, tmp_path / "out") == 1
    assert "every utterance was skipped" in one_line(capsys)
    assert not (tmp_path / "out" / "results.json").exists()


def test_a_set_refuses_an_utterance_with_empty_text_when_made(tmp_path):
    writer = EvalSetWriter(tmp_path / "set")
    wave, codes = np.zeros(2400, np.float32), np.zeros((8, 10), np.uint16)
    for text, reference in [("", "WORDS"), ("Words.", "...")]:
        with pytest.raises(SchemaError, match="empty text|no words"):
            writer.add(id="u", speaker="a", text=text, reference=reference, text_tokens=[], audio=wave, codes=codes)
    assert writer.rows == []


def test_negative_token_ids_are_refused_when_read(good_set, tmp_path):
    broken = Path(shutil.copytree(good_set, tmp_path / "set"))
    lines = rows(broken)
    lines[0]["text_tokens"] = [-1]
    rewrite_rows(broken, lines)
    with pytest.raises(SchemaError, match="text_tokens must be a list of BPE ids"):
        EvalSet(broken)
