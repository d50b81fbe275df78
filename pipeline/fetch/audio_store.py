"""Read LibriLight FLAC files in place from the (huge, uncompressed) audio tars, or from a folder.

In: LibriLight tars (small/medium/large.tar), or the folder a user already extracted them to.
Out: the bytes of one member, e.g. `small/42/some_book_64kb_mp3/03_some_book_64kb.flac`.

large.tar is ~3 TB, so we never extract. `index_tar` walks the tar headers once (seeking over
member data, never reading it) and writes `<tar>.members.json`:
    {"tar": "small.tar", "tar_bytes": 37580963840,
     "members": {"small/42/.../03_x.flac": [data_offset, size], ...},
     "skipped": [{"name": "...", "reason": "symlink"}, ...]}
Only regular files are indexed; links, devices, folders, sparse files and names that are
absolute or contain `..` are skipped with the reason recorded. A reader then seeks to
`data_offset` and reads `size` bytes.

`TarAudioStore` is cheap to build and to pickle (Ray sends it to every worker): it holds only the
tar paths. Each process loads the member indexes once (shared by all stores over the same tars)
and keeps one file descriptor per tar, read with os.pread so threads and forked workers never
race on a shared file position.

`NamedTarStore` is for sources of many tars (Emilia: thousands) whose units each read one or a
few: audio is named `<tar name>/<member>`, and a process keeps only the indexes of the tars it
read last (`MAX_TAR_INDEXES`), opening a tar for each read, so its memory and open files stay
flat however many tars the corpus has.
"""

from __future__ import annotations

import json
import os
import tarfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from storage.files import write_json_atomic


class MissingAudio(LookupError):
    """The requested audio file is not in the store (absent, skipped when indexing, or refused)."""


def index_path(tar_path: Path) -> Path:
    tar_path = Path(tar_path)
    return tar_path.with_name(tar_path.name + ".members.json")


def _unsafe_name_reason(name: str) -> str | None:
    if name.startswith("/"):
        return "absolute path"
    if ".." in PurePosixPath(name).parts:
        return "path contains '..'"
    if not name:
        return "empty name"
    return None


def _kind(member: tarfile.TarInfo) -> str:
    for test, kind in (
        (member.issym, "symlink"),
        (member.islnk, "hardlink"),
        (member.isdir, "directory"),
        (member.ischr, "character device"),
        (member.isblk, "block device"),
        (member.isfifo, "fifo"),
    ):
        if test():
            return kind
    return f"not a regular file (type {member.type!r})"


def _skip_reason(member: tarfile.TarInfo, name: str) -> str | None:
    """Why a member is not indexed, or None for a readable regular file with a safe name."""
    if not member.isreg():
        return _kind(member)
    if member.issparse():
        return "sparse file (data is not stored contiguously)"
    return _unsafe_name_reason(name)


def index_members(fileobj: BinaryIO) -> tuple[dict[str, list[int]], list[dict[str, str]]]:
    """Walk the tar headers of a seekable, uncompressed tar; return (members, skipped)."""
    members: dict[str, list[int]] = {}
    skipped: list[dict[str, str]] = []
    with tarfile.open(fileobj=fileobj, mode="r:") as tf:
        # Calling next() ourselves and dropping tf.members keeps memory flat on ~500k members;
        # in "r:" mode next() seeks past each member's data instead of reading it.
        while (member := tf.next()) is not None:
            tf.members.clear()
            name = member.name
            while name.startswith("./"):
                name = name[2:]
            reason = _skip_reason(member, name)
            if reason is not None:
                skipped.append({"name": name or member.name, "reason": reason})
                continue
            if name in members:  # appended later (tar -r): the later copy is the current one
                skipped.append({"name": name, "reason": "duplicate name; a later copy is used"})
            members[name] = [member.offset_data, member.size]
    return members, skipped


