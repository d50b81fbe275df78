"""Fetch: the DAG's manifests and audio archives, downloaded at once, verified, read in place.

- `sources`: what a DAG downloads, started in the background; manifests handed over as they arrive.
- `transfers`: many files at once, large ones as byte ranges, a cap of connections per host.
- `transfer_pools`: where the transfer tasks run (Ray actors on the driver's node, or threads).
- `audio_store`: LibriLight FLACs read in place from the (never extracted) tars, or a folder.
One file's download (one stream, or ranges with their ledger) is storage.download / storage.ranged.
"""
