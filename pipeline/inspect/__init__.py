"""Inspect a corpus: `valle-prep status`, `verify`, `report` and `listen`.

They read a finished corpus as any consumer does, through schemas/ and storage/ (a folder,
http(s):// or s3://); `status` reads a run's plans and ledger (a folder).
"""