def index_tar(tar_path: Path) -> Path:
    """Write `<tar>.members.json` (atomically) unless a valid one exists; return its path."""
    tar_path = Path(tar_path)
    out = index_path(tar_path)
    try:
        tar_bytes = tar_path.stat().st_size
    except FileNotFoundError:
        raise FileNotFoundError(f"audio tar {tar_path} does not exist; download it first") from None
    try:
        existing = json.loads(out.read_text(encoding="utf-8"))
        if existing.get("tar_bytes") == tar_bytes and isinstance(existing.get("members"), dict):
            return out
    except (OSError, ValueError, AttributeError):
        pass  # missing or unreadable index: rebuild it
    try:
        with open(tar_path, "rb") as f:
            members, skipped = index_members(f)
    except tarfile.ReadError as e:
        raise ValueError(
            f"{tar_path} cannot be read as an uncompressed tar ({e}): if it is truncated, "
            f"download it again; if it is compressed, decompress it (tars are read in place)"
        ) from e
    write_json_atomic(out, {"tar": tar_path.name, "tar_bytes": tar_bytes, "members": members, "skipped": skipped})
    return out


def indexed_tars(tars: Sequence[Path]) -> list[Path]:
    """`tars`, each indexed (`index_tar`), once every one is there; else FileNotFoundError naming
    those that are not."""
    if missing := [str(t) for t in tars if not Path(t).is_file()]:
        raise FileNotFoundError(f"the audio tars {missing} are not there")
    for tar in tars:
        index_tar(tar)
    return list(tars)


# Per-process caches shared by all stores: key -> {name: (tar_index, offset, size)} etc.
_LOCK = threading.Lock()
_LOCATIONS: dict[tuple[str, ...], dict[str, tuple[int, int, int]]] = {}
_SKIPPED: dict[tuple[str, ...], dict[str, str]] = {}
_FDS: dict[tuple[int, str], int] = {}  # (pid, tar path) -> fd


def _normalise(rel_path: str) -> str:
    while rel_path.startswith("./"):
        rel_path = rel_path[2:]
    return rel_path


class TarAudioStore:
    """Members of one or more LibriLight tars; a name found in an earlier tar wins."""

    def __init__(self, tar_paths: Sequence[Path]):
        if isinstance(tar_paths, (str, Path)):
            raise TypeError("TarAudioStore takes a list of tar paths, e.g. [Path('small.tar')]")
        self.tar_paths = tuple(Path(p).absolute() for p in tar_paths)
        if not self.tar_paths:
            raise ValueError("TarAudioStore needs at least one tar path")

    def __repr__(self) -> str:
        return f"TarAudioStore({[str(p) for p in self.tar_paths]})"

    def __getstate__(self) -> dict:  # only the paths travel; caches are rebuilt per process
        return {"tar_paths": self.tar_paths}

    def __setstate__(self, state: dict) -> None:
        self.tar_paths = state["tar_paths"]

    def _key(self) -> tuple[str, ...]:
        return tuple(str(p) for p in self.tar_paths)

    def _locations(self) -> dict[str, tuple[int, int, int]]:
        key = self._key()
        locations = _LOCATIONS.get(key)
        if locations is not None:
            return locations
        with _LOCK:
            if key not in _LOCATIONS:
                locations, skipped = {}, {}
                for i, tar in enumerate(self.tar_paths):
                    index = json.loads(index_tar(tar).read_text(encoding="utf-8"))
                    for name, (offset, size) in index["members"].items():
                        locations.setdefault(name, (i, offset, size))
                    for entry in index["skipped"]:
                        skipped.setdefault(entry["name"], f"{entry['reason']} (in {tar.name})")
                _SKIPPED[key] = skipped
                _LOCATIONS[key] = locations
            return _LOCATIONS[key]

    def __contains__(self, rel_path: str) -> bool:
        return _normalise(rel_path) in self._locations()

    def __len__(self) -> int:
        return len(self._locations())

    def read_bytes(self, rel_path: str) -> bytes:
        name = _normalise(rel_path)
        location = self._locations().get(name)
        if location is None:
            reason = _SKIPPED[self._key()].get(name)
            tars = ", ".join(p.name for p in self.tar_paths)
            why = f"it was skipped when indexing: {reason}" if reason else "no such member"
            raise MissingAudio(
                f"audio {rel_path!r} is not readable from the tars [{tars}]: {why}. Check that "
                f"the tar holding this subset is configured (some Libriheavy manifest entries "
                f"have no audio at all)"
            )
        tar_index, offset, size = location
        tar = self.tar_paths[tar_index]
        return _read_member(_fd(tar), tar, rel_path, offset, size)


