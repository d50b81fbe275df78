"""Sets of cut ids at corpus scale: 128-bit digests in numpy, 16 bytes an id.

In: digests from `pipeline.plan.manifest.cut_digest` (bytes, 16 each, in line order). Out: sorted
unique id sets (an (n, 2) uint64 array, saved as `.npy`), duplicate groups, membership masks.
12 M ids take 192 MB (and about 3x that while sorting), where a Python set of the strings
would take ~1.5 GB. Rows sort by the first word, then the second; equal rows are equal ids.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from storage.files import write_bytes_atomic

EMPTY = np.zeros((0, 2), dtype=np.uint64)


def as_rows(digests: bytes | bytearray) -> np.ndarray:
    """Digests -> (n, 2) uint64 rows (a view when possible, no copy)."""
    return np.frombuffer(digests, dtype="<u8").reshape(-1, 2)


def sort_ids(rows: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """(sorted unique rows, groups of row positions that hold the same id, each ascending)."""
    if len(rows) == 0:
        return EMPTY, []
    order = np.lexsort((rows[:, 1], rows[:, 0]))
    ordered = rows[order]
    same = np.all(ordered[1:] == ordered[:-1], axis=1)  # row i+1 repeats row i
    unique = ordered[np.concatenate(([True], ~same))]
    groups = []
    if same.any():
        starts = np.flatnonzero(np.diff(np.concatenate(([False], same)).astype(np.int8)) == 1)
        for start in starts:  # run [start, end] of equal rows in `ordered`
            end = start
            while end < len(same) and same[end]:
                end += 1
            groups.append(np.sort(order[start : end + 1]))
    return unique, groups


def member(ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Mask of `rows` present in the sorted unique set `ids`."""
    if len(ids) == 0 or len(rows) == 0:
        return np.zeros(len(rows), dtype=bool)
    at = np.searchsorted(ids[:, 0], rows[:, 0])  # first row of ids with that first word
    hit = at < len(ids)
    hit[hit] = ids[at[hit], 0] == rows[hit, 0]
    for i in np.flatnonzero(hit):  # rare: the first word matches; compare the second
        j = at[i]
        while j < len(ids) and ids[j, 0] == rows[i, 0] and ids[j, 1] != rows[i, 1]:
            j += 1
        hit[i] = j < len(ids) and ids[j, 0] == rows[i, 0]
    return hit


def save(path: Path, ids: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(ids, dtype=np.uint64), allow_pickle=False)
    write_bytes_atomic(path, buf.getvalue())


def load(path: Path) -> np.ndarray | None:
    """A saved id set, or None when missing or unreadable (then it is recomputed)."""
    try:
        ids = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    return ids if ids.dtype == np.uint64 and ids.ndim == 2 and ids.shape[1] == 2 else None
