"""bench/bench_cpu_tokenizer.py's peer (the simplest lhotse tokenizer) really encodes every cut it
is given, so the ratio the benchmark prints is against a peer that did the work."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from lhotse import CutSet

from sample.lookalike import synthetic_chapters, write_corpus
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_the_peer_stores_one_code_matrix_per_cut(tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    import bench_cpu_tokenizer as bench

    corpus = write_corpus(synthetic_chapters(n_speakers=1, chapters_per_speaker=2, utterances_per_chapter=2), tmp_path)
    cuts = [
        {"id": c.cut_id, "recording_id": c.recording_id, "start": c.start, "duration": c.duration}
        for c in corpus.cuts.values()
    ]
    inputs = bench.peer_inputs(cuts, list(corpus.tars.values()), tmp_path / "peer-in")
    weights = tmp_path / "weights.pt"
    bench.save_weights(weights)
    storage = tmp_path / "peer-out"
    assert bench.run_peer(inputs, storage, jobs=2, weights=weights) > 0

    frames = bench.check_peer(inputs, storage)
    done = CutSet.from_file(storage / "cuts.jsonl.gz")
    assert sorted(c.id for c in done) == sorted(c["id"] for c in cuts) and len(cuts) == 4
    total = 0
    for cut in done:
        codes = cut.features.load()
        samples = round(cut.duration * 24000)
        assert codes.shape == (round(samples / 320), 8) and math.ceil(samples / 320) - codes.shape[0] in (0, 1)
        assert 0 <= codes.min() and codes.max() < 1024 and len(np.unique(codes)) > 8
        total += codes.shape[0]
    assert frames == total

    # A peer that lost a cut (lhotse skips cuts whose audio fails to load) fails the check.
    CutSet.from_cuts(list(done)[1:]).to_file(storage / "cuts.jsonl.gz")
    with pytest.raises(SystemExit, match="codes for 3 of 4 cuts"):
        bench.check_peer(inputs, storage)
