"""valle-corpus pipeline: Libriheavy -> BPE tokens + codec codes -> WebDataset/Parquet/Shar shards.

The stages, in the order data flows: `fetch` (downloads), `plan` (manifests into units),
`text` (BPE, transcript agreement), `encode` (units: decode, slice, EnCodec/DAC/Mimi), `output` (shards,
ledger, index); `executors` run the units (in process or on Ray); `runner` orchestrates a DAG
(`dag`); `inspect` holds the tools that read a finished corpus; `cli` is `valle-prep`.
"""

__version__ = "0.1.0"  # the package's version (pyproject reads it) and index.json's pipeline_version
