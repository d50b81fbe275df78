"""lhotse Shar: a unit's shard k as the two files lhotse's `CutSet.from_shar` reads.

In: one shard's samples (pipeline.shards.Sample, codes uint16 [codebooks, frames]).
Out: `OUT/lhotse_shar/<subset>/<unit>/cuts.<k>.jsonl.gz` (one lhotse MonoCut per line) and
`codes.<k>.tar` (per cut `<cut id>.npy`, then `<cut id>.json`, its TemporalArray manifest), under
temporary names, fsynced; the caller renames them when the unit commits. Each unit folder is a
Shar directory by itself (`CutSet.from_shar(in_dir=...)`); a whole subset is read by listing
its files from index.json (README: Reading a corpus with lhotse).

Each cut: duration = frames / 75 (the codes' own length, so `cut.load_codes()`, which slices by
duration, returns every frame; the seconds of audio actually encoded are `audio_duration`), no
recording (the audio is not in the corpus), one supervision with the normalized text, speaker,
the LibriLight recording id and Libriheavy's original [book, ASR] texts (`custom.texts`), and
custom fields `codes` (TemporalArray, frames x codebooks, frame_shift 1/75 s: lhotse slices
arrays on their first axis, so time comes first), `text_tokens`, `subset`, `audio_duration` and
`source_start` (the window's start in the recording).

Written without lhotse, in its layout: lhotse imports torch (unit tasks never do), its writers
open files by name (no fsync before rename) and its gzip headers carry the time of writing.
Here the gzip header has mtime 0 and no file name and tar headers are fixed, so the same
samples give the same bytes. tests/test_shar.py checks lhotse's own reader loads them.
"""
from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import PurePosixPath
from typing import Iterator

import numpy as np

from pipeline.fsutil import add_tar_member
from tokens.constants import FRAME_RATE

FORMAT = "lhotse_shar"
LANGUAGE = "English"  # Libriheavy is English audiobooks; its supervisions say so too


def unit_dir(subset: str, unit: str) -> str:
    return f"{FORMAT}/{subset}/{unit}"


def shard_paths(subset: str, unit: str, k: int) -> dict[str, str]:
    """Paths (relative to OUT) of shard k's files, by field, in Shar's `<field>.<k:06d>` names."""
    folder = unit_dir(subset, unit)
    return {"cuts": f"{folder}/cuts.{k:06d}.jsonl.gz", "codes": f"{folder}/codes.{k:06d}.tar"}


def id_problem(cut_id: str) -> str | None:
    """Why lhotse's reader could not pair this cut id with its `<id>.npy` member (it takes a
    member's path without its extension, normalized, as the cut id), or None."""
    path = PurePosixPath(f"{cut_id}.npy")
    if "\0" in cut_id or str(path.parent / path.stem) != cut_id:
        return f"lhotse Shar would read the cut id back as {str(path.parent / path.stem)!r}"
    return None


def write_cuts(samples, f) -> None:
    """One MonoCut JSON line per sample, gzipped with a fixed header."""
    with gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as gz:
        for s in samples:
            gz.write(json.dumps(cut_dict(s), ensure_ascii=False).encode() + b"\n")


def write_codes(samples, f) -> None:
    """Per sample `<id>.npy` (frames x codebooks, little-endian uint16) then `<id>.json`."""
    with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:  # PAX: ids of any length
        for s in samples:
            array = np.ascontiguousarray(s.codes.T, dtype="<u2")
            buf = io.BytesIO()
            np.save(buf, array, allow_pickle=False)
            add_tar_member(tar, f"{s.id}.npy", buf.getvalue())
            add_tar_member(tar, f"{s.id}.json", json.dumps(_codes_manifest(array.shape)).encode() + b"\n")


def _codes_manifest(shape) -> dict:
    """A TemporalArray placeholder: lhotse's reader fills in the bytes from the tar member."""
    return {"array": {"storage_type": "shar", "storage_path": "", "storage_key": "", "shape": list(shape)},
            "temporal_dim": 0, "frame_shift": 1 / FRAME_RATE, "start": 0}


