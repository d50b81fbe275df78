"""Sources: everything a DAG downloads, under way in the background while the run plans.

In: the DAG's `source:` and `download:` sections, OUT, a task pool (pipeline.fetch.transfer_pools).
Out: each subset's verified manifest as soon as it is there (`manifests()`: a lookup waits for
that manifest only), then the audio store over every verified, indexed archive (`audio_store()`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.fetch.audio_store import DirAudioStore, TarAudioStore, index_tar
from pipeline.fetch.transfers import DownloadSettings, FileJob, Transfers, download_folder
from storage.hashing import parse_checksums

if TYPE_CHECKING:
    from pipeline.dag import Dag

log = logging.getLogger(__name__)


class Downloads:
    """What every opened source holds: its downloads under way (`transfers`, or None when it
    downloads nothing) and the task pool they run on; both closed by `close()` (or `with`)."""

    transfers: Transfers | None = None
    pool = None

    def close(self) -> None:
        if self.transfers is not None:
            self.transfers.close()
        self.pool.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Lookup(Mapping):
    """Keys known now, each value made when it is looked up (a manifest waits for its download,
    or is written from its tars): a subset's lookup waits for that subset's files only."""

    def __init__(self, keys, make):
        self._keys, self.make = dict.fromkeys(keys), make

    def __getitem__(self, key: str):
        if key not in self._keys:
            raise KeyError(key)
        return self.make(key)

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


class Sources(Downloads):
    """The run's downloads, under way in the background until `close()` (or `with`).

    Units start only after `audio_store()`: every archive downloaded, verified and indexed. A
    unit's recordings may lie in any archive, and bytes of an archive not yet verified are not
    trusted, so no unit reads a tar that is still arriving."""

    def __init__(self, dag: Dag, out: Path, progress: bool, pool):
        src, dl = dag.source, dag.download
        self.audio_dir = src.audio_dir
        folder = download_folder(src, out)
        if src.checksums is None:
            log.warning("source.checksums is null: downloads are NOT verified")
        checksums = parse_checksums(src.checksums)
        self.manifest_paths = {s: folder / src.manifest_name(s) for s in dag.subsets.roles()}
        self.tars = [] if src.audio_dir else [folder / name for name in src.audio_archives]
        jobs = [
            FileJob(base + path.name, path, checksums.get(path.name))
            for base, paths in ((src.manifest_base_url, self.manifest_paths.values()), (src.audio_base_url, self.tars))
            for path in paths
        ]
        self.pool = pool
        self.transfers = Transfers(jobs, DownloadSettings.of(dl), pool, progress)

    def manifests(self) -> Mapping[str, Path]:
        """Subset -> its verified manifest; looking a subset up waits for that manifest only."""
        return Lookup(self.manifest_paths, lambda subset: self.transfers.wait(self.manifest_paths[subset]))

    def audio_store(self):
        """Wait for every archive (verified), index it, and return the store over them all."""
        if self.audio_dir:
            return DirAudioStore(Path(self.audio_dir))
        tars = [self.transfers.wait(tar) for tar in self.tars]
        for tar in tars:
            index_tar(tar)
        return TarAudioStore(tars)