def _read_member(fd: int, tar: Path, rel_path: str, offset: int, size: int) -> bytes:
    chunks, done = [], 0
    while done < size:  # pread may return fewer bytes than asked for
        chunk = os.pread(fd, size - done, offset + done)
        if not chunk:
            raise MissingAudio(
                f"audio {rel_path!r}: {tar} ends at byte {offset + done}, inside this member "
                f"({size} bytes at {offset}); the tar is truncated, download it again"
            )
        chunks.append(chunk)
        done += len(chunk)
    return b"".join(chunks)


MAX_TAR_INDEXES = 8  # per process, for NamedTarStore: a unit reads one tar, or a few small ones
_TAR_INDEXES: OrderedDict[str, dict] = OrderedDict()  # tar path -> its index, least recently used first


class NamedTarStore:
    """Members of many tars, named `<tar name>/<member>`; see the module docstring."""

    def __init__(self, tar_paths: Sequence[Path]):
        self.tars = {Path(p).name: Path(p).absolute() for p in tar_paths}

    def __repr__(self) -> str:
        return f"NamedTarStore({len(self.tars)} tars)"

    def read_bytes(self, rel_path: str) -> bytes:
        name, _, member = rel_path.partition("/")
        tar = self.tars.get(name)
        if tar is None:
            raise MissingAudio(f"audio {rel_path!r}: no tar {name!r} among the {len(self.tars)} of this source")
        index = _tar_index(tar)
        location = index["members"].get(_normalise(member))
        if location is None:
            why = next((e["reason"] for e in index["skipped"] if e["name"] == member), "no such member")
            raise MissingAudio(f"audio {rel_path!r} is not readable from {tar}: {why}")
        fd = os.open(tar, os.O_RDONLY)  # one per read: no descriptor outlives its read
        try:
            return _read_member(fd, tar, rel_path, *location)
        finally:
            os.close(fd)


def _tar_index(tar: Path) -> dict:
    key = str(tar)
    with _LOCK:
        index = _TAR_INDEXES.get(key)
        if index is not None:
            _TAR_INDEXES.move_to_end(key)
            return index
    index = json.loads(index_tar(tar).read_text(encoding="utf-8"))
    with _LOCK:
        _TAR_INDEXES[key] = index
        while len(_TAR_INDEXES) > MAX_TAR_INDEXES:
            _TAR_INDEXES.popitem(last=False)
    return index


def _fd(tar: Path) -> int:
    key = (os.getpid(), str(tar))  # fds are per process: never reuse one opened before a fork
    fd = _FDS.get(key)
    if fd is None:
        with _LOCK:
            fd = _FDS.get(key)
            if fd is None:
                fd = _FDS[key] = os.open(tar, os.O_RDONLY)
    return fd


class DirAudioStore:
    """Files under an extracted LibriLight folder; paths may not escape `root`."""

    def __init__(self, root: Path):
        self.root = Path(root).absolute()

    def __repr__(self) -> str:
        return f"DirAudioStore({str(self.root)!r})"

    def _path(self, rel_path: str) -> Path:
        name = _normalise(rel_path)
        reason = _unsafe_name_reason(name)
        path = (self.root / name).resolve()
        if reason is None and not path.is_relative_to(self.root.resolve()):
            reason = "resolves outside the root (symlink?)"
        if reason:
            raise MissingAudio(f"audio {rel_path!r} refused: {reason}; paths must stay under {self.root}")
        return path

    def __contains__(self, rel_path: str) -> bool:
        try:
            return self._path(rel_path).is_file()
        except MissingAudio:
            return False

    def read_bytes(self, rel_path: str) -> bytes:
        path = self._path(rel_path)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise MissingAudio(
                f"audio {rel_path!r} not found under {self.root}; check the audio root "
                f"(manifests say download/librilight/..., the root is the folder holding small/ etc.)"
            ) from None
