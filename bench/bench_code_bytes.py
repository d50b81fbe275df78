"""Code bytes per audio second in each shard format, schema v1 (packed 10-bit) against v2 (stock
readers: .npy members, list<list<uint16>> Parquet column).

    python bench/bench_code_bytes.py out/sample          # a built corpus (v1 or v2), e.g. the sample

Reads every sample of the corpus through trainer.corpus (its own codes, text and metadata), then
writes them again with the v1 writers (sample/corpora.py, as valle-corpus wrote them
before v2) and the v2 writers (pipeline.output.shards), and reports, per format, what the codes take
on disk per second of audio:
- WebDataset: the codes members (payload; and with their 512-byte tar header and padding);
- Parquet: the compressed column chunks of the codes columns (from the file's metadata);
- the whole files, for context.
Four inputs: the corpus's codes in its own shards; the same codes in one shard per format (the
per-file overhead amortized, as in a real ~20 h shard); uniformly random codes of the same
lengths in one shard, the worst case for compression; and uniformly random codes at
Libriheavy-like lengths (1-30 s, mean ~15 s: per-utterance overhead weighs less than on the
sample's ~3.5 s cuts). A random-init EnCodec (the offline sample)
uses few codebook entries, so its codes compress far better than a pretrained codec's, which uses
nearly all 1,024: the random-codes column bounds what a real corpus takes. The per-codebook
entropy of the corpus's codes is printed too, and what the v2 codes column would take with
other Parquet encodings (why the writer uses a dictionary).
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import schemas  # noqa: E402
from pipeline.output.shards import write_parquet, write_webdataset  # noqa: E402
from sample.corpora import write_parquet_v1, write_webdataset_v1  # noqa: E402
from schemas.reading import read_shard  # noqa: E402
from schemas.sample import Sample  # noqa: E402
from trainer.corpus import open_corpus  # noqa: E402

TAR_BLOCK = 512
LONG_SAMPLES = 1000  # ~4 h of random codes at Libriheavy-like lengths: about one Parquet row group
WRITERS = {
    ("webdataset", 1): write_webdataset_v1,
    ("webdataset", 2): write_webdataset,
    ("parquet", 1): write_parquet_v1,
    ("parquet", 2): write_parquet,
}


def corpus_samples(location: str) -> list[list[Sample]]:
    """Every sample of the corpus, shard by shard (its Parquet shards if it has them, else its tars)."""
    corpus = open_corpus(location, roles=("train", "dev", "test"), allow_random_codec=True)
    index = corpus.index
    fmt = "parquet" if any(s["format"] == "parquet" for s in index["shards"]) else "webdataset"
    corpus = open_corpus(location, roles=("train", "dev", "test"), fmt=fmt, allow_random_codec=True)
    full = {(s["id"], s["format"]): s for s in index["shards"]}
    shards = []
    for shard in corpus.shards:  # codes through the trainer's reader; the other fields from the shard
        codes = [c for _, _, c in read_shard(shard)]
        metas = _metadata(Path(location) / full[(shard.id, shard.format)]["path"], fmt)
        shards.append([Sample(**m, codes=c) for m, c in zip(metas, codes, strict=True)])
    return shards


def _metadata(path: Path, fmt: str) -> list[dict]:
    """The samples' metadata fields (sample.v2) in shard order, from a v1 or v2 shard."""
    fields = [k for k in schemas.load_schema("sample.v2")["properties"]]
    if fmt == "parquet":
        return pq.read_table(path, columns=fields).to_pylist()
    with tarfile.open(path) as tar:
        return [
            {k: m[k] for k in fields}
            for m in (json.loads(tar.extractfile(i).read()) for i in tar if i.name.endswith(".json"))
        ]


