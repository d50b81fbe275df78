"""Remote corpora over a long run: s3 (a moto server on 127.0.0.1) and http, behind a proxy that
answers 503 and drops connections mid-shard. Reads retry with backoff and resume where they
stopped, so one epoch with DataLoader workers still delivers every sample exactly once; a shard
that keeps failing is reported with its URL; every process reads s3 with its own client."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from torch.utils.data import DataLoader, IterableDataset

import storage.remote as storage
from sample.corpora import speaker_blocks, write_corpus
from sample.faulty_proxy import FaultyProxy
from sample.http_mirror import HttpMirror
from trainer.batching import BatchingConfig, plan_epoch
from trainer.corpus import open_corpus
from trainer.loader import make_loader


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory):
    """8 shards of 30 cuts (about 30 KB each, so a drop lands mid-shard), both formats."""
    return write_corpus(
        tmp_path_factory.mktemp("remote"),
        speaker_blocks(8, 3, 10, frames=40, text_tokens=6),
        formats=("webdataset", "parquet"),
    )


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(storage, "BACKOFF_S", 0.01)
    monkeypatch.setattr(storage, "_CLIENTS", {})


def one_epoch(location: str, fmt: str, workers: int = 2) -> list[str]:
    corpus = open_corpus(location, allow_random_codec=True, fmt=fmt)
    s = corpus.samples
    cost = (s.frames + s.text_tokens).astype(np.int64)
    plan = plan_epoch(
        cost,
        np.ones(len(cost), bool),
        s.offsets,
        0,
        1,
        max(1, workers),
        BatchingConfig(max_frames=500, buckets=2, shuffle_buffer=20, interleave=4),
    )
    return [i for batch in make_loader(s, plan.ranks[0], None, workers) for i in batch["ids"]]


@pytest.fixture
def moto(monkeypatch, corpus_root):
    """A moto S3 server holding the corpus under s3://corpora/gen; yields its endpoint."""
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for key, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket="corpora")
    for path in corpus_root.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), "corpora", f"gen/{path.relative_to(corpus_root).as_posix()}")
    try:
        yield endpoint
    finally:
        server.stop()


def test_s3_epoch_survives_503s_and_dropped_connections(moto, monkeypatch, fast_retries, corpus_root):
    expected = sorted(one_epoch(str(corpus_root), "webdataset"))
    with FaultyProxy(moto, schedule=("503", "drop", "503", "drop")) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.base_url)
        got = one_epoch("s3://corpora/gen", "webdataset", workers=2)
    assert sorted(got) == expected and len(got) == len(set(got)) == 240
    shard_gets = {p: n for p, n in proxy.requests.items() if p.endswith(".tar")}
    assert len(shard_gets) == 8 and min(shard_gets.values()) >= 5  # every shard: 2 x 503, 2 drops, then ok
    assert proxy.faults["drop"] >= 16 and proxy.faults["503"] >= 16


def test_s3_parquet_shards_are_read_by_ranges(moto, monkeypatch, fast_retries, corpus_root):
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)
    assert sorted(one_epoch("s3://corpora/gen", "parquet", workers=0)) == sorted(one_epoch(str(corpus_root), "parquet"))


def test_http_epoch_survives_503s_and_dropped_connections(monkeypatch, fast_retries, corpus_root):
    expected = sorted(one_epoch(str(corpus_root), "parquet"))
    with HttpMirror(corpus_root) as mirror, FaultyProxy(mirror.base_url) as proxy:
        got = one_epoch(proxy.base_url, "parquet", workers=2)
        assert sorted(got) == expected and len(got) == len(set(got))
        # every shard read is a bounded range; one cut by a drop resumed where it stopped
        ranges = [r.range for r in mirror.requests if r.path.endswith(".parquet") and "/large/" in r.path]
        spans = [tuple(int(x) for x in re.fullmatch(r"bytes=(\d+)-(\d+)", r).groups()) for r in ranges]
        resumed = [(a, b) for a, b in spans if any(b == b2 and a > a2 for a2, b2 in spans)]
        assert len(spans) == len(ranges) and len(resumed) >= 8
    assert proxy.faults["drop"] >= 16 and proxy.faults["503"] >= 8


def test_a_remote_parquet_shard_is_read_by_ranges_not_whole(tmp_path, monkeypatch):
    """Reading samples of its last row group fetches the footer and that group, a fraction of
    the object, and gives what the local file gives."""
    import schemas.parquet
    from schemas.reading import read_shard

    monkeypatch.setattr(schemas.parquet, "PARQUET_ROW_GROUP", 100)
    root = write_corpus(tmp_path / "c", speaker_blocks(1, 16, 50, frames=750, text_tokens=6), formats=("parquet",))
    local = open_corpus(str(root), allow_random_codec=True).shards[0]
    size = os.path.getsize(local.uri)
    wanted = np.array([750, 799])
    expected = [(p, m["id"], c.tolist()) for p, m, c in read_shard(local, wanted)]
    with HttpMirror(root) as mirror:
        shard = open_corpus(mirror.base_url, allow_random_codec=True).shards[0]
        got = [(p, m["id"], c.tolist()) for p, m, c in read_shard(shard, wanted)]
        fetched = sum(r.bytes_sent for r in mirror.requests if r.path.endswith(shard.uri.rpartition("/")[2]))
    assert got == expected and [p for p, _, _ in got] == [750, 799]
    assert size > 4_000_000 and fetched < size / 3, (fetched, size)


