"""Speaker-diverse batches: Libriheavy shards hold consecutive cuts of a few books, so a worker
reading one shard at a time fills a batch with 1-3 speakers. Each worker interleaves many shard
streams in front of its shuffle buffer; speaker ids come from lengths.parquet, so the planner
measures the mix without opening a shard, and the loader delivers exactly that plan."""

from __future__ import annotations

import numpy as np
import pytest

from sample.corpora import speaker_blocks, write_corpus
from trainer.batching import BatchingConfig, plan_epoch, plan_stats
from trainer.corpus import open_corpus
from trainer.loader import make_loader

BLOCK = 40  # consecutive cuts of one speaker


@pytest.fixture(scope="module")
def five_hundred_speakers(tmp_path_factory):
    """100 shards, each 5 speakers x 40 consecutive cuts (500 speakers), every cut 16 frames + 4 tokens."""
    root = write_corpus(tmp_path_factory.mktemp("mix"), speaker_blocks(100, 5, BLOCK))
    return open_corpus(str(root), allow_random_codec=True)


def plan_for(corpus, workers=2, **overrides):
    """Batches of 32; a shuffle buffer as long as a speaker block, as in Libriheavy (books of
    thousands of consecutive cuts, buffer 2,000), where the buffer alone cannot mix speakers."""
    samples = corpus.samples
    cost = (samples.frames + samples.text_tokens).astype(np.int64)  # 20 per cut
    cfg = BatchingConfig(**{"max_frames": 32 * 20, "buckets": 1, "shuffle_buffer": BLOCK, **overrides})
    return cost, plan_epoch(cost, np.ones(len(cost), bool), samples.offsets, 0, 1, workers, cfg)


def test_speaker_ids_come_from_lengths_parquet(five_hundred_speakers):
    s = five_hundred_speakers.samples
    assert len(s) == 20_000 and len(s.speaker_names) == 500 and s.speakers is not None
    assert len(np.unique(s.books)) == 500
    first = s.speakers[: s.offsets[1]]  # shard 0: five blocks of 20 cuts
    assert len(np.unique(first)) == 5 and (np.diff(first) != 0).sum() == 4


def test_batches_mix_many_speakers(five_hundred_speakers):
    corpus = five_hundred_speakers
    cost, plan = plan_for(corpus)
    stats = plan_stats(plan.ranks[0], cost, corpus.samples.speakers, corpus.samples.books)
    assert stats["speakers_per_batch"] >= 20, stats
    # reading one shard at a time (the old loader) is what this fixes
    _, narrow = plan_for(corpus, interleave=1)
    assert plan_stats(narrow.ranks[0], cost, corpus.samples.speakers, None)["speakers_per_batch"] < 5
    # the loader delivers the planned batches: the same mix, measured on what it read
    full = [b for b in make_loader(corpus.samples, plan.ranks[0], None, workers=2) if len(b["ids"]) == 32]
    assert len(full) > 600
    assert np.mean([b["speakers"] for b in full]) >= 20


def test_interleaved_reading_resumes_exactly(five_hundred_speakers):
    corpus = five_hundred_speakers
    _, plan = plan_for(corpus, workers=2, interleave=16)
    everything = [i for b in make_loader(corpus.samples, plan.ranks[0], None, workers=2) for i in b["ids"]]
    delivered, consumed = [0, 0], []
    for n, batch in enumerate(make_loader(corpus.samples, plan.ranks[0], None, workers=2)):
        delivered[batch["worker"]] += 1
        consumed += batch["ids"]
        if n == 250:
            break
    rest = [i for b in make_loader(corpus.samples, plan.ranks[0], delivered, workers=2) for i in b["ids"]]
    assert not set(consumed) & set(rest)
    assert sorted(consumed + rest) == sorted(everything) and len(everything) == 20_000
