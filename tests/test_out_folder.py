"""A safe output folder: one run at a time (a killed holder does not block), committed units
that leave the plan are kept until --prune, and a refused run changes nothing on disk."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.dag import load_dag
from pipeline.executors.local import LocalExecutor
from pipeline.inspect.verify import verify
from pipeline.output.lock import LOCK_NAME, OutputLocked, exclusive
from pipeline.runner import SettingsChanged, run
from storage.hashing import sha256_file
from storage.locks import LockLost, read_record, record_path, take
from tests.conftest import REPO, write_dag

HOLD = (
    "import sys, time; from pathlib import Path; from pipeline.output.lock import exclusive\n"
    "with exclusive(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(600)\n"
)


def snapshot(out: Path) -> dict[str, bytes]:
    """Every file but the output lock's (its record names the last run that held it)."""
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and not p.name.startswith(LOCK_NAME)
    }


def hold_lock(out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_run_stops_at_once_naming_the_first(tmp_path, tiny_corpus):
    out = tmp_path / "out"
    holder = hold_lock(out)
    try:
        dag = write_dag(tmp_path / "tiny.yaml", tiny_corpus)
        started = time.monotonic()
        cli = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "run", str(dag), "--out", str(out), "--no-progress"],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert cli.returncode == 1
        assert f"pid {holder.pid}" in cli.stderr and f"host {socket.gethostname()}" in cli.stderr
        assert time.monotonic() - started < 60  # no Ray, no codec, no download: it stopped first
        assert all(p.name.startswith(LOCK_NAME) for p in out.iterdir())  # the lock's files only
    finally:
        holder.kill()
        holder.wait()
    # The holder was killed (SIGKILL): its lock went with it, whatever its record still says.
    assert read_record(out / LOCK_NAME)["pid"] == holder.pid
    with exclusive(out) as me:
        assert me.record["pid"] == os.getpid()
        with pytest.raises(OutputLocked, match=f"pid {os.getpid()}"):
            with exclusive(out):
                pass
    assert read_record(out / LOCK_NAME)["released"]  # marked, not deleted, when a run ends


def test_units_that_leave_the_plan_are_kept_until_prune(tmp_path, tiny_corpus, built_corpus):
    built, _ = built_corpus
    out = tmp_path / "out"
    shutil.copytree(built.out, out)
    dev_units = sorted(p.stem for p in (out / "ledger").glob("*.json") if json.loads(p.read_text())["subset"] == "dev")
    assert dev_units
    checksums = {
        p.name: f"sha256:{sha256_file(p)}" for p in (tiny_corpus.manifests["small"], tiny_corpus.tars["small"])
    }
    dag = load_dag(
        write_dag(
            tmp_path / "tiny.yaml",
            tiny_corpus,
            subsets={"train": ["small"], "dev": []},
            source={"checksums": checksums},
        )
    )
    kept = run(dag, progress=False, executor=LocalExecutor())
    assert kept.orphans == dev_units and not kept.pruned
    assert kept.codec_forward_passes == 0 and kept.skipped == kept.units
    assert set(kept.index["subsets"]) == {"small"}  # the index describes the plan
    assert all((out / "ledger" / f"{u}.json").exists() for u in dev_units)
    assert list((out / "webdataset" / "dev").iterdir())
    assert verify(out) == []

    pruned = run(dag, prune=True, progress=False, executor=LocalExecutor())
    assert pruned.orphans == dev_units and pruned.pruned
    assert not any((out / "ledger" / f"{u}.json").exists() for u in dev_units)
    assert not list((out / "webdataset" / "dev").glob("*.tar")) and not list((out / "work").rglob("*dev*"))
    assert run(dag, progress=False, executor=LocalExecutor()).orphans == []