def test_a_shard_that_keeps_failing_is_named(monkeypatch, fast_retries, corpus_root):
    monkeypatch.setattr(storage, "ATTEMPTS", 3)
    with (
        HttpMirror(corpus_root) as mirror,
        FaultyProxy(mirror.base_url, schedule=["503"] * 50, only=("large-000000-003",)) as proxy,
    ):
        with pytest.raises(Exception, match=r"large-000000-003\.tar: still failing after 3 attempts"):
            one_epoch(proxy.base_url, "webdataset", workers=0)


class _WhichClient(IterableDataset):
    def __iter__(self):
        storage._s3_client()
        yield os.getpid(), sorted(storage._CLIENTS)


def test_each_dataloader_worker_makes_its_own_s3_client(moto, monkeypatch, fast_retries):
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)
    parent = storage._s3_client()
    parent.list_objects_v2(Bucket="corpora")  # a pooled connection a forked child must not share
    seen = list(DataLoader(_WhichClient(), batch_size=None, num_workers=2))
    assert len(seen) == 2 and len({pid for pid, _ in seen}) == 2
    for pid, clients in seen:
        assert pid != os.getpid() and clients == [pid]  # only its own, never the parent's
    assert sorted(storage._CLIENTS) == [os.getpid()]


@pytest.fixture
def few_quick_attempts(monkeypatch):
    """Three tries in a row, milliseconds apart: the attempt count alone would give up at once."""
    monkeypatch.setattr(storage, "ATTEMPTS", 3)
    monkeypatch.setattr(storage, "BACKOFF_S", 0.01)
    monkeypatch.setattr(storage, "BACKOFF_CAP_S", 0.05)


def tiny_training(out, *extra):
    from tests.conftest import REPO
    from trainer.config import load_config

    return load_config(
        REPO / "trainer/configs/ar-tiny.yaml",
        [f"run.out={out}", "run.eval_every=1000", "data.workers=0", "data.max_frames=200", "data.interleave=2", *extra],
    )


def test_training_rides_out_a_storage_outage_within_its_budget(corpus_root, few_quick_attempts, tmp_path):
    from trainer.train import train

    with HttpMirror(corpus_root) as mirror, FaultyProxy(mirror.base_url, schedule=()) as proxy:
        proxy.outage(1.5)  # far more than 3 attempts, less than data.retry_minutes (6 s)
        train(
            tiny_training(tmp_path, "run.max_steps=4", "run.checkpoint_every=4", "data.retry_minutes=0.1"),
            [proxy.base_url],
            allow_random_codec=True,
        )
    assert proxy.faults["outage"] > 3
    assert (tmp_path / "checkpoint-4.pt").exists()


def test_an_outage_past_the_budget_stops_training_saying_how_to_go_on(
    corpus_root, few_quick_attempts, tmp_path, monkeypatch
):
    import trainer.train as train_module

    real, calls = train_module.accumulate_gradients, []

    with HttpMirror(corpus_root) as mirror, FaultyProxy(mirror.base_url, schedule=()) as proxy:

        def storage_goes_down_at_step_3(*args):
            calls.append(1)
            if len(calls) == 3:
                proxy.outage(60)
            return real(*args)

        monkeypatch.setattr(train_module, "accumulate_gradients", storage_goes_down_at_step_3)
        cfg = tiny_training(tmp_path, "run.max_steps=200", "run.checkpoint_every=2", "data.retry_minutes=0.005")
        with pytest.raises(
            train_module.DataUnavailable,
            match=r"every rank stopped at step \d+\. The newest "
            r"checkpoint is checkpoint-\d+\.pt: once the storage is back, run the same command with "
            r"--resume",
        ):
            train_module.train(cfg, [proxy.base_url], allow_random_codec=True)


def test_retries_past_the_attempts_say_how_much_of_the_time_budget_is_left(caplog):
    from storage.retry import Backoff, retry

    failures = iter(range(5))

    def flaky():
        if next(failures) < 4:
            raise ConnectionError("storage down")
        return "read"

    with caplog.at_level("WARNING", logger="storage.retry"):
        got = retry(
            flaky,
            transient=(ConnectionError,),
            attempts=2,
            backoff=Backoff(first_s=0.001, cap_s=0.001),
            give_up=lambda err, made, best: RuntimeError("gave up"),
            what="http://x/shard.tar",
            budget_s=60,
        )
    assert got == "read"
    said = [r.getMessage().rpartition("(")[2] for r in caplog.records]
    assert said[0] == "1 of 2 attempts left without progress)"
    assert all(
        s.startswith("attempts spent; retrying for ") and s.endswith(" s more of the retry budget)") for s in said[1:]
    )
    assert len(said) == 4
