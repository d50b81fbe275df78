"""Encode units: each planned unit decoded, sliced, encoded by EnCodec and committed.

- `unit`: one unit brought up to date: codes (decode + slice here, encode in the codec worker),
  then shards from its codes file; the ledger entry last.
- `segment`: one recording decoded once, every window of it sliced out.
- `codec_worker`: decoded windows in, codes out; one per GPU (or CPU node), shared by units.
- `codes_file`: a unit's codes streamed to OUT/work/codes/<unit>.npz and read back cut by cut.
Which process runs what is the executors' business (pipeline.executors).
"""
