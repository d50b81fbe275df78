"""Look-alike data for tests and benchmarks (both import it; neither ships in the package).

- `lookalike`: a Libriheavy look-alike: LibriLight tars of synthetic speech and real-format
  manifests, with the real corpus's defects planted (the bundled sample is made with it).
- `corpora`: built corpora (index, lengths, shards) of any size with random codes, without audio.
- `http_mirror` and `faulty_proxy`: local HTTP servers on 127.0.0.1 that serve such data, with
  ranges, drops and errors on demand.
- `manifest_reference`: lhotse's own parsing, the reference the fast manifest planner matches.
- `compare`: how alike two encodings of the same audio are.
`make_sample.py` rebuilds the bundled sample (audio/, manifests/).
"""