def measure(shards: list[list[Sample]], folder: Path) -> dict:
    """{(format, version): (codes payload B, codes on disk B, file B)} for these shards."""
    out = {}
    for (fmt, version), write in WRITERS.items():
        payload = disk = files = 0
        for k, samples in enumerate(shards):
            path = folder / f"{fmt}-v{version}-{k}"
            if fmt == "webdataset":
                write(samples, path, "u", 0)
                with tarfile.open(path) as tar:
                    sizes = [m.size for m in tar if not m.name.endswith(".json")]
                payload += sum(sizes)
                disk += sum(TAR_BLOCK + -(-n // TAR_BLOCK) * TAR_BLOCK for n in sizes)
            else:
                write(samples, path)
                meta = pq.ParquetFile(path).metadata
                codes_columns = ("codes", "codes_codebooks", "codes_frames") if version == 1 else ()
                n = sum(
                    c.total_compressed_size
                    for g in range(meta.num_row_groups)
                    for c in (meta.row_group(g).column(i) for i in range(meta.num_columns))
                    if c.path_in_schema in codes_columns or c.path_in_schema.startswith("codes.")
                )
                payload += n
                disk += n
            files += path.stat().st_size
            path.unlink()
        out[(fmt, version)] = (payload, disk, files)
    return out


ENCODINGS = {  # Parquet writer settings for the codes column alone
    "dictionary + zstd (written)": dict(use_dictionary=True, compression="zstd"),
    "plain + zstd": dict(use_dictionary=False, compression="zstd"),
    "byte-stream-split + zstd": dict(use_dictionary=False, use_byte_stream_split=True, compression="zstd"),
    "dictionary, uncompressed": dict(use_dictionary=True, compression="none"),
}


def encodings(samples: list[Sample], seconds: float) -> dict[str, float]:
    """Code bytes per audio second of the v2 codes column under each of ENCODINGS."""
    import pyarrow as pa

    table = pa.table({"codes": schemas.codes_to_arrow([s.codes for s in samples])})
    out = {}
    for name, settings in ENCODINGS.items():
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, **settings)
        meta = pq.ParquetFile(pa.BufferReader(sink.getvalue())).metadata
        out[name] = sum(meta.row_group(g).column(0).total_compressed_size for g in range(meta.num_row_groups)) / seconds
    return out


def random_codes(rng: np.random.Generator, codebooks: int, frames: int) -> np.ndarray:
    return rng.integers(0, schemas.CODEBOOK_SIZE, (codebooks, frames)).astype(np.uint16)


def entropy_bits(shards: list[list[Sample]]) -> list[float]:
    codes = np.concatenate([s.codes for shard in shards for s in shard], axis=1)
    bits = []
    for row in codes:
        p = np.bincount(row, minlength=schemas.CODEBOOK_SIZE) / row.size
        p = p[p > 0]
        bits.append(float(-(p * np.log2(p)).sum()))
    return bits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", help="a built corpus folder (holding index.json), e.g. out/sample")
    parser.add_argument("--seed", type=int, default=0, help="for the random codes")
    args = parser.parse_args()
    if not (Path(args.corpus) / "index.json").is_file():
        sys.exit(f"{args.corpus}: no index.json; build it first: valle-prep run dags/sample.yaml --out {args.corpus}")

    shards = corpus_samples(args.corpus)
    seconds = sum(s.duration for shard in shards for s in shard)
    one = [[s for shard in shards for s in shard]]
    rng = np.random.default_rng(args.seed)
    uniform = [[Sample(**{**s.__dict__, "codes": random_codes(rng, *s.codes.shape)}) for s in one[0]]]
    template = one[0][0]
    long = [
        [
            Sample(**{**template.__dict__, "duration": frames / 75, "codes": random_codes(rng, 8, frames)})
            for frames in rng.integers(75, 2251, LONG_SAMPLES).tolist()
        ]
    ]
    with tempfile.TemporaryDirectory() as tmp:
        results = {
            name: measure(data, Path(tmp))
            for name, data in (("own", shards), ("one", one), ("uniform", uniform), ("long", long))
        }
        long_seconds = sum(s.duration for s in long[0])

    n = sum(len(shard) for shard in shards)
    print(f"{args.corpus}: {n} samples, {seconds:.1f} s of audio, {len(shards)} shards per format")
    print(
        "codebook entropy (bits; 10 = every entry equally used): " + " ".join(f"{b:.2f}" for b in entropy_bits(shards))
    )
    print()
    print(
        "| format | schema | codes B/s, its shards | one shard | uniformly random codes, one shard "
        f"| random codes, {LONG_SAMPLES} cuts of 1-30 s | whole files B/s, its shards |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for fmt, version in WRITERS:
        own, single, rand, long_ = (results[k][(fmt, version)] for k in ("own", "one", "uniform", "long"))
        what = "payload / with tar headers" if fmt == "webdataset" else "compressed column chunks"

        def cell(r, secs=seconds, fmt=fmt):
            return f"{r[0] / secs:.0f} / {r[1] / secs:.0f}" if fmt == "webdataset" else f"{r[0] / secs:.0f}"

        print(
            f"| {fmt} ({what}) | v{version} | {cell(own)} | {cell(single)} | {cell(rand)} "
            f"| {cell(long_, long_seconds)} | {own[2] / seconds:.0f} |"
        )
    print()
    print("| v2 Parquet codes column, one shard | its codes B/s | random codes, 1-30 s cuts, B/s |")
    print("|---|---:|---:|")
    own, rand = encodings(one[0], seconds), encodings(long[0], long_seconds)
    for name in ENCODINGS:
        print(f"| {name} | {own[name]:.0f} | {rand[name]:.0f} |")


if __name__ == "__main__":
    main()
