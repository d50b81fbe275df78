"""The codes file: streamed in, read back cut by cut, same content digest as the whole-array
files written before streaming, deterministic bytes, and those older files still readable."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from pipeline.encode.codes_file import CodesFile, CodesWriter
from storage.hashing import sha256_file


def cuts(n_q=8, seed=0):
    rng = np.random.default_rng(seed)
    return [
        (f"rec/{i}_x", 0.5 + i, bool(i % 2), rng.integers(0, 1024, (n_q, f)).astype(np.uint16))
        for i, f in enumerate([7, 1, 150, 33, 2])
    ]


def whole_arrays(items) -> dict:
    """The arrays as the pre-streaming code built them in memory (row-major codes)."""
    return {
        "cut_ids": np.array([c for c, *_ in items], dtype=str),
        "durations": np.array([d for _, d, _, _ in items], dtype=np.float64),
        "clamped": np.array([k for _, _, k, _ in items], dtype=bool),
        "frames": np.array([a.shape[1] for *_, a in items], dtype=np.int64),
        "codes": (np.concatenate([a for *_, a in items], axis=1) if items else np.zeros((0, 0), dtype=np.uint16)),
    }


def old_content_digest(arrays: dict) -> str:
    """The digest the ledger has always recorded (pipeline/unit.py before streaming)."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def write(path, items) -> dict:
    writer = CodesWriter(path, path.with_name(path.name + ".partial"))
    for item in items:
        writer.add(*item)
    return writer.commit()


@pytest.mark.parametrize("n_items", [5, 0])
def test_stream_in_read_back_and_same_digest_as_before(tmp_path, n_items):
    items = cuts()[:n_items]
    totals = write(tmp_path / "u.npz", items)
    expected = whole_arrays(items)
    assert totals["content_sha256"] == old_content_digest(expected)
    assert totals["cuts"] == n_items and totals["clamped"] == sum(k for _, _, k, _ in items)
    with np.load(tmp_path / "u.npz", allow_pickle=False) as data:  # any npz reader
        for key, value in expected.items():
            assert np.array_equal(data[key], value) and data[key].dtype == value.dtype, key
    read = list(CodesFile(tmp_path / "u.npz"))
    assert [(c, d) for c, d, _ in read] == [(c, d) for c, d, _, _ in items]
    for (_, _, got), (*_, want) in zip(read, items):
        assert got.dtype == np.uint16 and got.flags.c_contiguous and np.array_equal(got, want)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u.npz"]  # no raw or partial left


def test_bytes_are_deterministic(tmp_path):
    write(tmp_path / "a.npz", cuts())
    write(tmp_path / "b.npz", cuts())
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def test_row_major_files_from_before_streaming_are_read(tmp_path):
    items = cuts(n_q=4, seed=1)
    with open(tmp_path / "old.npz", "wb") as f:
        np.savez(f, **whole_arrays(items))
    read = list(CodesFile(tmp_path / "old.npz"))
    assert [c for c, _, _ in read] == [c for c, *_ in items]
    for (_, _, got), (*_, want) in zip(read, items):
        assert np.array_equal(got, want)


def test_verified_open_refuses_changed_bytes(tmp_path):
    write(tmp_path / "u.npz", cuts())
    digest = sha256_file(tmp_path / "u.npz")
    assert CodesFile.open_verified(tmp_path / "u.npz", digest) is not None
    assert CodesFile.open_verified(tmp_path / "u.npz", "0" * 64) is None
    assert CodesFile.open_verified(tmp_path / "gone.npz", digest) is None


def test_a_wrong_codebook_count_is_refused(tmp_path):
    writer = CodesWriter(tmp_path / "u.npz", tmp_path / "u.npz.partial")
    writer.add("a", 1.0, False, np.zeros((8, 3), np.uint16))
    with pytest.raises(ValueError, match="shape \\(4, 3\\)"):
        writer.add("b", 1.0, False, np.zeros((4, 3), np.uint16))
    writer.abandon()
    assert list(tmp_path.iterdir()) == []
