"""Executors: placement rules on made-up clusters (per node, never the cluster total; requests
that cannot fit stop at once), the local executor's output equal to Ray's, a codec actor killed
mid-run restarting without changing a byte, and impossible requests on a real Ray refused."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from pipeline.dag import load_dag
from pipeline.executors.local import LocalExecutor
from pipeline.executors.placement import MAX_LANES, ClusterMismatch, plan_slots, uses_gpu
from pipeline.runner import run
from tests.conftest import write_dag
from tests.test_resume_kill import outputs


def node(i: int, cpus: int, gpus: int = 0, alive: bool = True) -> dict:
    resources = {"CPU": float(cpus), **({"GPU": float(gpus)} if gpus else {})}
    return {"NodeID": f"{i:02d}" + "ab" * 27, "Alive": alive, "Resources": resources}


def test_gpu_workers_one_per_gpu_fed_from_their_nodes_cpus():
    nodes = [node(0, 32, 4), node(1, 16, 2), node(2, 8)]
    slots = plan_slots(nodes, True, None, None, None)
    assert len(slots) == 6 and all(s.num_gpus == 1 for s in slots)
    first = [s for s in slots if s.node_id == nodes[0]["NodeID"]]
    assert len(first) == 4
    assert {(s.num_cpus, s.resample_threads, s.threads, s.units_in_flight) for s in first} == {(4, 4, 4, 4)}
    second = [s for s in slots if s.node_id == nodes[1]["NodeID"]]
    assert {(s.num_cpus, s.units_in_flight) for s in second} == {(4, 4)}
    # Per node, what the workers book leaves room for their unit tasks.
    for n in nodes[:2]:
        mine = [s for s in slots if s.node_id == n["NodeID"]]
        assert sum(s.num_cpus for s in mine) + 1 <= n["Resources"]["CPU"]


def test_more_codec_workers_than_gpus_is_refused_with_the_count():
    with pytest.raises(ClusterMismatch, match=r"ray.codec_workers=7 but the Ray cluster has 6 GPUs"):
        plan_slots([node(0, 32, 4), node(1, 16, 2)], True, 7, None, None)
    with pytest.raises(ClusterMismatch, match="no node of the Ray cluster has a GPU"):
        plan_slots([node(0, 32), node(1, 16)], True, None, None, None)
    assert not uses_gpu("auto", [node(0, 8)]) and uses_gpu("auto", [node(0, 8, 1)])
    assert uses_gpu("cuda", [node(0, 8)]) and not uses_gpu("cpu", [node(0, 8, 1)])


def test_cpu_only_workers_use_their_own_nodes_cpus_not_the_cluster_total():
    nodes = [node(0, 16), node(1, 16), node(2, 4), node(3, 64, alive=False)]
    slots = plan_slots(nodes, False, None, None, None)
    # Every CPU of a node is a lane, at most MAX_LANES per worker; each worker books its share
    # but one CPU, which its two unit tasks share. Not 36 or 100 lanes anywhere.
    assert MAX_LANES == 8
    assert [(s.threads, s.num_cpus) for s in slots] == [(8, 7)] * 4 + [(4, 3)]
    assert {(s.units_in_flight, s.unit_cpus) for s in slots} == {(2, 0.5)}
    assert [(s.threads, s.num_cpus) for s in plan_slots([node(0, 20)], False, None, None, None)] == [
        (7, 6),
        (7, 6),
        (6, 5),
    ]
    assert [(s.threads, s.num_cpus) for s in plan_slots([node(0, 2)], False, None, None, None)] == [(2, 1)]
    assert len(plan_slots([node(0, 64)], False, None, None, None)) == 8
    two_per_node = plan_slots(nodes[:2], False, 4, None, None)
    assert [(s.threads, s.num_cpus) for s in two_per_node] == [(8, 7)] * 4
    assert [(s.threads, s.num_cpus) for s in plan_slots([node(0, 16)], False, None, 4, None)] == [(4, 3)] * 4
    with pytest.raises(ClusterMismatch, match="node 02.*has 4 CPUs"):
        plan_slots([node(2, 4)], False, 5, None, None)
    with pytest.raises(ClusterMismatch, match="leave a CPU"):
        plan_slots([node(2, 2)], False, 2, None, None)
    # units_in_flight is a total for the cluster, shared out between the workers (and their CPU)
    shared = plan_slots(nodes[:2], False, None, None, 10)
    assert [(s.units_in_flight, s.unit_cpus) for s in shared] == [(3, 1 / 3)] * 4


def test_local_executor_writes_what_ray_writes(tmp_path, tiny_corpus, built_corpus):
    ray_dag, _ = built_corpus
    dag = load_dag(write_dag(tmp_path / "tiny.yaml", tiny_corpus))
    summary = run(dag, progress=False, executor=LocalExecutor(threads=2))
    assert summary.encoded == summary.units and summary.codec_forward_passes > 0
    assert outputs(dag.out) == outputs(ray_dag.out)


def test_impossible_requests_on_a_real_ray_stop_at_once(tmp_path, tiny_corpus, ray_address):
    dag_path = write_dag(tmp_path / "tiny.yaml", tiny_corpus)
    for setting, message in (
        ("ray.codec_workers=3", "codec_workers=3 puts 3 codec workers"),
        ("codec.device=cuda", "no node of the Ray cluster has a GPU"),
        ("ray.start_timeout_s=0.001", "did not start within"),
    ):
        started = time.monotonic()
        with pytest.raises(ClusterMismatch, match=message):
            run(load_dag(dag_path, [setting]), progress=False)
        assert time.monotonic() - started < 60


def my_codec_actors() -> list:
    import psutil
    import ray  # noqa: F401  (puts Ray's bundled psutil on the path)

    found = []
    for p in psutil.Process().children(recursive=True):  # only processes this session started
        try:
            if "CodecActor" in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:  # gone, or a zombie, meanwhile
            pass
    return found


def test_a_codec_actor_killed_mid_run_restarts_and_nothing_changes(tmp_path, tiny_corpus, built_corpus):
    """SIGKILL the codec actor while units are in flight: Ray restarts it from the weights in the
    object store, the calls it held are retried, and the corpus is byte for byte the same."""
    ray_dag, _ = built_corpus
    dag = load_dag(write_dag(tmp_path / "tiny.yaml", tiny_corpus))
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(summary=run(dag, progress=False)))
    thread.start()
    killed = None
    deadline = time.monotonic() + 240
    while thread.is_alive() and time.monotonic() < deadline and killed is None:
        ledger = dag.out / "ledger"
        actors = my_codec_actors()
        if actors and ledger.exists() and any(ledger.iterdir()):
            killed = actors[0].pid
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    thread.join(600)
    assert killed is not None, "the run ended before its codec actor could be killed"
    assert "summary" in result, "the run did not finish after its codec actor was killed"
    assert outputs(dag.out) == outputs(ray_dag.out)


def test_a_codec_worker_that_cannot_start_stops_the_run(tmp_path, tiny_corpus, ray_address, monkeypatch):
    """Its constructor fails (here: the weights arrive with another hash): every worker would,
    so the run stops at once naming the cause, instead of retrying units forever."""
    from dataclasses import replace

    import pipeline.runner as runner

    real = runner.resolve_codec

    def damaged(cfg):
        spec = real(cfg)
        return replace(spec, weights=replace(spec.weights, sha256="0" * 64))

    monkeypatch.setattr(runner, "resolve_codec", damaged)
    started = time.monotonic()
    with pytest.raises(ClusterMismatch, match="failed to start.*damaged on the way"):
        run(load_dag(write_dag(tmp_path / "tiny.yaml", tiny_corpus)), progress=False)
    assert time.monotonic() - started < 120


class _FailsToStart:
    def __init__(self):
        raise RuntimeError("weights damaged on the way")

    def encode(self):
        return 1


def _call_it(actor):
    import ray

    return ray.get(actor.encode.remote())


def test_a_unit_that_sees_its_worker_fail_to_start_names_the_cause(ray_address):
    """The unit calling a worker whose constructor failed often fails before the start-up probe
    is seen: its error alone must stop the run with the cause, not be retried as a lost worker."""
    import ray

    from pipeline.executors.placement import CodecSlot
    from pipeline.executors.ray_cluster import _stop_if_start_failed, _Worker

    actor = ray.remote(max_restarts=1)(_FailsToStart).remote()
    with pytest.raises(ray.exceptions.RayError) as seen_by_unit:
        ray.get(ray.remote(_call_it).remote(actor))
    worker = _Worker(
        CodecSlot(node_id="ab" * 28, num_cpus=1, num_gpus=0, threads=1, resample_threads=1, units_in_flight=1),
        actor,
        "ab" * 28,
    )
    with pytest.raises(ClusterMismatch, match="failed to start on node abababab: .*damaged on the way"):
        _stop_if_start_failed(worker, seen_by_unit.value)
    worker.starting = False  # it was up: a restart that fails retires it (tests/test_ray_faults.py)
    _stop_if_start_failed(worker, seen_by_unit.value)
    _stop_if_start_failed(worker, RuntimeError("a unit's own error"))  # not a start-up failure


def test_unit_tasks_do_not_import_torch():
    """A unit task imports ray_cluster (its function) and codec_actor (its actor handle's class):
    neither may pull in torch, which costs a decode worker ~350 MB and seconds to start."""
    import subprocess
    import sys

    code = (
        "import sys; import pipeline.executors.ray_cluster, pipeline.executors.codec_actor; "
        "print(sorted(m for m in ('torch', 'encodec') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert out.stdout.strip() == "[]"
