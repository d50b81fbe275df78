"""valle-corpus pipeline: Libriheavy -> BPE tokens + EnCodec codes -> WebDataset/Parquet shards."""

__version__ = "0.1.0"
