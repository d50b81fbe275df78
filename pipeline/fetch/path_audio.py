"""Audio files where a lhotse manifest says they are: local paths, http(s):// or s3:// URLs.

In: a compact cut's `audio` (an absolute path or a URL, as pipeline.plan.lhotse_lines resolves
it; a relative path is read under `root`). Out: the file's bytes, read through storage.remote
(one reader for local files and remote objects, with its retries). A file that is not there is
`MissingAudio` (the cuts become `missing_audio` rejects); a remote read that keeps failing is an
error of the unit, retried by the next run, never a reject.

Cheap to pickle (Ray ships it to every worker): it holds the root alone.
"""

from __future__ import annotations

import os

from pipeline.fetch.audio_store import MissingAudio
from storage import remote


class PathAudioStore:
    def __init__(self, root: str):
        self.root = root

    def __repr__(self) -> str:
        return f"PathAudioStore({self.root!r})"

    def location(self, audio: str) -> str:
        if remote.is_remote(audio) or os.path.isabs(audio):
            return audio
        return remote.join(self.root, audio)

    def read_bytes(self, audio: str) -> bytes:
        location = self.location(audio)
        try:
            return remote.read_bytes(location)
        except remote.NOT_THERE as err:
            raise MissingAudio(f"audio {location} not found ({err.__class__.__name__})") from None
        except ValueError as err:  # a scheme storage cannot read (ftp://...)
            raise MissingAudio(str(err)) from None
