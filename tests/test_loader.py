"""Trainer data: epoch plans (every sample once, equal batches per rank), the loader over real
shards with DataLoader workers, mid-epoch resume, remote corpora (s3 via a local moto server,
http via a local mirror), and the provenance checks."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.batching import BatchingConfig, greedy_batches, plan_epoch, read_order
from trainer.corpus import CorpusError, check_compatible, open_corpus
from trainer.loader import make_loader


def offsets_of(lengths):
    return np.concatenate([[0], np.cumsum([len(x) for x in lengths])]).astype(np.int64)


def plan_of(lengths, epoch, world, workers, cfg, keep=None):
    cost = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    keep = np.ones(len(cost), bool) if keep is None else keep
    return plan_epoch(cost, keep, offsets_of(lengths), epoch, world, workers, cfg)


def refs(plan):
    return [int(g) for rank in plan.ranks for w in rank for g in w.samples]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.integers(1, 400), min_size=0, max_size=30), min_size=1, max_size=12),
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(0, 3),
    st.integers(1, 4),
    st.integers(1, 3),
)
def test_plan_covers_every_sample_once_with_equal_batches_per_rank(
    shard_lengths, world, workers, epoch, interleave, multiple_of
):
    lengths = [np.array(x, dtype=np.int64) for x in shard_lengths]
    cost = np.concatenate(lengths)
    keep = cost < 390  # the model's limits: the longest samples are filtered, never batched
    if keep.sum() < 2 * world:
        return
    offsets = offsets_of(lengths)
    cfg = BatchingConfig(
        max_frames=600, buckets=3, shuffle_buffer=7, interleave=interleave, seed=1, multiple_of=multiple_of
    )
    try:
        plan = plan_of(lengths, epoch, world, workers, cfg, keep)
    except ValueError as err:
        assert "too few samples" in str(err)
        return
    assert Counter(refs(plan)) == Counter(np.flatnonzero(keep).tolist())
    counts = {sum(w.batches for w in rank) for rank in plan.ranks}
    assert len(counts) == 1 and counts.pop() % multiple_of == 0
    for rank in plan.ranks:
        for w in rank:
            shard_of = np.searchsorted(offsets, w.samples, side="right") - 1
            assert set(shard_of.tolist()) <= set(w.reads.tolist())  # a worker only reads its own shards
            # every shard it reads, it reads whole: its k-th read is position k
            assert Counter(w.reads.tolist()) == {s: len(lengths[s]) for s in set(w.reads.tolist())}
            for b in range(w.batches):
                batch = w.batch(b)
                assert len(batch) and (len(batch) == 1 or len(batch) * cost[batch].max() <= cfg.max_frames)
    again = plan_of(lengths, epoch, world, workers, cfg, keep)
    assert refs(again) == refs(plan)
    assert [[w.bounds.tolist() for w in r] for r in again.ranks] == [[w.bounds.tolist() for w in r] for r in plan.ranks]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=0, max_size=60), st.integers(1, 700))
def test_greedy_batches_match_a_sample_by_sample_scan(costs, budget):
    expected, count, longest = [], 0, 0
    for c in costs:  # the obvious sequential rule the vectorized one must reproduce
        if count and (count + 1) * max(longest, c) > budget:
            expected.append(count)
            count, longest = 0, 0
        count, longest = count + 1, max(longest, c)
    expected += [count] if count else []
    assert greedy_batches(np.array(costs, dtype=np.int64), budget) == expected


def test_read_order_interleaves_lanes_round_robin():
    offsets = np.array([0, 3, 4, 6, 8])  # shard sizes 3, 1, 2, 2
    samples, shards = read_order(np.array([0, 1, 2, 3]), offsets, interleave=2)
    # lane 0: shard 0 (t 0-2), then shard 3 (t 3-4); lane 1: shard 1 (t 0), then shard 2 (t 1-2)
    assert shards.tolist() == [0, 1, 0, 2, 0, 2, 3, 3]
    assert samples.tolist() == [0, 3, 1, 4, 2, 5, 6, 7]
    one, _ = read_order(np.array([2, 0]), offsets, interleave=1)
    assert one.tolist() == [4, 5, 0, 1, 2]


def test_epochs_shuffle_differently():
    lengths = [np.arange(1, 21) * 10 for _ in range(6)]
    cfg = BatchingConfig(max_frames=500, shuffle_buffer=16)
    a, b = (plan_of(lengths, e, 1, 1, cfg).ranks[0][0] for e in (0, 1))
    assert a.samples.tolist() != b.samples.tolist()


@pytest.fixture(scope="module")
def corpus_dir(built_corpus):
    return built_corpus[0].out


def loader_for(corpus, epoch=0, world=1, rank=0, workers=2, skip=None, cfg=None):
    cfg = cfg or BatchingConfig(max_frames=800, buckets=2, shuffle_buffer=5, interleave=3)
    samples = corpus.samples
    cost = (samples.frames + samples.text_tokens).astype(np.int64)
    plan = plan_epoch(cost, np.ones(len(cost), bool), samples.offsets, epoch, world, workers, cfg)
    return make_loader(samples, plan.ranks[rank], skip, workers), plan


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


def test_every_format_reads_the_same_samples(corpus_dir):
    """WebDataset, Parquet and lhotse Shar shards give each sample's id, speaker, tokens and
    codes alike, all of a shard or only the positions wanted."""
    from schemas.reading import read_shard

    by_format = {
        fmt: open_corpus(str(corpus_dir), allow_random_codec=True, fmt=fmt).shards
        for fmt in ("webdataset", "parquet", "lhotse_shar")
    }
    assert len({tuple(s.id for s in shards) for shards in by_format.values()}) == 1
    for k, shard in enumerate(by_format["webdataset"]):
        for wanted in (None, np.unique([shard.samples // 2, shard.samples - 1])):
            read = {
                fmt: [
                    (p, m["id"], m["speaker"], list(m["text_tokens"]), c.tolist())
                    for p, m, c in read_shard(shards[k], wanted)
                ]
                for fmt, shards in by_format.items()
            }
            assert read["webdataset"] == read["parquet"] == read["lhotse_shar"]
            assert [p for p, *_ in read["lhotse_shar"]] == (
                list(range(shard.samples)) if wanted is None else wanted.tolist()
            )


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


def test_s3_and_http_corpora_read_like_local(corpus_dir, tmp_path, s3):
    s3.create_bucket(Bucket="corpora")
    for path in corpus_dir.rglob("*"):
        if (
            path.is_file()
            and path.parts[len(corpus_dir.parts)] in ("webdataset", "parquet", "lhotse_shar", "text")
            or path.name in ("index.json", "lengths.parquet")
        ):
            s3.upload_file(str(path), "corpora", f"tiny/{path.relative_to(corpus_dir).as_posix()}")
    local = open_corpus(str(corpus_dir), allow_random_codec=True)
    remote = open_corpus("s3://corpora/tiny", allow_random_codec=True)
    assert [s.id for s in remote.shards] == [s.id for s in local.shards]
    ids = lambda c: sorted(i for b in loader_for(c, workers=1)[0] for i in b["ids"])  # noqa: E731
    assert ids(remote) == ids(local)
    for fmt in ("parquet", "lhotse_shar"):
        remote_pq = open_corpus("s3://corpora/tiny", allow_random_codec=True, fmt=fmt)
        assert ids(remote_pq) == ids(local)

    from sample.http_mirror import HttpMirror

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
