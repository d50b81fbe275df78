"""lhotse Shar: a unit's shard k as the two files lhotse's `CutSet.from_shar` reads.

In: one shard's samples (schemas.sample.Sample, codes uint16 [codebooks, frames]).
Out: `OUT/lhotse_shar/<subset>/<unit>/cuts.<k>.jsonl.gz` (one lhotse MonoCut per line) and
`codes.<k>.tar` (per cut `<cut id>.npy`, then `<cut id>.json`, its TemporalArray manifest), under
temporary names, fsynced; the caller renames them when the unit commits. Each unit folder is a
Shar directory by itself (`CutSet.from_shar(in_dir=...)`); a whole subset is read by listing
its files from index.json (docs/formats.md: With lhotse (Shar)).

Each cut: duration = frames / the codec's frame rate (75 for EnCodec: the codes' own length, so
`cut.load_codes()`, which slices by duration, returns every frame; the seconds of audio actually
encoded are `audio_duration`), no recording (the audio is not in the corpus), one supervision
with the normalized text, speaker, the LibriLight recording id and Libriheavy's original [book,
ASR] texts (`custom.texts`), and custom fields `codes` (TemporalArray, frames x codebooks,
frame_shift 1 / frame rate: lhotse slices arrays on their first axis, so time comes first),
`text_tokens`, `subset`, `audio_duration` and `source_start` (the window's start in the recording).

Written without lhotse, in its layout: lhotse imports torch (unit tasks never do), its writers
open files by name (no fsync before rename) and its gzip headers carry the time of writing.
Here the gzip header has mtime 0 and no file name and tar headers are fixed, so the same
samples give the same bytes. tests/test_shar.py checks lhotse's own reader loads them.
`read_shard` reads them back, strictly, without lhotse (the trainer, verify, report, listen).
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import BinaryIO

import numpy as np

from schemas.codes import DEFAULT_SPACE, CodesSpace, check_codes
from schemas.contract import SchemaError
from schemas.webdataset import add_member

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


def write_cuts(samples, f, space: CodesSpace = DEFAULT_SPACE) -> None:
    """One MonoCut JSON line per sample, gzipped with a fixed header; durations at the codec's
    frame rate (`space`)."""
    with gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as gz:
        for s in samples:
            gz.write(json.dumps(cut_dict(s, space), ensure_ascii=False).encode() + b"\n")


def write_codes(samples, f, space: CodesSpace = DEFAULT_SPACE) -> None:
    """Per sample `<id>.npy` (frames x codebooks, little-endian uint16, values < the codec's
    codebook size) then `<id>.json`."""
    with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:  # PAX: ids of any length
        for s in samples:
            array = np.ascontiguousarray(check_codes(s.codes, s.id, space.codebook_size).T, dtype="<u2")
            buf = io.BytesIO()
            np.save(buf, array, allow_pickle=False)
            add_member(tar, f"{s.id}.npy", buf.getvalue())
            add_member(tar, f"{s.id}.json", json.dumps(_codes_manifest(array.shape, space)).encode() + b"\n")


def _codes_manifest(shape, space: CodesSpace) -> dict:
    """A TemporalArray placeholder: lhotse's reader fills in the bytes from the tar member."""
    return {
        "array": {"storage_type": "shar", "storage_path": "", "storage_key": "", "shape": list(shape)},
        "temporal_dim": 0,
        "frame_shift": 1 / space.frame_rate,
        "start": 0,
    }


def cut_dict(s, space: CodesSpace = DEFAULT_SPACE) -> dict:
    """The MonoCut dict lhotse's `Cut.to_dict` would write for this sample."""
    codebooks, frames = s.codes.shape
    duration = frames / space.frame_rate
    supervision = {
        "id": s.id,
        "recording_id": s.recording_id,
        "start": 0,
        "duration": duration,
        "channel": 0,
        "text": s.text,
        "language": LANGUAGE,
        "speaker": s.speaker,
    }
    if s.source_texts:
        supervision["custom"] = {"texts": list(s.source_texts)}
    return {
        "id": s.id,
        "start": 0,
        "duration": duration,
        "channel": 0,
        "supervisions": [supervision],
        "custom": {
            "codes": _codes_manifest([frames, codebooks], space),
            "text_tokens": list(s.text_tokens),
            "subset": s.subset,
            "audio_duration": s.duration,
            "source_start": s.start,
        },
        "type": "MonoCut",
    }


