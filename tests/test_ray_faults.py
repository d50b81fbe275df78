"""Broken codec workers through the real Ray executor: the session's local Ray, two CPU codec
workers re-encoding the built tiny corpus, one of them (or both) given a fault by a CodecActor
subclass made here (Ray restarts an actor in a new process, so the faults keep their state in
files).

- a sticky device error ends the actor; Ray restarts it and the run ends with every unit;
- a restart whose constructor fails (the GPU is still broken): that worker is retired, named by
  node and device, and the other one does its units;
- a worker failing units in a row is retired and its units done by the other;
- every worker lost: the run ends, saying so, without hanging;
- a worker failing its first start stops the run at once (every worker would);
- codes of another compute stack are refused.
The runs with a restart or a retirement take 10-20 s each: marked slow."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from pipeline.dag import load_dag
from pipeline.encode.unit import StackChanged
from pipeline.executors.codec_actor import CodecActor
from pipeline.executors.placement import ClusterMismatch
from pipeline.executors.ray_cluster import RayExecutor
from pipeline.runner import RunFailed, run
from tests.conftest import write_dag
from tests.test_out_folder import GPU_STACK, encoded_on
from tests.test_resume_kill import outputs

STICKY = "CUDA error: an illegal memory access was encountered"
ECC = "CUDA error: uncorrectable ECC error encountered"
NOT_STICKY = "cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"
STREAK = 3  # pipeline.executors.streaks.RETIRE_AFTER


def faulty_actor(folder: Path, fault: str, every_worker: bool = False) -> type:
    """A CodecActor with `fault`, for the first actor that reaches it (or every actor):
    - "exit": its first encode hits a sticky device error (the actor exits, Ray restarts it);
    - "exit, ecc on restart": the same, and the restarted actor's constructor raises an ECC error;
    - "fail units": every encode fails with a non-sticky error; the other workers hold their first
      call until it has failed STREAK units, so that its streak completes whatever the timing;
    - "ecc at start": its first constructor raises an ECC error.
    Defined in a function so that Ray ships the class by value, `folder` and `fault` with it."""
    folder = str(folder)

    def mark(name: str) -> None:
        with open(os.path.join(folder, name), "a") as f:
            f.write("x")

    def marks(name: str) -> int:
        path = os.path.join(folder, name)
        return os.path.getsize(path) if os.path.exists(path) else 0

    def chosen(me: str) -> bool:
        """Whether this actor has the fault: the first to ask claims it (kept across restarts)."""
        if every_worker:
            return True
        try:
            fd = os.open(os.path.join(folder, "faulty"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.write(fd, me.encode())
            os.close(fd)
        except FileExistsError:
            pass
        with open(os.path.join(folder, "faulty")) as f:
            return f.read() == me

    class FaultyCodecActor(CodecActor):
        def __init__(self, *args):
            import ray

            self.me = ray.get_runtime_context().get_actor_id()
            mark(f"started-{self.me}")
            if fault == "ecc at start" and chosen(self.me):
                raise RuntimeError(ECC)
            if fault == "exit, ecc on restart" and marks(f"exited-{self.me}"):
                raise RuntimeError(ECC)
            super().__init__(*args)
            run = self.encoder.run
            self.encoder.run = lambda prepared: self._faulty_run(run, prepared)

        def _faulty_run(self, run, prepared):
            if fault in ("exit", "exit, ecc on restart") and not marks(f"exited-{self.me}") and chosen(self.me):
                mark(f"exited-{self.me}")
                raise RuntimeError(STICKY)  # CodecWorker.encode sees a broken device: the actor exits
            if fault == "fail units" and chosen(self.me):
                mark("failed")
                raise RuntimeError(NOT_STICKY)
            deadline = time.monotonic() + 60
            while fault == "fail units" and marks("failed") < STREAK and time.monotonic() < deadline:
                time.sleep(0.05)
            return run(prepared)

    return FaultyCodecActor


def rerun(tmp_path: Path, tiny_corpus, built_corpus, actor: type | None, units: int = 2, workers: int = 2):
    """Encode `units` units of the built corpus again (their ledger entries gone), with `workers`
    CPU codec workers of class `actor`; the run's summary."""
    out = tmp_path / "out"
    shutil.copytree(built_corpus[0].out, out)
    for entry in sorted((out / "ledger").glob("*.json"))[:units]:
        entry.unlink()
    # 2 torch threads each, as the built corpus had: on CPU the thread count can change codes.
    dag = load_dag(write_dag(tmp_path / "tiny.yaml", tiny_corpus, ray={"codec_workers": workers}))
    return run(dag, progress=False, executor=RayExecutor(dag.ray, codec_actor=actor))


def actor_lives(folder: Path) -> list[int]:
    """How many times each actor was constructed (a restart is a new construction)."""
    return sorted(p.stat().st_size for p in folder.glob("started-*"))