def cut_dict(s) -> dict:
    """The MonoCut dict lhotse's `Cut.to_dict` would write for this sample."""
    codebooks, frames = s.codes.shape
    duration = frames / FRAME_RATE
    supervision = {"id": s.id, "recording_id": s.recording_id, "start": 0, "duration": duration,
                   "channel": 0, "text": s.text, "language": LANGUAGE, "speaker": s.speaker}
    if s.source_texts:
        supervision["custom"] = {"texts": list(s.source_texts)}
    return {"id": s.id, "start": 0, "duration": duration, "channel": 0, "supervisions": [supervision],
            "custom": {"codes": _codes_manifest([frames, codebooks]), "text_tokens": list(s.text_tokens),
                       "subset": s.subset, "audio_duration": s.duration, "source_start": s.start},
            "type": "MonoCut"}


def read_shard(cuts_raw: bytes, codes_raw: bytes) -> Iterator[tuple[dict, np.ndarray]]:
    """(sample metadata as in schemas/sample.v2.json, codes [codebooks, frames]) per cut, from a
    shard's two files, checked against each other the way lhotse pairs them; without lhotse
    (pipeline.verify). Raises ValueError on the first inconsistency."""
    lines = gzip.decompress(cuts_raw).decode().splitlines()
    arrays = _read_codes(codes_raw)
    for n, line in enumerate(lines):
        cut = json.loads(line)
        name, array, manifest = next(arrays, (None, None, None))
        if name is None:
            raise ValueError(f"codes tar ends before cut {n} ({cut.get('id')!r})")
        if name != cut["id"]:
            raise ValueError(f"cut {n} is {cut['id']!r} but its codes are {name!r}")
        sup, custom = cut["supervisions"][0], cut["custom"]
        if array.dtype != np.uint16 or array.ndim != 2:
            raise ValueError(f"cut {cut['id']!r}: codes are {array.dtype} {array.shape}, expected 2-D uint16")
        if manifest["array"]["shape"] != list(array.shape) or custom["codes"]["array"]["shape"] != list(array.shape):
            raise ValueError(f"cut {cut['id']!r}: manifests give shape {custom['codes']['array']['shape']}, "
                             f"the array is {list(array.shape)}")
        if abs(cut["duration"] - array.shape[0] / FRAME_RATE) > 1e-9:
            raise ValueError(f"cut {cut['id']!r}: duration {cut['duration']} s for {array.shape[0]} frames "
                             f"(must be frames / {FRAME_RATE}, or lhotse truncates the codes)")
        meta = {"id": cut["id"], "speaker": sup.get("speaker"), "subset": custom.get("subset"),
                "duration": custom.get("audio_duration"), "text": sup.get("text"),
                "text_tokens": custom.get("text_tokens"),
                "recording_id": sup.get("recording_id"), "start": custom.get("source_start")}
        yield meta, array.T
    if next(arrays, None) is not None:
        raise ValueError(f"codes tar holds more arrays than the {len(lines)} cuts")


def _read_codes(raw: bytes) -> Iterator[tuple[str, np.ndarray, dict]]:
    """(cut id, array, manifest) per `<id>.npy` + `<id>.json` pair, in tar order."""
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        members = iter(tar)
        for data in members:
            meta = next(members, None)
            if meta is None or not (data.isfile() and meta.isfile()):
                raise ValueError(f"member {data.name!r} is not a regular file followed by its manifest")
            name = data.name.removesuffix(".npy")
            if not data.name.endswith(".npy") or meta.name != f"{name}.json":
                raise ValueError(f"members {data.name!r}, {meta.name!r} are not an <id>.npy + <id>.json pair")
            if problem := id_problem(name):
                raise ValueError(f"member {data.name!r}: {problem}")
            array = np.load(io.BytesIO(tar.extractfile(data).read()), allow_pickle=False)
            yield name, array, json.loads(tar.extractfile(meta).read())
