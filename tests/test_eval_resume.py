"""valle-eval survives a crash and a failing back-end: each finished trial is on disk as it is made
(OUT/rows.jsonl) and the same command continues a killed run to an uninterrupted run's results;
another command on the same OUT is refused; a back-end raising on a wave fails that trial alone,
counted and named in the tables; --seeds K makes K sampling runs and reports their spread."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.evalsets.from_corpus import build_from_corpus
from pipeline.evalsets.selection import Selection
from schemas.evalset import EvalSet
from tests.conftest import REPO
from tokens.codecs import SPECS
from trainer.eval import cli
from trainer.eval.backends import to_16k
from trainer.eval.run import BackendFailed, EvalConfig, Scorer
from trainer.eval.store import ROWS_FILE, OtherRun, RowStore

ENCODEC = SPECS["encodec_24khz"]


@pytest.fixture(scope="module")
def evalset(built_corpus, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("evalset") / "set"
    build_from_corpus(built_corpus[0], "small", folder, Selection(0.0, 20.0), progress=False)
    return folder


def command(trained, evalset: Path, out: Path, *extra: str) -> list[str]:
    """valle-eval's arguments for a short continuation run (an untrained model's output kept short)."""
    _, ar, nar, _ = trained
    args = ["--ar", str(ar), "--nar", str(nar), "--set", str(evalset), "--out", str(out), "--codec-weights", "random"]
    args += ["--tasks", "continuation", "--samples", "2", "--prompt-seconds", "0.5", "--no-dnsmos", "--no-progress"]
    return args + ["--min-seconds-per-token", "0", "--max-seconds-per-token", str(1 / 75), *extra]


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def without_timing(obj):
    """A results.json with what the clock measured taken out (it differs from run to run)."""
    if isinstance(obj, dict):
        return {k: without_timing(v) for k, v in obj.items() if k != "timing"}
    return [without_timing(v) for v in obj] if isinstance(obj, list) else obj


def stored(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / ROWS_FILE).read_text().splitlines()]


def test_a_killed_run_continues_to_the_uninterrupted_results(trained, evalset, tmp_path, capsys):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert cli.main(command(trained, evalset, whole, "--max-utterances", "2")) == 0
    args = command(trained, evalset, killed, "--max-utterances", "2")
    run = [sys.executable, "-c", "import sys; from trainer.eval.cli import main; sys.exit(main())", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    said = tmp_path / "stderr"
    with open(said, "wb") as err:
        proc = subprocess.Popen(run, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        while not (killed / ROWS_FILE).exists() or (killed / ROWS_FILE).read_bytes().count(b"\n") < 2:
            assert proc.poll() is None, said.read_text()  # wait for the header and one row
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (killed / "results.json").exists()
    before = stored(killed)[1:]
    assert len(before) == 1
    with open(killed / ROWS_FILE, "ab") as f:  # what a kill during an append leaves
        f.write(b'{"row": {"id": "torn')

    assert cli.main(args) == 0  # the same command again
    after = stored(killed)  # the torn line is gone, the rows made before the kill kept as they were
    assert after[1] == before[0] and len(after) == 1 + 2
    got, want = results(killed), results(whole)
    assert without_timing(got["tasks"]) == without_timing(want["tasks"])  # every score, in set order
    assert [r["id"] for r in got["tasks"]["continuation"]["utterances"]] == [u.id for u in EvalSet(evalset).first(2)]
    kept = {r["id"]: r["timing"] for r in got["tasks"]["continuation"]["utterances"]}
    assert all(kept[line["row"]["id"]] == line["row"]["timing"] for line in before)  # not made again
    assert got["timing"]["trials"] == 2 and got["timing"]["synthesis_s"] > 0
    page = (killed / "index.html").read_text()
    for row in got["tasks"]["continuation"]["utterances"]:  # the page plays what was made before the kill too
        assert all((killed / path).is_file() and path in page for path in row["audio"].values())
    capsys.readouterr()

    # Another command on the same folder: one line, exit 2, nothing changed; --restart starts over.
    assert cli.main(command(trained, evalset, killed, "--max-utterances", "2", "--samples", "1")) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "settings.samples differ" in line and "--restart" in line and "another --out" in line, line
    assert stored(killed) == after
    assert cli.main(command(trained, evalset, killed, "--max-utterances", "1", "--samples", "1", "--restart")) == 0
    assert len(stored(killed)) == 1 + 1 and stored(killed)[0]["identity"]["settings"]["samples"] == 1


def test_the_rows_file_drops_a_torn_line_and_refuses_another_run(tmp_path):
    path = tmp_path / ROWS_FILE
    identity = {"set": {"name": "s"}, "settings": {"samples": 2, "tasks": ("continuation",)}}
    store = RowStore(path, identity)
    store.add(0, "continuation", {"id": "a", "single": {"sim": 0.5}})
    store.add(1, "continuation", {"id": "a", "single": {"sim": 0.25}})
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"run": 0, "task": "contin')  # torn by a kill
    again = RowStore(path, identity)
    assert again.get(0, "continuation", "a") == {"id": "a", "single": {"sim": 0.5}}
    assert again.get(1, "continuation", "a")["single"]["sim"] == 0.25 and again.get(0, "cross", "a") is None
    assert path.read_bytes() == whole  # cut, so the next row starts on a line of its own
    again.add(0, "continuation", {"id": "b"})
    assert RowStore(path, identity).get(0, "continuation", "b") == {"id": "b"}

    other = {**identity, "settings": {"samples": 5, "tasks": ["continuation"]}}
    with pytest.raises(OtherRun, match=r"run \(settings\.samples differ\); use another --out, or pass --restart"):
        RowStore(path, other)
    assert RowStore(path, other, restart=True).rows == {} and len(path.read_bytes().splitlines()) == 1
    path.write_bytes(path.read_bytes() + b"not json\n" + b'{"run": 0, "task": "cross", "row": {"id": "c"}}\n')
    with pytest.raises(OtherRun, match=f"{ROWS_FILE}:2 is not a line valle-eval writes"):
        RowStore(path, other)


class Deaf:
    """An ASR back-end that raises on one wave (every wave when None) and hears the rest as `asr`."""

    def __init__(self, asr, wave: np.ndarray | None):
        self.asr, self.wave, self.description = asr, wave, asr.description

    def transcribe_all(self, waves):
        if any(self.wave is None or np.array_equal(w, self.wave) for w in waves):
            raise RuntimeError("cannot hear this wave\n  (the rest of its trace)")
        return self.asr.transcribe_all(waves)


def test_a_backend_failing_on_one_wave_fails_that_trial_alone(trained, evalset, tmp_path, monkeypatch, capsys):
    first, second = EvalSet(evalset).first(2)
    target = to_16k(EvalSet(evalset).audio(second), ENCODEC.sample_rate)  # the second utterance's ground truth
    real = cli.asr_backend
    monkeypatch.setattr(cli, "asr_backend", lambda spec, device: Deaf(real(spec, device), target))
    out = tmp_path / "out"
    assert cli.main(command(trained, evalset, out, "--max-utterances", "2", "--samples", "1")) == 0
    task = results(out)["tasks"]["continuation"]
    reason = "asr: RuntimeError: cannot hear this wave"
    assert task["failed"] == {reason: 1} and [r["id"] for r in task["utterances"]] == [first.id]
    assert f"Failed: 1 ({reason})" in (out / "results.md").read_text()
    assert f"Failed: 1 ({reason})" in (out / "index.html").read_text()
    assert [line["row"]["id"] for line in stored(out)[1:]] == [first.id]  # not stored: tried again next time
    capsys.readouterr()

    monkeypatch.setattr(cli, "asr_backend", lambda spec, device: Deaf(real(spec, device), None))
    assert cli.main(command(trained, evalset, tmp_path / "none", "--max-utterances", "1", "--samples", "1")) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "every utterance was skipped or failed" in line and reason in line, line


def test_each_backend_failure_names_its_backend():
    class Raises:
        description = "raises"

        def __init__(self, err):
            self.err = err

        def __call__(self, *args):
            raise self.err

        transcribe_all = embed = score = __call__

    class Hears:
        description = "hears"

        def transcribe_all(self, waves):
            return ["a word"] * len(waves)

        def embed(self, wave):
            return np.ones(4)

        def score(self, wave):
            return {"p808": 3.0}

    wave = np.zeros(ENCODEC.sample_rate, np.float32)
    cases = [
        (Scorer(Raises(MemoryError()), Hears()), "asr: MemoryError"),
        (Scorer(Hears(), Raises(ValueError("no voice\nmore"))), "speaker: ValueError: no voice"),
        (Scorer(Hears(), Hears(), Raises(OSError("model file gone"))), "dnsmos: OSError: model file gone"),
    ]
    for scorer, reason in cases:
        with pytest.raises(BackendFailed) as caught:
            scorer.measure(wave, "a word")
        assert str(caught.value) == reason
    assert Scorer(Hears(), Hears(), Hears()).measure(wave, "a word")["errors"] == 0


def test_seeds_k_makes_k_sampling_runs_and_reports_their_spread(trained, evalset, tmp_path):
    out = tmp_path / "out"
    assert cli.main(command(trained, evalset, out, "--max-utterances", "2", "--seeds", "2")) == 0
    task = results(out)["tasks"]["continuation"]
    runs = task["runs"]
    assert [run["seeds"] for run in runs] == [[0, 1], [2, 3]]  # seed + r * N + k
    assert runs[0]["summary"] == task["summary"] and "utterances" not in runs[0]
    zero, one = task["utterances"], runs[1]["utterances"]
    assert [r["id"] for r in zero] == [r["id"] for r in one]
    assert [r["samples"] for r in zero] != [r["samples"] for r in one]  # other draws
    for a, b in zip(zero, one):  # measured once, the same in every run
        assert a["ground_truth"] == b["ground_truth"] and a["resynthesis"] == b["resynthesis"]
    for name in ("single", "best_of_n", "metric_wise"):
        values = [run["summary"][name]["wer"] for run in runs]
        wer = task["across_runs"][name]["wer"]
        assert wer["mean"] == pytest.approx(np.mean(values)) and (wer["min"], wer["max"]) == (min(values), max(values))
        assert task["across_runs"][name]["sim"]["std"] == pytest.approx(
            np.std([run["summary"][name]["sim"] for run in runs], ddof=1)
        )
    assert results(out)["timing"]["trials"] == 4
    md = (out / "results.md").read_text()
    assert "Across 2 sampling runs: mean (min-max)" in md and "the table above is run 0's" in md
    with pytest.raises(ValueError, match="seeds=0: at least 1"):
        EvalConfig(seeds=0)
