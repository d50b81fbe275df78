"""Output and index: what a run leaves in OUT, and how it is committed.

- `lock`: one valle-prep run at a time on an output folder.
- `ledger`: one entry per unit, written last, saying what is committed (the resume record).
- `shards`: a unit's samples in every format asked for, durably, under temporary names.
- `index`: index.json, lengths.parquet and rejects.jsonl, built from the plans and the ledger.
The bytes of each format are the contract's (schemas/).
"""
