"""Outages of the training data beyond remote reads in the step loop: local files whose reads
fail or vanish, reads that hang, the dev set, the corpora at startup, DataLoader workers; the
control group outlasting the retry budget (two real ranks, gloo); and under valle-torchrun (world
size 2, 2 loader workers): exit code 3 and one message ending in the --resume hint.

Faults, without FUSE: a shard whose path is a symlink to itself fails with ELOOP, a plain OSError
as EIO and ESTALE are (the errors of a file server that went away); a FIFO no one writes stands in
for a read on a hung NFS hard mount (opening it blocks in the kernel); a renamed shard vanished."""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

import storage.remote as storage
from sample.corpora import speaker_blocks, write_corpus
from tests.conftest import REPO
from tests.test_remote import tiny_training

HINT = "run the same command with --resume (data.retry_minutes sets how long a failing read is retried)"


@pytest.fixture
def corpus(tmp_path):
    """8 shards of 30 cuts and a dev shard; written per test, as each test breaks some of it."""
    return write_corpus(
        tmp_path / "corpus", speaker_blocks(8, 3, 10, frames=40, text_tokens=6), dev=speaker_blocks(1, 2, 3)
    )


@pytest.fixture
def few_quick_attempts(monkeypatch):
    """Three tries in a row, milliseconds apart (inherited by forked loader workers)."""
    monkeypatch.setattr(storage, "ATTEMPTS", 3)
    monkeypatch.setattr(storage, "BACKOFF_S", 0.01)
    monkeypatch.setattr(storage, "BACKOFF_CAP_S", 0.05)


def shards(root: Path, subset: str = "large") -> list[Path]:
    return sorted((root / "webdataset" / subset).glob("*.tar"))


def break_file(path: Path) -> Path:
    """The path becomes a symlink to itself (opening it fails with ELOOP); returns where the file went."""
    away = path.with_name(path.name + ".away")
    path.rename(away)
    path.symlink_to(path.name)
    return away


def training(out: Path, *extra: str):
    """ar-tiny on a few small batches, no retry budget unless `extra` gives one."""
    return tiny_training(out, "data.retry_minutes=0", *extra)


def test_a_local_file_that_cannot_be_read_for_a_while_is_read_once_it_can(corpus, few_quick_attempts, caplog):
    shard = shards(corpus)[0]
    expected = shard.read_bytes()
    away = break_file(shard)

    def put_back():
        time.sleep(0.5)
        away.rename(shard)  # replaces the symlink

    threading.Thread(target=put_back).start()
    with storage.retry_budget_of(3.0), caplog.at_level("WARNING", logger="storage.retry"):
        assert storage.read_bytes(str(shard)) == expected
    assert any("Too many levels of symbolic links" in r.getMessage() for r in caplog.records)


def test_a_local_file_that_keeps_failing_is_named(corpus, few_quick_attempts):
    shard = shards(corpus)[0]
    break_file(shard)
    started = time.monotonic()
    with storage.retry_budget_of(0.3), pytest.raises(storage.StorageError, match=rf"{shard}: still failing after"):
        storage.read_bytes(str(shard))
    assert time.monotonic() - started >= 0.3  # the budget was spent first


def test_a_local_file_that_is_not_there_fails_at_once(corpus, few_quick_attempts):
    """Missing, or a folder where the file should be: what the storage says, not a failure to
    reach it (as an HTTP 404); valle-prep verify reports both as missing."""
    missing, folder = shards(corpus)[:2]
    missing.unlink()
    folder.unlink()
    folder.mkdir()
    with storage.retry_budget_of(60):
        with pytest.raises(FileNotFoundError):
            storage.read_bytes(str(missing))
        with pytest.raises(IsADirectoryError):
            storage.read_bytes(str(folder))


def test_local_shards_that_keep_failing_stop_training_with_one_line_saying_how_to_go_on(
    corpus, few_quick_attempts, tmp_path, monkeypatch
):
    """Shards break at step 3, read by 2 DataLoader workers: the worker's error reaches the user
    as one line naming the shard, not the worker's traceback."""
    import trainer.train as train_module

    real, calls = train_module.accumulate_gradients, []

    def shards_fail_from_step_3(*args):
        calls.append(1)
        if len(calls) == 3:
            for shard in shards(corpus):
                break_file(shard)
        return real(*args)

    monkeypatch.setattr(train_module, "accumulate_gradients", shards_fail_from_step_3)
    cfg = training(tmp_path / "run", "run.max_steps=200", "run.checkpoint_every=2", "data.workers=2")
    with pytest.raises(train_module.DataUnavailable) as stop:
        train_module.train(cfg, [str(corpus)], allow_random_codec=True)
    message = str(stop.value)
    assert "\n" not in message and "Traceback" not in message, message
    assert f"rank 0 cannot read its data ({corpus}/webdataset/large/" in message
    assert "still failing after 3 attempts" in message and "Too many levels of symbolic links" in message
    assert "The newest checkpoint is checkpoint-" in message and message.endswith(HINT)