@pytest.mark.parametrize(
    "changes", [["codec.bandwidth=3.0", "text.bpe.vocab_size=48"], ["plan.unit_hours=0.5"], ["codec.precision=bf16"]]
)
def test_a_refused_run_changes_nothing_on_disk(tmp_path, tiny_corpus, built_corpus, changes):
    built, _ = built_corpus
    out = tmp_path / "out"
    shutil.copytree(built.out, out)
    shutil.rmtree(out / "downloads")  # so that a download before the check would show
    before = snapshot(out)
    dag = load_dag(write_dag(tmp_path / "tiny.yaml", tiny_corpus), changes)
    with pytest.raises(SettingsChanged, match="Nothing was changed") as refused:
        run(dag, progress=False, executor=LocalExecutor())
    assert snapshot(out) == before
    if "codec.precision=bf16" in changes:  # modes are never mixed
        assert "codec.precision: 'exact' -> 'bf16'" in str(refused.value)


def test_corpora_from_before_the_precision_setting_stay_current(tmp_path, tiny_corpus, built_corpus):
    """Their corpus.json has no precision (they were exact): accepted as is, nothing re-encoded."""
    built, first = built_corpus
    assert first.index["provenance"]["codec"]["precision"] == "exact"
    out = tmp_path / "out"
    shutil.copytree(built.out, out)
    corpus = json.loads((out / "corpus.json").read_text())
    del corpus["audio"]["codec"]["precision"]
    (out / "corpus.json").write_text(json.dumps(corpus))
    again = run(load_dag(write_dag(tmp_path / "tiny.yaml", tiny_corpus)), progress=False, executor=LocalExecutor())
    assert again.skipped == again.units and again.codec_forward_passes == 0


def other_hosts_record(out: Path, age_s: float) -> None:
    """What a driver on another host leaves in the lock's record while it runs (or after it died):
    the next generation of the record, as its takeover made it."""
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "host": "gpu-node-17",
        "pid": 4242,
        "token": "its-own",
        "gen": (read_record(out / LOCK_NAME) or {}).get("gen", 0) + 1,
        "started": "2026-12-01T00:00:00+0000",
        "heartbeat": time.time() - age_s,
    }
    record_path(out / LOCK_NAME).write_text(json.dumps(record) + "\n")


def test_a_run_on_another_host_is_seen_where_flock_does_not_reach(tmp_path):
    """flock is node-local on some cluster file systems: the heartbeat record tells a live run on
    another host (refused) from a dead one (taken over), and --force-unlock takes either."""
    out = tmp_path / "out"
    other_hosts_record(out, age_s=5)
    with pytest.raises(OutputLocked, match=r"another host \(host gpu-node-17, pid 4242.*--force-unlock"):
        with exclusive(out):
            pass
    assert read_record(out / LOCK_NAME)["host"] == "gpu-node-17"  # a refused run changes nothing
    with exclusive(out, force=True) as me:
        assert read_record(out / LOCK_NAME)["pid"] == me.record["pid"] == os.getpid()
    other_hosts_record(out, age_s=3600)
    with exclusive(out) as me:
        assert read_record(out / LOCK_NAME)["host"] == socket.gethostname()


def test_the_heartbeat_is_renewed_while_the_run_holds_the_folder(tmp_path):
    out = tmp_path / "out"
    with exclusive(out, heartbeat_s=0.05):
        first = read_record(out / LOCK_NAME)["heartbeat"]
        time.sleep(0.3)
        assert read_record(out / LOCK_NAME)["heartbeat"] > first
    assert read_record(out / LOCK_NAME)["released"]