@pytest.fixture
def faults(tmp_path) -> Path:
    folder = tmp_path / "faults"
    folder.mkdir()
    return folder


@pytest.mark.slow
def test_a_sticky_device_error_restarts_the_actor_and_the_run_ends_whole(
    tmp_path, tiny_corpus, built_corpus, faults, ray_address
):
    summary = rerun(tmp_path, tiny_corpus, built_corpus, faulty_actor(faults, "exit"))
    assert summary.encoded == 2 and not summary.failed
    assert actor_lives(faults) == [1, 2]  # the faulty one restarted once
    assert outputs(tmp_path / "out") == outputs(built_corpus[0].out)


@pytest.mark.slow
def test_a_worker_whose_restart_fails_is_retired_and_the_others_do_its_units(
    tmp_path, tiny_corpus, built_corpus, faults, ray_address, caplog
):
    """The bug: Ray reports the failed restart as a constructor failure (actor_init_failed), which
    was taken for a first start and stopped the run (ClusterMismatch, exit 1), on every re-run."""
    caplog.set_level("WARNING", logger="pipeline.executors.ray")
    summary = rerun(tmp_path, tiny_corpus, built_corpus, faulty_actor(faults, "exit, ecc on restart"))
    assert summary.encoded == 2 and not summary.failed
    assert actor_lives(faults) == [1, 2]
    assert outputs(tmp_path / "out") == outputs(built_corpus[0].out)
    retired = [r.getMessage() for r in caplog.records if "retired" in r.getMessage()]
    assert len(retired) == 1
    assert "did not restart" in retired[0] and "uncorrectable ECC error" in retired[0]
    assert ", cpu" in retired[0]  # named by node and device, known from its first start


@pytest.mark.slow
def test_a_worker_failing_units_in_a_row_is_retired_and_the_others_do_them(
    tmp_path, tiny_corpus, built_corpus, faults, ray_address, caplog
):
    caplog.set_level("WARNING", logger="pipeline.executors.ray")
    summary = rerun(tmp_path, tiny_corpus, built_corpus, faulty_actor(faults, "fail units"), units=STREAK + 1)
    assert summary.encoded == STREAK + 1 and not summary.failed
    assert (faults / "failed").stat().st_size == STREAK  # never fed again once retired
    assert outputs(tmp_path / "out") == outputs(built_corpus[0].out)
    retired = [r.getMessage() for r in caplog.records if "retired" in r.getMessage()]
    assert len(retired) == 1 and f"failed {STREAK} units in a row" in retired[0] and NOT_STICKY in retired[0]
    assert ", cpu" in retired[0]


@pytest.mark.slow
def test_when_every_worker_is_lost_the_run_ends_saying_so(
    tmp_path, tiny_corpus, built_corpus, faults, ray_address, caplog
):
    caplog.set_level("WARNING", logger="pipeline.executors.ray")
    started = time.monotonic()
    with pytest.raises(RunFailed, match=r"2 unit\(s\) failed.*\n.*every codec worker is lost"):
        rerun(tmp_path, tiny_corpus, built_corpus, faulty_actor(faults, "exit, ecc on restart", every_worker=True))
    assert time.monotonic() - started < 120  # no hang
    retired = [r.getMessage() for r in caplog.records if "retired" in r.getMessage()]
    assert len(retired) == 2 and all("did not restart" in line for line in retired)


def test_a_worker_failing_its_first_start_stops_the_run_at_once(
    tmp_path, tiny_corpus, built_corpus, faults, ray_address
):
    """One of two workers fails its constructor on a fresh run: the cause (weights, driver, device)
    is likely everywhere, so the run stops instead of going on with half the workers."""
    started = time.monotonic()
    with pytest.raises(ClusterMismatch, match="failed to start on node .*uncorrectable ECC error"):
        rerun(tmp_path, tiny_corpus, built_corpus, faulty_actor(faults, "ecc at start"))
    assert time.monotonic() - started < 60


def test_codes_of_another_stack_are_refused_through_ray(tmp_path, tiny_corpus, built_corpus, ray_address):
    """As tests/test_out_folder.py checks in process: the unit that needs codes is refused on
    the worker before any audio is decoded, and the run says why (StackChanged, not a failed unit)."""
    out = tmp_path / "out"
    shutil.copytree(built_corpus[0].out, out)
    _, lost = encoded_on(out, GPU_STACK)
    dag = load_dag(write_dag(tmp_path / "tiny.yaml", tiny_corpus))
    with pytest.raises(StackChanged, match=r"1 unit\(s\) were not encoded: this corpus's codes were made on cuda"):
        run(dag, progress=False, executor=RayExecutor(dag.ray))
    assert not lost.exists()
