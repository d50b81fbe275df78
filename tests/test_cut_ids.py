"""Id sets as 128-bit digests: sorting, duplicate groups and membership agree with Python sets,
including rows that share their first 64-bit word."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.plan import cut_ids

# Small word values so that first words collide often and second words decide.
rows_st = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), max_size=40)


def as_array(rows) -> np.ndarray:
    return np.array(rows, dtype=np.uint64).reshape(-1, 2)


@settings(max_examples=200, deadline=None)
@given(rows_st)
def test_sort_ids_finds_every_duplicate_group(rows):
    unique, groups = cut_ids.sort_ids(as_array(rows))
    assert [tuple(r) for r in unique.tolist()] == sorted(set(rows))
    want = {}
    for i, r in enumerate(rows):
        want.setdefault(r, []).append(i)
    assert sorted(g.tolist() for g in groups) == sorted(g for g in want.values() if len(g) > 1)


@settings(max_examples=200, deadline=None)
@given(rows_st, rows_st)
def test_member_is_set_membership(ids, queries):
    unique, _ = cut_ids.sort_ids(as_array(ids))
    assert cut_ids.member(unique, as_array(queries)).tolist() == [q in set(ids) for q in queries]


def test_save_and_load_round_trip(tmp_path):
    from pipeline.plan.manifest import cut_digest

    digests = b"".join(cut_digest(f"small/1/b/c_{i}") for i in range(1000))
    unique, groups = cut_ids.sort_ids(cut_ids.as_rows(digests))
    assert len(unique) == 1000 and groups == []
    cut_ids.save(tmp_path / "ids.npy", unique)
    assert np.array_equal(cut_ids.load(tmp_path / "ids.npy"), unique)
    (tmp_path / "bad.npy").write_bytes(b"junk")
    assert cut_ids.load(tmp_path / "bad.npy") is None and cut_ids.load(tmp_path / "none.npy") is None