def test_a_run_whose_lock_is_taken_over_stops_and_commits_no_unit(tmp_path, tiny_corpus, monkeypatch):
    """Another host takes the output over as the units start (this driver was paused past the
    stale time): every unit is refused at its first check and the run stops with LockLost (exit
    code 4 from valle-prep), not a unit failure; no ledger entry, no index."""

    class TakenOverAsUnitsStart(LocalExecutor):
        def run_units(self, jobs, codec, progress):
            monkeypatch.setattr(fcntl, "flock", lambda fd, op: None)  # another host's flock
            self.other = take(jobs[0].out / LOCK_NAME, host="host-b", force=True, heartbeat_s=60)
            return super().run_units(jobs, codec, progress)

    dag = load_dag(write_dag(tmp_path / "tiny.yaml", tiny_corpus))
    executor = TakenOverAsUnitsStart()
    try:
        with pytest.raises(LockLost, match="taken over by host host-b"):
            run(dag, progress=False, executor=executor)
        assert read_record(dag.out / LOCK_NAME) == executor.other.record
    finally:
        executor.other.release()
    assert not list((dag.out / "ledger").glob("*.json")) and not (dag.out / "index.json").exists()


def test_a_file_system_without_locks_is_a_clear_error(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(OutputLocked, match=r"refuses locks \(ENOLCK.*--force-unlock"):
        with exclusive(tmp_path / "out"):
            pass
    with exclusive(tmp_path / "out", force=True) as me:
        assert me.record["pid"] == os.getpid()


GPU_STACK = {"device": "cuda", "torch": "2.15.0+cu132", "cudnn": 91002, "precision": "exact"}


def encoded_on(out: Path, stack: dict) -> tuple[list[str], Path]:
    """Make every unit's codes say they were made on `stack`, and delete one unit's codes file, so
    that a re-run must encode that unit again (here, on another stack); (the units, that file)."""
    from pipeline.output import ledger

    units = sorted(p.stem for p in (out / "ledger").glob("*.json"))
    for name in units:
        entry = ledger.read_entry(out, name)
        entry["codes"]["stack"] = stack
        ledger.write_entry(out, name, entry)
    lost = out / ledger.read_entry(out, units[0])["codes"]["path"]
    lost.unlink()
    return units, lost


def test_codes_of_another_compute_stack_join_a_corpus_only_when_allowed(tmp_path, tiny_corpus, built_corpus, caplog):
    """Every unit's codes record the stack that made them (device, torch, cuDNN, precision). A
    re-run that would encode on another stack is refused before any audio is decoded, unless
    --allow-stack-change; status lists every stack."""
    import torch

    from pipeline.encode.unit import StackChanged
    from pipeline.inspect.status import corpus_status, format_status

    out = tmp_path / "out"
    shutil.copytree(built_corpus[0].out, out)
    stacks = corpus_status(out)["stacks"]
    assert [s["stack"]["device"] for s in stacks] == ["cpu"] and stacks[0]["stack"]["cudnn"] is None
    gpu = GPU_STACK
    units, lost = encoded_on(out, gpu)  # as if encoded on a GPU node; `lost` is encoded again here
    dag = load_dag(write_dag(tmp_path / "tiny.yaml", tiny_corpus))
    with pytest.raises(
        StackChanged,
        match=r"made on cuda \(torch 2\.15\.0\+cu132, cuDNN 91002, exact\); this codec "
        r"worker is cpu .*--allow-stack-change",
    ):
        run(dag, progress=False, executor=LocalExecutor())
    assert not lost.exists()  # refused before encoding anything
    assert "made on a device whose model was not recorded" in caplog.text  # this record predates them
    run(dag, progress=False, executor=LocalExecutor(), allow_stack_change=True)
    stacks = {s["stack"]["device"]: s["units"] for s in corpus_status(out)["stacks"]}
    assert stacks == {"cuda": len(units) - 1, "cpu": 1}
    index = json.loads((out / "index.json").read_text())
    isa = torch.backends.cpu.get_cpu_capability()
    cpu = {"device": "cpu", "torch": torch.__version__, "cudnn": None, "precision": "exact", "cpu": isa}
    cpu["cpu_pass"] = "one utterance, 1 thread, FastELU"
    assert sorted(index["provenance"]["codec"]["stacks"], key=lambda s: s["device"]) == [
        {**cpu, "units": 1},
        {**gpu, "units": len(units) - 1},
    ]
    text = format_status(corpus_status(out))
    assert "codes made on:" in text
    assert f"  cuda (torch 2.15.0+cu132, cuDNN 91002, exact): {len(units) - 1} unit(s)" in text
    assert f"\n  cpu ({isa}, one utterance, 1 thread, FastELU, torch " in text


def test_codes_of_another_device_model_are_refused(monkeypatch):
    """A GPU's stack names its model and compute capability: codes made on an A100 are not
    joined by an H100's; a CPU's names its instruction set: AVX2 codes are not joined by AVX512
    ones. A stack recorded before devices were named names none, so it refuses no model. No GPU
    here, one CPU: the device queries are faked; what is tested is the record and the comparison."""
    from types import SimpleNamespace

    import torch

    from pipeline.encode.codec_worker import CodecWorker
    from pipeline.encode.unit import StackChanged, check_stack
    from tokens.codec_settings import CodecConfig
    from tokens.codec_weights import resolve_weights

    cfg = CodecConfig(weights="random", device="cpu")
    worker = CodecWorker(cfg, *resolve_weights(cfg))

    def on_cpu(isa: str) -> dict:
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: isa)
        return worker.stack()

    avx2, avx512 = on_cpu("AVX2"), on_cpu("AVX512")
    assert avx2 == {
        "device": "cpu",
        "torch": torch.__version__,
        "cudnn": None,
        "precision": "exact",
        "cpu": "AVX2",
        "cpu_pass": "one utterance, 1 thread, FastELU",
    }
    assert avx512 == {**avx2, "cpu": "AVX512"}

    def job(stack: dict, *known: dict):
        return SimpleNamespace(codec_stack=stack, known_stacks=known, allow_new_stack=False)

    check_stack(job(avx2, avx2))
    with pytest.raises(StackChanged, match=r"made on cpu \(AVX2, one utterance, .*worker is cpu \(AVX512, one "):
        check_stack(job(avx512, avx2))
    check_stack(job(avx512, {k: v for k, v in avx2.items() if k != "cpu"}))  # an older record
    # A CPU pass is part of the stack: codes made before passes were recorded (torch's ELU, 120 s
    # batches on every core), or in batches, are not joined by one-utterance codes.
    before_passes = {k: v for k, v in avx512.items() if k != "cpu_pass"}
    with pytest.raises(StackChanged, match=r"made on cpu \(AVX512, torch .*worker is cpu \(AVX512, one utterance, "):
        check_stack(job(avx512, before_passes))
    batches = CodecWorker(replace(cfg, batch_seconds=5.0), *resolve_weights(cfg)).stack()
    assert batches["cpu_pass"] == "5 s batches, 1 thread, FastELU"
    with pytest.raises(StackChanged, match=r"5 s batches, 1 thread, FastELU"):
        check_stack(job(batches, avx512))

    worker.encoder._device = torch.device("cuda", 0)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91002)

    def on_gpu(name: str, capability: tuple[int, int]) -> dict:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: name)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: capability)
        return worker.stack()

    a100, h100 = on_gpu("NVIDIA A100-SXM4-80GB", (8, 0)), on_gpu("NVIDIA H100 80GB HBM3", (9, 0))
    assert h100 == {**a100, "gpu": "NVIDIA H100 80GB HBM3", "capability": "9.0"}

    check_stack(job(a100, a100))
    with pytest.raises(
        StackChanged,
        match=r"made on cuda \(NVIDIA A100-SXM4-80GB, compute capability 8\.0, torch .*"
        r"worker is cuda \(NVIDIA H100 80GB HBM3, compute capability 9\.0, ",
    ):
        check_stack(job(h100, a100))
    unnamed = {k: v for k, v in a100.items() if k not in ("gpu", "capability")}  # an older record
    check_stack(job(h100, unnamed))
    with pytest.raises(StackChanged):
        check_stack(job({**h100, "cudnn": 91100}, unnamed))  # the rest still counts
