"""WebDataset shards: a tar of `<key>.json` + `<key>.codes.npy` per sample; writer and strict reader.

Write: the samples of one shard as a USTAR tar with fixed member headers (mtime 0, mode 644,
owner 0), so the same samples give the same bytes on any machine. Key `<unit>_<n>` (6 digits):
cut ids contain '/', '.' and spaces, which WebDataset would split into fields, so the real id
lives in the JSON (schemas/sample.v2.json). v1 shards (still read) hold `<key>.codes`, 10-bit
packed codes whose shape is in the JSON's `codes_shape`.
Read: streamed, sample by sample (a tar is never held whole); only wanted samples are decoded,
the others passed over unread, and reading stops after the last wanted one. Strict: every member
is a regular file, and a sample's members are adjacent and exactly its JSON and its codes.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np

from schemas.codes import DEFAULT_SPACE, CodesSpace, codes_from_npy, codes_to_npy, unpack_codes
from schemas.contract import SchemaError

SUFFIX = ".tar"
CODES_MEMBER = "codes.npy"  # v2: <key>.codes.npy
CODES_MEMBER_V1 = "codes"
TAR_MEMBER_OVERHEAD = 1024  # header block + average padding, for size estimates
NPY_HEADER = 128  # bytes before the codes in a .npy member


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """A regular file member with a fixed header (mtime 0, mode 644, owner 0, no names), so the
    same members give the same tar bytes on any machine and at any time."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write(samples, f: BinaryIO, unit: str, first_index: int, space: CodesSpace = DEFAULT_SPACE) -> None:
    """One shard's samples (schemas.sample.Sample) into `f`, keys counted from `first_index`;
    codes checked against the codec's `space`."""
    with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for n, s in enumerate(samples, start=first_index):
            key = f"{unit}_{n:06d}"
            meta = json.dumps(s.metadata(), ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()
            add_member(tar, f"{key}.json", meta)
            add_member(tar, f"{key}.{CODES_MEMBER}", codes_to_npy(s.codes, space.codebook_size))


def read(
    stream: BinaryIO,
    wanted: np.ndarray | None = None,
    *,
    version: int | None = None,
    bad_codes: str = "raise",
    where: str = "",
    space: CodesSpace = DEFAULT_SPACE,
) -> Iterator[tuple[dict, np.ndarray]]:
    """(metadata, codes (codebooks, frames) uint16) for the positions in `wanted` (sorted;
    all when None), in shard order. `version`: the schema version the members must have (None:
    each sample's members say); `space`: the corpus's recorded codec (values < its codebook
    size). `bad_codes="yield"` yields a sample whose codes do not decode with
    its `SchemaError` in place of the codes, instead of raising (verify names each one)."""
    keep = None if wanted is None else set(wanted.tolist())
    last = None if wanted is None else (int(wanted[-1]) if len(wanted) else -1)
    if last == -1:
        return
    prefix = f"{where}: " if where else ""
    for position, (key, fields) in enumerate(_samples(stream, keep, prefix)):
        codes_member = _codes_member(fields, version, key, prefix)
        if fields["json"] is not None:
            meta = json.loads(fields["json"])
            try:
                codes = _decode(fields[codes_member], codes_member, meta, f"{prefix}{key}.{codes_member}", space)
            except SchemaError as err:
                if bad_codes != "yield":
                    raise
                codes = err
            yield meta, codes
        if position == last:
            return


def _samples(stream: BinaryIO, keep: set | None, prefix: str) -> Iterator[tuple[str, dict]]:
    """(key, {extension: bytes, or None when not wanted}) per sample, members grouped as they
    come: a sample's members are adjacent."""
    # A seekable file (local, or bytes in memory) is walked by seeking past unwanted members; a
    # remote stream is read through, members it does not need passed over unread.
    with tarfile.open(fileobj=stream, mode="r:" if stream.seekable() else "r|") as tar:
        key, fields, position = None, {}, 0
        for member in tar:
            if not member.isfile():
                raise SchemaError(f"{prefix}member {member.name!r} is not a regular file")
            name, _, ext = member.name.partition(".")
            if name != key and fields:
                yield key, fields
                position += 1
                fields = {}
            key = name
            if ext in fields:
                raise SchemaError(f"{prefix}sample {name!r} has two {ext!r} members")
            # Not wanted: the stream moves past it unread.
            fields[ext] = tar.extractfile(member).read() if keep is None or position in keep else None
        if fields:
            yield key, fields


def _codes_member(fields: dict, version: int | None, key: str, prefix: str) -> str:
    if version is None:
        member = CODES_MEMBER_V1 if CODES_MEMBER_V1 in fields else CODES_MEMBER
    else:
        member = CODES_MEMBER if version >= 2 else CODES_MEMBER_V1
    if set(fields) != {"json", member}:
        raise SchemaError(f"{prefix}sample {key!r} has fields {sorted(fields)}, expected json and {member}")
    return member


def _decode(data: bytes, member: str, meta: dict, where: str, space: CodesSpace) -> np.ndarray:
    if member == CODES_MEMBER:
        return codes_from_npy(data, where, space.codebook_size)
    try:
        return unpack_codes(data, *meta["codes_shape"])
    except SchemaError:
        raise
    except (KeyError, TypeError, ValueError) as err:
        raise SchemaError(f"codes: {err!r}") from None
