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
from storage.hashing import Checksum

if TYPE_CHECKING:
    from pipeline.dag import Dag

log = logging.getLogger(__name__)


class Sources:
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
        checksums = {name: Checksum.parse(text) for name, text in (src.checksums or {}).items()}
        self.manifest_paths = {s: folder / src.manifest_name(s) for s in dag.subsets.roles()}
        self.tars = [] if src.audio_dir else [folder / name for name in src.audio_archives]
        jobs = [
            FileJob(base + path.name, path, checksums.get(path.name))
            for base, paths in ((src.manifest_base_url, self.manifest_paths.values()), (src.audio_base_url, self.tars))
            for path in paths
        ]
        settings = DownloadSettings(
            connections=dl.connections, range_bytes=dl.range_bytes, retries=dl.retries, timeout_s=dl.timeout_s
        )
        self.pool = pool
        self.transfers = Transfers(jobs, settings, pool, progress)

    def manifests(self) -> Mapping[str, Path]:
        """Subset -> its verified manifest; looking a subset up waits for that manifest only."""
        return _Arriving(self.manifest_paths, self.transfers.wait)

    def audio_store(self):
        """Wait for every archive (verified), index it, and return the store over them all."""
        if self.audio_dir:
            return DirAudioStore(Path(self.audio_dir))
        tars = [self.transfers.wait(tar) for tar in self.tars]
        for tar in tars:
            index_tar(tar)
        return TarAudioStore(tars)

    def close(self) -> None:
        self.transfers.close()
        self.pool.close()

    def __enter__(self) -> Sources:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Arriving(Mapping):
    """A mapping whose values are files still downloading: a lookup waits for that file."""

    def __init__(self, paths: dict[str, Path], wait):
        self.paths, self.wait = paths, wait

    def __getitem__(self, key: str) -> Path:
        return self.wait(self.paths[key])

    def __iter__(self):
        return iter(self.paths)

    def __len__(self) -> int:
        return len(self.paths)
