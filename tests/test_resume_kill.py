"""`valle-prep run` killed with SIGKILL (the whole process group, as on machine loss) at several
points, then re-run with the same command, ends with the same index, shards, rejects and BPE
model, byte for byte, as an uninterrupted run: on the tiny Libriheavy corpus and on the bundled
lhotse sample (dags/sample-lhotse.yaml). The runs join the session's Ray cluster by address
(`--ray-address`), which is also how a user joins a real cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.inspect.verify import verify
from tests.conftest import REPO, write_dag

pytestmark = pytest.mark.slow


def command(dag: Path | list[str], out: Path, ray_address: str) -> list[str]:
    """`valle-prep run` of `dag` (a DAG file, or one and its `--set` arguments) into `out`."""
    return [
        sys.executable,
        "-m",
        "pipeline.cli",
        "run",
        *([str(dag)] if isinstance(dag, Path) else dag),
        "--out",
        str(out),
        "--ray-address",
        ray_address,
        "--no-progress",
    ]


# The shipped lhotse sample's DAG, with a random-init codec and the Ray sizes write_dag gives the
# tiny corpus (the session's cluster has 3 CPUs).
LHOTSE_SAMPLE = [
    str(REPO / "dags/sample-lhotse.yaml"),
    *("--set", "codec.weights=random"),
    *("--set", "ray.units_in_flight=2", "--set", "ray.cpus_per_codec_worker=2"),
]


def outputs(out: Path) -> dict[str, bytes]:
    """What a user consumes: the index, rejects, shards and the BPE model."""
    keep = ("index.json", "rejects.jsonl", "text/bpe.model")
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file()
        and (
            p.relative_to(out).as_posix() in keep or p.parts[len(out.parts)] in ("webdataset", "parquet", "lhotse_shar")
        )
    }


def committed_units(out: Path) -> int:
    n = 0
    for entry in (out / "ledger").glob("*.json"):
        try:
            n += "shards" in json.loads(entry.read_text())
        except ValueError:
            pass
    return n


def kill_when(cmd: list[str], ready, timeout: float = 120) -> bool:
    """Start `cmd`, SIGKILL its process group once ready() holds; True if it was still running."""
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline and not ready():
        time.sleep(0.01)
    alive = proc.poll() is None
    if alive:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return alive


@pytest.mark.parametrize(
    "corpus, kill_at",
    [
        ("libriheavy", ["planning", "first unit committed", "half the units committed"]),
        ("lhotse", ["planning", "half the units committed"]),  # planning: the recordings + supervisions join
    ],
    ids=["libriheavy", "lhotse"],
)
def test_sigkill_then_rerun_gives_identical_output(tmp_path, request, ray_address, corpus, kill_at):
    if corpus == "libriheavy":
        dag = write_dag(tmp_path / "tiny.yaml", request.getfixturevalue("tiny_corpus"))
        clean = tmp_path / "clean"
        subprocess.run(command(dag, clean, ray_address), check=True, capture_output=True)
    else:  # the uninterrupted run is the one built in process: the CLI on Ray must give the same bytes
        dag, clean = LHOTSE_SAMPLE, request.getfixturevalue("lhotse_sample")[0].out
    expected = outputs(clean)
    units = len(list((clean / "ledger").glob("*.json")))
    assert units >= 4 and verify(clean) == []
    assert json.loads(expected["index.json"])["rejects"]["by_reason"]["missing_audio"] == 1  # both have one

    points = {
        "planning": lambda out: (out / "plan").exists(),
        "first unit committed": lambda out: committed_units(out) >= 1,
        "half the units committed": lambda out: committed_units(out) >= units // 2,
    }
    points = {name: points[name] for name in kill_at}
    for name, ready in points.items():
        out = tmp_path / name.replace(" ", "-")
        assert kill_when(command(dag, out, ray_address), lambda: ready(out)), (
            f"{name}: the run finished before it could be killed"
        )
        assert not (out / "index.json").exists()
        done = subprocess.run(command(dag, out, ray_address), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        assert outputs(out) == expected, f"killed at {name}: output differs from a clean run"
        assert not list(out.rglob("*.partial"))


def test_killed_twice_resumes_without_redoing_committed_units(tmp_path, tiny_corpus, ray_address):
    dag = write_dag(tmp_path / "tiny.yaml", tiny_corpus)
    out = tmp_path / "out"
    assert kill_when(command(dag, out, ray_address), lambda: committed_units(out) >= 2)
    committed = committed_units(out)
    assert kill_when(command(dag, out, ray_address), lambda: committed_units(out) >= committed + 1)
    done = subprocess.run(command(dag, out, ray_address), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    # The summary line counts units encoded in this last run: never the ones committed before.
    total = len(list((out / "ledger").glob("*.json")))
    line = done.stdout.strip().splitlines()[-1]
    encoded = int(line.split("units: ")[1].split(" (")[1].split(" encoded")[0])
    assert encoded <= total - committed - 1, line
    assert verify(out) == []


def test_the_cli_with_its_own_embedded_ray_runs_to_the_end(tmp_path, tiny_corpus, built_corpus):
    """The README's first command: no --ray-address, so the run starts an embedded Ray itself
    (for the downloads, then the units) and must keep it up until the end; same output as the
    in-process run."""
    dag = write_dag(tmp_path / "tiny.yaml", tiny_corpus)
    out = tmp_path / "cli-out"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", str(dag), "--out", str(out), "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert outputs(out) == outputs(built_corpus[0].out)