def read_shard(
    cuts: BinaryIO | bytes,
    codes: BinaryIO | bytes,
    wanted: np.ndarray | None = None,
    *,
    bad_codes: str = "raise",
    space: CodesSpace = DEFAULT_SPACE,
) -> Iterator[tuple[dict, np.ndarray]]:
    """(sample metadata as in schemas/sample.v2.json, codes (codebooks, frames)) per cut in
    `wanted` (sorted; all when None), from a shard's two files (streams, or their bytes)
    read side by side and checked against each other the way lhotse pairs them, without lhotse:
    cut k's line, then `<id>.npy` and `<id>.json` in the codes tar. Unwanted cuts' arrays are
    passed over unread. `space`: the corpus's recorded codec (durations at its frame rate, values
    < its codebook size). Raises SchemaError on the first inconsistency; `bad_codes="yield"`
    yields a cut whose codes lie outside the codebook with its error in place of the codes."""
    last = None if wanted is None else (int(wanted[-1]) if len(wanted) else -1)
    if last == -1:
        return
    keep = None if wanted is None else set(wanted.tolist())
    with _text(cuts) as lines, tarfile.open(fileobj=_binary(codes), mode="r|") as tar:
        members, position = iter(tar), -1
        for position, line in enumerate(lines):
            cut = json.loads(line)
            wanted_here = keep is None or position in keep
            # A stream: a member's bytes are read before the next member is asked for.
            array = next(members, None)
            data = tar.extractfile(array).read() if wanted_here and array is not None and array.isfile() else None
            manifest = next(members, None)
            name = _check_pair(array, manifest, position, cut)
            if wanted_here:
                manifest_dict = json.loads(tar.extractfile(manifest).read())
                yield _metadata(cut), _codes(cut, name, data, manifest_dict, bad_codes, space)
            if position == last:
                return
        if next(members, None) is not None:
            raise SchemaError(f"codes tar holds more arrays than the {position + 1} cuts")


def _text(cuts: BinaryIO | bytes):
    return gzip.open(_binary(cuts), "rt", encoding="utf-8")


def _binary(data: BinaryIO | bytes) -> BinaryIO:
    return io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data


def _check_pair(array, manifest, position: int, cut: dict) -> str:
    """The cut id the members `<id>.npy` + `<id>.json` name; SchemaError unless they are that
    pair, regular files, for this cut, with an id lhotse reads back unchanged."""
    if array is None:
        raise SchemaError(f"codes tar ends before cut {position} ({cut.get('id')!r})")
    if manifest is None or not (array.isfile() and manifest.isfile()):
        raise SchemaError(f"member {array.name!r} is not a regular file followed by its manifest")
    name = array.name.removesuffix(".npy")
    if not array.name.endswith(".npy") or manifest.name != f"{name}.json":
        raise SchemaError(f"members {array.name!r}, {manifest.name!r} are not an <id>.npy + <id>.json pair")
    if problem := id_problem(name):
        raise SchemaError(f"member {array.name!r}: {problem}")
    if name != cut["id"]:
        raise SchemaError(f"cut {position} is {cut['id']!r} but its codes are {name!r}")
    return name


def _codes(cut: dict, name: str, data: bytes, manifest: dict, bad_codes: str, space: CodesSpace):
    """A cut's codes as (codebooks, frames), checked against its manifests and duration."""
    array = np.load(io.BytesIO(data), allow_pickle=False)
    if array.dtype != np.uint16 or array.ndim != 2:
        raise SchemaError(f"cut {name!r}: codes are {array.dtype} {array.shape}, expected 2-D uint16")
    shape = cut["custom"]["codes"]["array"]["shape"]
    if manifest["array"]["shape"] != list(array.shape) or shape != list(array.shape):
        raise SchemaError(f"cut {name!r}: manifests give shape {shape}, the array is {list(array.shape)}")
    if abs(cut["duration"] - array.shape[0] / space.frame_rate) > 1e-9:
        raise SchemaError(
            f"cut {name!r}: duration {cut['duration']} s for {array.shape[0]} frames "
            f"(must be frames / {space.frame_rate}, the codec's frame rate, or lhotse truncates the codes)"
        )
    try:
        return check_codes(np.ascontiguousarray(array.T), f"{name}.npy", space.codebook_size)
    except SchemaError as err:
        if bad_codes != "yield":
            raise
        return err


def _metadata(cut: dict) -> dict:
    sup, custom = cut["supervisions"][0], cut["custom"]
    return {
        "id": cut["id"],
        "speaker": sup.get("speaker"),
        "subset": custom.get("subset"),
        "duration": custom.get("audio_duration"),
        "text": sup.get("text"),
        "text_tokens": custom.get("text_tokens"),
        "recording_id": sup.get("recording_id"),
        "start": custom.get("source_start"),
    }