def test_a_dev_set_that_cannot_be_read_stops_training_the_same_way(corpus, few_quick_attempts, tmp_path):
    from trainer.train import DataUnavailable, train

    break_file(shards(corpus, "dev")[0])
    cfg = training(tmp_path / "run", "run.max_steps=6", "run.eval_every=4", "run.checkpoint_every=2")
    with pytest.raises(DataUnavailable, match=r"dev/dev-000000-000\.tar: still failing after 3 attempts") as stop:
        train(cfg, [str(corpus)], allow_random_codec=True)
    # the evaluation at step 4 comes before that step's checkpoint
    assert "stopped at step 4, reading the dev set. The newest checkpoint is checkpoint-2.pt" in str(stop.value)


def test_a_read_that_hangs_at_startup_stops_after_the_read_timeout(corpus, tmp_path):
    """lengths.parquet is a FIFO no one writes: opening it blocks, as a read on a hung NFS hard
    mount does. The rank stops after data.retry_minutes + data.read_timeout_s, not never."""
    from trainer.train import DataUnavailable, train

    lengths = next(corpus.glob("lengths*.parquet"))
    lengths.rename(lengths.with_name("kept.parquet"))
    os.mkfifo(lengths)
    outcome = []

    def run():
        try:
            train(training(tmp_path / "run", "data.read_timeout_s=0.5"), [str(corpus)], allow_random_codec=True)
        except Exception as err:  # noqa: BLE001 (the test inspects it)
            outcome.append(err)

    worker = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    worker.start()
    worker.join(30)
    try:
        assert not worker.is_alive(), "training still waits for a read that hangs"
        assert time.monotonic() - started < 20
        assert len(outcome) == 1 and isinstance(outcome[0], DataUnavailable), outcome
        assert "every rank stopped at startup, reading the corpora" in str(outcome[0])
        assert "no data came in 0.5 s (data.retry_minutes + data.read_timeout_s)" in str(outcome[0])
    finally:
        release(lengths)


def release(fifo: Path) -> None:
    """Open a FIFO for writing and close it: a reader blocked opening it gets an empty file."""
    for _ in range(50):
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # ENXIO: no reader (yet, or any more)
            pass
        time.sleep(0.02)


# Two real ranks (spawned processes, gloo): rank 1 reads through a proxy whose shards answer 503,
# rank 0 through one that works, so rank 0 waits in the control group while rank 1 retries.
RETRY_S = 3.0
SHORT_PG_TIMEOUT = timedelta(seconds=1.5)  # torch's default (30 min for gloo, 10 for NCCL), scaled down


