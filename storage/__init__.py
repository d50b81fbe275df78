"""The bottom layer: bytes in and out, for every layer above (tokens, schemas, pipeline, trainer).

- `storage.files`: atomic write-then-rename, fsync, deterministic JSON.
- `storage.hashing`: published checksums, streamed file digests, fingerprints of settings.
- `storage.http`: the one HTTP range request; `storage.retry`: the one retry loop.
- `storage.remote`: reading a folder, http(s):// or s3:// location: streams, bytes, ranges.
- `storage.download` and `storage.ranged`: resumable, verified downloads of one file, as one
  stream or as byte ranges tracked by a range ledger.
- `storage.settings`: YAML settings files read into typed dataclasses (DAGs, trainer configs).
Nothing here imports another layer of the project.
"""
