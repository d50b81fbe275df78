"""Plan: the manifests streamed into units of whole recordings, the grain of resume and scheduling.

- `manifest`: Libriheavy manifest lines decoded into compact cuts, bad lines counted.
- `parse_pool`: manifest blocks parsed in worker processes (or Ray tasks), results in order.
- `cut_ids`: sets of cut ids as 128-bit digests, for duplicates within and across subsets.
- `subsets`: each subset planned as its manifest arrives; units written to OUT/plan/.
"""
