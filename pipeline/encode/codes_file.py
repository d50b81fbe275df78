"""Codes file: a unit's codes streamed to disk as they arrive, and read back one cut at a time.

`OUT/work/codes/<unit>.npz` holds, in encoding order (the plan's order of the kept cuts):
    cut_ids (n,) str, durations (n,) float64, clamped (n,) bool, frames (n,) int64,
    codes (n_q, sum(frames)) uint16, stored column-major (Fortran order).
Column-major puts each frame's n_q codes next to each other, so codes can be appended chunk by
chunk while the unit encodes and read cut by cut while its shards are written: memory holds one
chunk, never the unit. `np.load` reads it like any npz. Files written row-major (before codes
were streamed) are still read, whole.

`content_sha256` hashes the arrays in their logical (row-major) layout, whatever the layout on
disk, so it is the same digest as for those older files and the shards keyed to it stay current.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from storage.files import fsync_dir
from storage.hashing import CHUNK_BYTES, sha256_file

CODES_DTYPE = np.dtype("<u2")
_META = ("cut_ids", "durations", "clamped", "frames")  # member order, as np.savez wrote it


class CodesWriter:
    """Append (cut, codes) as they are encoded; `commit` writes the npz under `partial` and
    renames it to `target` (fsynced)."""

    def __init__(self, target: Path, partial: Path):
        self.target, self.partial = target, partial
        self.raw = partial.with_name(partial.name + ".raw")  # frame-major codes while encoding
        target.parent.mkdir(parents=True, exist_ok=True)
        self._raw = open(self.raw, "wb")
        self.cut_ids: list[str] = []
        self.durations: list[float] = []
        self.clamped: list[bool] = []
        self.frames: list[int] = []
        self.n_q: int | None = None

    def add(self, cut_id: str, duration: float, clamped: bool, codes: np.ndarray) -> None:
        if self.n_q is None:
            self.n_q = codes.shape[0]
        if codes.ndim != 2 or codes.shape[0] != self.n_q:
            raise ValueError(f"codes of {cut_id!r} have shape {codes.shape}, expected ({self.n_q}, frames)")
        self._raw.write(np.ascontiguousarray(codes.T, dtype=CODES_DTYPE).tobytes())
        self.cut_ids.append(cut_id)
        self.durations.append(duration)
        self.clamped.append(clamped)
        self.frames.append(codes.shape[1])

    def commit(self) -> dict:
        """Write and rename the npz; returns its content digest and totals."""
        self._raw.close()
        meta = {
            "cut_ids": np.array(self.cut_ids, dtype=str),
            "durations": np.array(self.durations, dtype=np.float64),
            "clamped": np.array(self.clamped, dtype=bool),
            "frames": np.array(self.frames, dtype=np.int64),
        }
        shape = (self.n_q, int(meta["frames"].sum())) if self.cut_ids else (0, 0)
        with open(self.partial, "wb") as f:
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                for key in _META:
                    with zf.open(_member(f"{key}.npy"), "w", force_zip64=True) as member:
                        np.lib.format.write_array(member, meta[key], allow_pickle=False)
                with zf.open(_member("codes.npy"), "w", force_zip64=True) as member:
                    header = {"descr": CODES_DTYPE.str, "fortran_order": True, "shape": shape}
                    np.lib.format.write_array_header_2_0(member, header)
                    with open(self.raw, "rb") as raw:
                        while chunk := raw.read(CHUNK_BYTES):
                            member.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        digest = content_digest(meta, self.raw, shape)
        os.replace(self.partial, self.target)
        fsync_dir(self.target.parent)
        self.raw.unlink()
        return {
            "content_sha256": digest,
            "cuts": len(self.cut_ids),
            "seconds": round(float(meta["durations"].sum()), 3),
            "clamped": int(meta["clamped"].sum()),
        }

    def abandon(self) -> None:
        self._raw.close()
        for path in (self.raw, self.partial):
            path.unlink(missing_ok=True)


def _member(name: str) -> zipfile.ZipInfo:
    """A stored member with a fixed timestamp, so the same codes give the same file bytes."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    return info


def content_digest(meta: dict[str, np.ndarray], raw: Path, shape: tuple[int, int]) -> str:
    """sha256 over every array (sorted by name): name, dtype, shape, row-major bytes. The codes
    come from the frame-major `raw` file, one codebook per pass, a chunk at a time."""
    h = hashlib.sha256()
    arrays = {**meta, "codes": None}
    for key in sorted(arrays):
        if key != "codes":
            a = np.ascontiguousarray(arrays[key])
            h.update(f"{key}:{a.dtype.str}:{a.shape}".encode())
            h.update(a.tobytes())
            continue
        h.update(f"codes:{CODES_DTYPE.str}:{shape}".encode())
        n_q = shape[0]
        rows = max(1, CHUNK_BYTES // max(1, n_q * CODES_DTYPE.itemsize))
        with open(raw, "rb") as f:
            for k in range(n_q):
                f.seek(0)
                while chunk := f.read(rows * n_q * CODES_DTYPE.itemsize):
                    h.update(np.frombuffer(chunk, CODES_DTYPE).reshape(-1, n_q)[:, k].tobytes())
    return h.hexdigest()


class CodesFile:
    """A committed codes file: the per-cut metadata in memory, codes read as they are asked for."""

    def __init__(self, path: Path):
        self.path = path
        with np.load(path, allow_pickle=False) as data:
            self.cut_ids: list[str] = data["cut_ids"].tolist()
            self.durations: list[float] = data["durations"].tolist()
            self.frames: list[int] = data["frames"].tolist()

    @classmethod
    def open_verified(cls, path: Path, sha256: str) -> CodesFile | None:
        """The file, if it exists and its bytes hash to `sha256` (hashed streaming); else None."""
        if not path.is_file() or sha256_file(path) != sha256:
            return None
        return cls(path)

    def __iter__(self) -> Iterator[tuple[str, float, np.ndarray]]:
        """(cut id, duration, codes (n_q, frames) uint16) in file order."""
        with zipfile.ZipFile(self.path) as zf, zf.open("codes.npy") as member:
            version = np.lib.format.read_magic(member)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(member)
            if fortran and self.cut_ids:
                n_q = shape[0]
                for cut_id, duration, frames in zip(self.cut_ids, self.durations, self.frames):
                    data = member.read(frames * n_q * dtype.itemsize)
                    codes = np.frombuffer(data, dtype).reshape(frames, n_q).T
                    yield cut_id, duration, codes.astype(np.uint16, order="C")
                return
        with np.load(self.path, allow_pickle=False) as data:  # row-major (older) or empty: whole
            codes = data["codes"]
        start = 0
        for cut_id, duration, frames in zip(self.cut_ids, self.durations, self.frames):
            yield cut_id, duration, codes[:, start : start + frames]
            start += frames
