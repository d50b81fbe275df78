"""pipeline.fetch.audio_store: index a LibriLight-like tar once, read FLAC members in place."""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.fetch.audio_store import DirAudioStore, MissingAudio, TarAudioStore, index_members, index_tar

BOOK = "small/42/Some_Book__v2-64kb_mp3"
GOOD = [f"{BOOK}/03_some_book_64kb.flac", f"{BOOK}/04_some_book_64kb.flac"]
SIDECAR = f"{BOOK}/03_some_book_64kb.json"


def flac_bytes(seed: int) -> bytes:
    noise = np.random.default_rng(seed).uniform(-0.5, 0.5, 16_000).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, noise, 16_000, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def add_file(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def add_special(tf: tarfile.TarFile, name: str, kind: bytes, linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    tf.addfile(info)


@pytest.fixture
def tar_and_files(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    files = {GOOD[0]: flac_bytes(0), GOOD[1]: flac_bytes(1), SIDECAR: b'{"speaker": "42"}'}
    tar_path = tmp_path / "small.tar"
    with tarfile.open(tar_path, "w") as tf:
        add_special(tf, "small/42", tarfile.DIRTYPE)
        add_file(tf, GOOD[0], files[GOOD[0]])
        add_file(tf, "./" + GOOD[1], files[GOOD[1]])  # leading ./ is stripped
        add_file(tf, SIDECAR, files[SIDECAR])
        add_special(tf, f"{BOOK}/link.flac", tarfile.SYMTYPE, "03_some_book_64kb.flac")
        add_special(tf, f"{BOOK}/hard.flac", tarfile.LNKTYPE, GOOD[0])
        add_file(tf, "../evil.flac", flac_bytes(2))
        add_file(tf, "small/../../evil2.flac", flac_bytes(3))
        add_file(tf, "/abs.flac", flac_bytes(4))
    return tar_path, files


def test_good_members_read_back_byte_identical(tar_and_files):
    tar_path, files = tar_and_files
    store = TarAudioStore([tar_path])
    for name, data in files.items():
        assert name in store
        assert store.read_bytes(name) == data
    samples, rate = sf.read(io.BytesIO(store.read_bytes(GOOD[0])))
    assert rate == 16_000 and samples.shape == (16_000,)
    assert len(store) == 3


def test_bad_members_are_skipped_with_reasons_and_unreadable(tar_and_files):
    tar_path, _ = tar_and_files
    index = json.loads(index_tar(tar_path).read_text())
    assert index["tar"] == "small.tar" and index["tar_bytes"] == tar_path.stat().st_size
    assert sorted(index["members"]) == sorted([*GOOD, SIDECAR])
    reasons = {s["name"]: s["reason"] for s in index["skipped"]}
    assert reasons == {
        "small/42": "directory",
        f"{BOOK}/link.flac": "symlink",
        f"{BOOK}/hard.flac": "hardlink",
        "../evil.flac": "path contains '..'",
        "small/../../evil2.flac": "path contains '..'",
        "/abs.flac": "absolute path",
    }
    store = TarAudioStore([tar_path])
    for name in reasons:
        assert name not in store
        with pytest.raises(MissingAudio, match="skipped when indexing"):
            store.read_bytes(name)


def test_unknown_name_raises_missing_audio_naming_it(tar_and_files):
    store = TarAudioStore([tar_and_files[0]])
    with pytest.raises(MissingAudio, match=r"small/1/nope/x\.flac.*small\.tar"):
        store.read_bytes("small/1/nope/x.flac")
    assert "small/1/nope/x.flac" not in store


def test_store_pickles_and_reads_after_unpickling(tar_and_files):
    tar_path, files = tar_and_files
    store = TarAudioStore([tar_path])
    assert store.read_bytes(GOOD[1]) == files[GOOD[1]]  # warm this process's caches first
    blob = pickle.dumps(store)
    assert len(blob) < 500  # only the paths travel, not the index or file handles
    clone = pickle.loads(blob)
    assert clone.read_bytes(GOOD[0]) == files[GOOD[0]]


def test_index_is_reused_and_rebuilt_when_the_tar_changes(tar_and_files):
    tar_path, _ = tar_and_files
    index = index_tar(tar_path)
    index.write_text(index.read_text().replace('"skipped"', '"skipped_marker_kept": 1, "skipped"'))
    assert index_tar(tar_path) == index
    assert "skipped_marker_kept" in index.read_text()  # reused, not rewritten
    with tarfile.open(tar_path, "a") as tf:  # the tar grew: the old index is stale
        add_file(tf, f"{BOOK}/05_new.flac", bytes(30_000))
    index_tar(tar_path)
    fresh = json.loads(index.read_text())
    assert "skipped_marker_kept" not in fresh and f"{BOOK}/05_new.flac" in fresh["members"]


def test_indexing_reads_headers_not_member_data(tmp_path):
    tar_path = tmp_path / "big.tar"
    with tarfile.open(tar_path, "w") as tf:
        for i in range(4):
            add_file(tf, f"small/1/b/{i}.flac", bytes(2_000_000))

    class CountingReader(io.RawIOBase):
        def __init__(self, f):
            self.f, self.read_bytes = f, 0

        def readable(self):
            return True

        def seekable(self):
            return True

        def read(self, n=-1):
            data = self.f.read(n)
            self.read_bytes += len(data)
            return data

        def seek(self, pos, whence=0):
            return self.f.seek(pos, whence)

        def tell(self):
            return self.f.tell()

    with open(tar_path, "rb") as f:
        reader = CountingReader(f)
        members, skipped = index_members(reader)
    assert len(members) == 4 and skipped == []
    assert reader.read_bytes < 20_000  # headers only, out of 8 MB of member data


def test_earlier_tar_wins(tmp_path):
    first, second = tmp_path / "small.tar", tmp_path / "medium.tar"
    with tarfile.open(first, "w") as tf:
        add_file(tf, "small/1/b/x.flac", b"from small")
    with tarfile.open(second, "w") as tf:
        add_file(tf, "small/1/b/x.flac", b"from medium")
        add_file(tf, "medium/2/b/y.flac", b"only medium")
    store = TarAudioStore([first, second])
    assert store.read_bytes("small/1/b/x.flac") == b"from small"
    assert store.read_bytes("medium/2/b/y.flac") == b"only medium"


def test_compressed_tar_is_refused_clearly(tmp_path):
    tar_path = tmp_path / "small.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tf:
        add_file(tf, "small/1/b/x.flac", b"x")
    with pytest.raises(ValueError, match="small.tar.gz.*uncompressed tar"):
        index_tar(tar_path)


def test_dir_store_reads_and_refuses_escaping_paths(tmp_path):
    root = tmp_path / "librilight"
    (root / BOOK).mkdir(parents=True)
    (root / GOOD[0]).write_bytes(b"flac")
    (tmp_path / "secret.flac").write_bytes(b"secret")
    os.symlink(tmp_path / "secret.flac", root / BOOK / "escape.flac")
    store = pickle.loads(pickle.dumps(DirAudioStore(root)))
    assert store.read_bytes(GOOD[0]) == b"flac" and GOOD[0] in store
    for bad in ["../secret.flac", f"{BOOK}/escape.flac", str(tmp_path / "secret.flac")]:
        assert bad not in store
        with pytest.raises(MissingAudio, match="refused"):
            store.read_bytes(bad)
    with pytest.raises(MissingAudio, match="not found under"):
        store.read_bytes(f"{BOOK}/missing.flac")