def _rank(rank: int, port: int, urls: list[str], out: str, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    os.environ.update(LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    import torch.distributed as dist

    import trainer.distributed
    from trainer.train import train

    storage.ATTEMPTS, storage.BACKOFF_S, storage.BACKOFF_CAP_S = 2, 0.05, 0.2
    real_init = trainer.distributed.Run.__init__

    def init_then_shorten(self, *args, **kwargs):  # groups made after the default group's wait 1.5 s
        real_init(self, *args, **kwargs)
        dist.distributed_c10d.default_pg_timeout = SHORT_PG_TIMEOUT

    trainer.distributed.Run.__init__ = init_then_shorten
    cfg = training(Path(out), "run.max_steps=4", f"data.retry_minutes={RETRY_S / 60}")
    try:
        train(cfg, [urls[rank]], allow_random_codec=True)
        results.put((rank, "finished", ""))
    except Exception as err:  # noqa: BLE001 (the test inspects it)
        results.put((rank, type(err).__name__, str(err)))


@pytest.mark.slow
def test_the_ranks_agree_on_a_stop_after_the_retry_budget_before_the_group_times_out(corpus, tmp_path):
    from sample.faulty_proxy import FaultyProxy
    from sample.http_mirror import HttpMirror

    with (
        HttpMirror(corpus) as mirror,
        FaultyProxy(mirror.base_url, schedule=()) as working,
        FaultyProxy(mirror.base_url, schedule=["503"] * 1000, only=(".tar",)) as failing,
    ):
        context = multiprocessing.get_context("spawn")
        results = context.Queue()
        port = free_port()
        ranks = [
            context.Process(
                target=_rank, args=(r, port, [working.base_url, failing.base_url], str(tmp_path / "run"), results)
            )
            for r in range(2)
        ]
        for p in ranks:
            p.start()
        got = sorted(results.get(timeout=120) for _ in ranks)
        for p in ranks:
            p.join(30)
    assert [kind for _, kind, _ in got] == ["DataUnavailable", "DataUnavailable"], got
    assert all(f"rank 1 cannot read its data ({failing.base_url}/webdataset/large/" in text for _, _, text in got)
    for _, _, text in got:  # rank 1 retried for the budget (3 s), twice the group's default timeout
        assert re.search(r"\.tar: still failing after \d+ attempts \(([3-9]|\d\d)\.\d s\)", text), text
        assert "every rank stopped at step 0. No checkpoint was written yet" in text


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def valle_torchrun(corpus: Path, out: Path, fault, *overrides: str, timeout_s: float = 120):
    """valle-torchrun, world size 2 (gloo, CPU), 2 loader workers each; `fault(corpus)` once the
    first checkpoint is written. Returns (exit code, stderr, seconds from the fault to the exit)."""
    cmd = [
        sys.executable,
        "-m",
        "trainer.launch",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "trainer.train",
        str(REPO / "trainer/configs/ar-tiny.yaml"),
        "--data",
        str(corpus),
        "--allow-random-codec",
        f"run.out={out}",
        "run.max_steps=500",
        "run.log_every=1000",
        "run.eval_every=1000",
        "run.checkpoint_every=2",
        "data.workers=2",
        "data.max_frames=200",
        "data.interleave=2",
        "data.retry_minutes=0",
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    out.mkdir(parents=True)
    with (out / "stderr.txt").open("w") as err, (out / "stdout.txt").open("w") as std:  # files: an orphan
        launcher = subprocess.Popen(cmd, stdout=std, stderr=err, env=env, cwd=REPO)  # holding a pipe cannot block
        try:
            while not (out / "checkpoint-2.pt").exists() and launcher.poll() is None:
                time.sleep(0.05)
            fault(corpus)
            faulted = time.monotonic()
            code = launcher.wait(timeout_s)
        except subprocess.TimeoutExpired:
            launcher.send_signal(signal.SIGTERM)  # torchrun stops its workers
            launcher.wait(30)
            code = None
    return code, (out / "stderr.txt").read_text(), time.monotonic() - faulted


def assert_one_message_ending_in_the_hint(stderr: str, *expected: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr and "terminate called" not in stderr, stderr[-3000:]  # nor an abort at exit
    assert stderr.count("valle-train: ") == 1, stderr[-3000:]
    last = lines[-1]
    assert last.startswith("valle-train: rank ") and last.endswith(HINT), last
    assert "The newest checkpoint is checkpoint-" in last
    for text in expected:
        assert text in last, last
    # torch's own: a deprecation warning per rank (2 lines each) and the agent's 1-2 lines
    assert len(lines) <= 8, stderr


@pytest.mark.slow
def test_under_valle_torchrun_shards_that_vanish_exit_3_with_one_message(corpus, tmp_path):
    def remove_shards(root):
        for shard in shards(root):
            shard.rename(shard.with_name(shard.name + ".away"))

    code, stderr, _ = valle_torchrun(corpus, tmp_path / "run", remove_shards)
    assert code == 3, stderr[-3000:]
    assert_one_message_ending_in_the_hint(stderr, "No such file or directory", f"{corpus}/webdataset/large/")


@pytest.mark.slow
def test_under_valle_torchrun_reads_that_hang_exit_3_with_one_message(corpus, tmp_path):
    fifos = []

    def shards_hang(root):
        for shard in shards(root):
            shard.rename(shard.with_name(shard.name + ".away"))
            os.mkfifo(shard)
            fifos.append(shard)

    try:
        code, stderr, after = valle_torchrun(corpus, tmp_path / "run", shards_hang, "data.read_timeout_s=2")
    finally:
        for fifo in fifos:  # loader workers of a run that never stopped would stay blocked
            release(fifo)
    assert code == 3, stderr[-3000:]
    assert after < 60
    assert_one_message_ending_in_the_hint(stderr, "no batch came in 2 s", "its reads hang or keep failing")
