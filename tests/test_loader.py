"""Trainer data: epoch plans (every sample once, equal batches per rank), the loader over real
shards with DataLoader workers, mid-epoch resume, remote corpora (s3 via a local moto server,
http via a local mirror), and the provenance checks."""
from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from torch.utils.data import DataLoader

from trainer.batching import BatchingConfig, plan_epoch, sample_lengths
from trainer.corpus import CorpusError, check_compatible, open_corpus
from trainer.loader import PlanDataset


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(1, 400), min_size=1, max_size=30), min_size=1, max_size=12),
       st.integers(1, 3), st.integers(1, 3), st.integers(0, 3))
def test_plan_covers_every_sample_once_with_equal_batches_per_rank(shard_lengths, world, workers, epoch):
    lengths = [np.array(x) for x in shard_lengths]
    if sum(map(len, lengths)) < 2 * world:
        return
    cfg = BatchingConfig(max_frames=600, buckets=3, shuffle_buffer=7, seed=1)
    try:
        plan = plan_epoch(lengths, epoch, world, workers, cfg)
    except ValueError as err:
        assert "too few samples" in str(err)
        return
    refs = [r for rank in plan.ranks for w in rank for b in w.batches for r in b]
    assert Counter(refs) == Counter((s, p) for s, x in enumerate(lengths) for p in range(len(x)))
    assert len({sum(len(w.batches) for w in rank) for rank in plan.ranks}) == 1
    for rank in plan.ranks:
        for w in rank:
            for b in w.batches:
                assert b and (len(b) == 1 or len(b) * max(lengths[s][p] for s, p in b) <= cfg.max_frames)
                assert all(s in w.shards for s, _ in b)  # a worker only reads its own shards
    again = plan_epoch(lengths, epoch, world, workers, cfg)
    assert [[w.batches for w in r] for r in again.ranks] == [[w.batches for w in r] for r in plan.ranks]


def test_epochs_shuffle_differently():
    lengths = [np.arange(1, 21) * 10 for _ in range(6)]
    cfg = BatchingConfig(max_frames=500, shuffle_buffer=16)
    a, b = (plan_epoch(lengths, e, 1, 1, cfg).ranks[0][0] for e in (0, 1))
    assert a.shards != b.shards or a.batches != b.batches


@pytest.fixture(scope="module")
def corpus_dir(built_corpus):
    return built_corpus[0].out


def loader_for(corpus, epoch=0, world=1, rank=0, workers=2, skip=None, cfg=None):
    cfg = cfg or BatchingConfig(max_frames=800, buckets=2, shuffle_buffer=5)
    lengths = sample_lengths([corpus.frames[s.id] for s in corpus.shards],
                             [corpus.text_tokens[s.id] for s in corpus.shards])
    plan = plan_epoch(lengths, epoch, world, workers, cfg)
    plans = plan.ranks[rank]
    dataset = PlanDataset(corpus.shards, plans, skip or [0] * workers)
    return DataLoader(dataset, batch_size=None, num_workers=workers), plan


def test_random_codec_corpus_is_refused_unless_allowed(corpus_dir):
    with pytest.raises(CorpusError, match="RANDOM-INIT"):
        open_corpus(str(corpus_dir))
    assert open_corpus(str(corpus_dir), allow_random_codec=True).shards


def test_one_epoch_delivers_every_training_sample_once(corpus_dir):
    corpus = open_corpus(str(corpus_dir), allow_random_codec=True)
    loader, plan = loader_for(corpus)
    batches = list(loader)
    assert len(batches) == plan.batches_per_rank
    ids = [i for b in batches for i in b["ids"]]
    assert len(ids) == len(set(ids)) == sum(s.samples for s in corpus.shards)
    assert {b["worker"] for b in batches} == {0, 1}
    b = batches[0]
    assert b["codes"].shape[0] == len(b["ids"]) and b["codes"].shape[1] == 8
    assert b["codes"].shape[2] == int(b["code_lens"].max()) and 0 <= b["padding"] < 1
    assert int(b["text"][0, : b["text_lens"][0]].min()) >= 0


def test_ranks_split_the_epoch_exactly(corpus_dir):
    corpus = open_corpus(str(corpus_dir), allow_random_codec=True)
    seen, counts = [], []
    for rank in range(2):
        loader, _ = loader_for(corpus, world=2, rank=rank, workers=1)
        batches = list(loader)
        counts.append(len(batches))
        seen += [i for b in batches for i in b["ids"]]
    assert counts[0] == counts[1]
    assert sorted(seen) == sorted(set(seen)) and len(seen) == sum(s.samples for s in corpus.shards)


def test_mid_epoch_resume_sees_exactly_the_rest(corpus_dir):
    corpus = open_corpus(str(corpus_dir), allow_random_codec=True)
    full, _ = loader_for(corpus, epoch=3)
    everything = [i for b in full for i in b["ids"]]
    first, _ = loader_for(corpus, epoch=3)
    delivered, consumed = [0, 0], []
    for n, batch in enumerate(first):
        delivered[batch["worker"]] += 1
        consumed += batch["ids"]
        if n == 2:
            break  # "stop": the training loop saves {"epoch": 3, "delivered": delivered}
    rest, _ = loader_for(corpus, epoch=3, skip=delivered)
    remaining = [i for b in rest for i in b["ids"]]
    assert not set(consumed) & set(remaining)
    assert sorted(consumed + remaining) == sorted(everything)


def test_s3_and_http_corpora_read_like_local(corpus_dir, tmp_path, monkeypatch):
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                           "AWS_DEFAULT_REGION": "us-east-1",
                           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}.items():
            monkeypatch.setenv(key, value)
        import trainer.storage

        monkeypatch.setattr(trainer.storage, "_CLIENT", None)
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="corpora")
        for path in corpus_dir.rglob("*"):
            if path.is_file() and path.parts[len(corpus_dir.parts)] in ("webdataset", "parquet", "text") \
                    or path.name in ("index.json", "lengths.parquet"):
                s3.upload_file(str(path), "corpora", f"tiny/{path.relative_to(corpus_dir).as_posix()}")
        local = open_corpus(str(corpus_dir), allow_random_codec=True)
        remote = open_corpus("s3://corpora/tiny", allow_random_codec=True)
        assert [s.id for s in remote.shards] == [s.id for s in local.shards]
        ids = lambda c: sorted(i for b in loader_for(c, workers=1)[0] for i in b["ids"])  # noqa: E731
        assert ids(remote) == ids(local)
        for fmt in ("parquet",):
            remote_pq = open_corpus("s3://corpora/tiny", allow_random_codec=True, fmt=fmt)
            assert ids(remote_pq) == ids(local)
    finally:
        server.stop()

    from tests.http_mirror import HttpMirror

    with HttpMirror(corpus_dir) as mirror:
        over_http = open_corpus(mirror.base_url.rstrip("/"), allow_random_codec=True)
        assert ids(over_http) == ids(local)


def test_corpora_with_other_provenance_are_not_mixed(corpus_dir, tmp_path):
    a = open_corpus(str(corpus_dir), allow_random_codec=True)
    other = tmp_path / "other"
    shutil.copytree(corpus_dir, other, ignore=shutil.ignore_patterns("downloads", "work"))
    index = json.loads((other / "index.json").read_text())
    index["provenance"]["bpe"]["sha256"] = "0" * 64
    (other / "index.json").write_text(json.dumps(index))
    b = open_corpus(str(other), allow_random_codec=True)
    check_compatible([a, a])
    with pytest.raises(CorpusError, match="different codec or BPE"):
        check_compatible([a, b])
