"""The formats' strict readers (schemas/), which the trainer, verify, report and listen share:
every damage is a SchemaError naming the sample, and unwanted samples are never decoded."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas import SchemaError, codes_to_npy, parquet, webdataset
from tests.test_shards import samples


def tar_of(members: list[tuple[str, bytes]], directory: str | None = None) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        if directory:
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def written_tar() -> io.BytesIO:
    buf = io.BytesIO()
    webdataset.write(samples(4), buf, "u", 0)
    buf.seek(0)
    return buf


def test_webdataset_reads_what_it_wrote_and_only_what_is_wanted():
    got = list(webdataset.read(written_tar()))
    assert [m["id"] for m, _ in got] == [s.id for s in samples(4)]
    assert all(np.array_equal(c, s.codes) for (_, c), s in zip(got, samples(4)))
    members = list(tarfile.open(fileobj=written_tar()))
    damaged = [
        (
            m.name,
            b"not an array"
            if m.name.startswith("u_000001.") and m.name.endswith(".npy")
            else tarfile.open(fileobj=written_tar()).extractfile(m.name).read(),
        )
        for m in members
    ]
    wanted = list(webdataset.read(tar_of(damaged), np.array([0, 2])))  # sample 1 is passed over unread
    assert [m["id"] for m, _ in wanted] == [samples(4)[0].id, samples(4)[2].id]
    with pytest.raises(SchemaError, match=r"u_000001\.codes\.npy: not a readable \.npy"):
        list(webdataset.read(tar_of(damaged)))
    yielded = list(webdataset.read(tar_of(damaged), bad_codes="yield"))
    assert isinstance(yielded[1][1], SchemaError) and isinstance(yielded[2][1], np.ndarray)


@pytest.mark.parametrize(
    "members, directory, message",
    [
        ([("a.json", b"{}")], None, r"sample 'a' has fields \['json'\], expected json and codes\.npy"),
        ([("a.json", b"{}"), ("b.json", b"{}"), ("a.codes.npy", b"")], None, r"sample 'a' has fields \['json'\]"),
        ([("a.json", b"{}"), ("a.json", b"{}")], None, r"sample 'a' has two 'json' members"),
        ([], "a.json", r"member 'a\.json' is not a regular file"),
    ],
)
def test_webdataset_refuses_members_that_do_not_pair_up(members, directory, message):
    with pytest.raises(SchemaError, match=message):
        list(webdataset.read(tar_of(members, directory), where="shard.tar"))


def test_webdataset_version_decides_the_codes_member():
    v2 = [("a.json", b'{"id": "a"}'), ("a.codes.npy", codes_to_npy(np.zeros((8, 4), np.uint16)))]
    assert len(list(webdataset.read(tar_of(v2), version=2))) == 1
    with pytest.raises(SchemaError, match="expected json and codes$"):
        list(webdataset.read(tar_of(v2), version=1))


def test_parquet_refuses_other_columns_and_reads_row_groups_it_needs(tmp_path, monkeypatch):
    monkeypatch.setattr(parquet, "PARQUET_ROW_GROUP", 2)
    with open(tmp_path / "x.parquet", "wb") as f:
        parquet.write(samples(5), f)
    file = pq.ParquetFile(tmp_path / "x.parquet")
    got = list(parquet.read(file, np.array([3, 4]), columns=["id"]))
    assert [m for m, _ in got] == [{"id": samples(5)[3].id}, {"id": samples(5)[4].id}]
    table = pq.read_table(tmp_path / "x.parquet").append_column("extra", pa.array(range(5)))
    pq.write_table(table, tmp_path / "y.parquet")
    with pytest.raises(SchemaError, match=r"columns differ from schemas/parquet\.v2\.json"):
        list(parquet.read(pq.ParquetFile(tmp_path / "y.parquet")))
    with pytest.raises(SchemaError, match=r"columns differ from schemas/parquet\.v1\.json"):
        list(parquet.read(file, version=1))


def test_parquet_decodes_a_few_rows_at_a_time_whatever_the_row_group(tmp_path, monkeypatch):
    """What a reader holds is READ_ROWS rows, not a row group: a loader worker keeps 64 shards
    open (bench/bench_reader_memory.py measures the memory)."""
    import schemas.codes

    with open(tmp_path / "x.parquet", "wb") as f:
        parquet.write(samples(20), f)  # one row group of 20
    decoded, real = [], parquet.codes_from_arrow
    monkeypatch.setattr(
        parquet,
        "codes_from_arrow",
        lambda column, where, **kw: decoded.append(len(column)) or real(column, where, **kw),
    )
    monkeypatch.setattr(parquet, "READ_ROWS", 3)
    got = list(parquet.read(parquet.open_file(tmp_path / "x.parquet")))
    assert [m["id"] for m, _ in got] == [s.id for s in samples(20)]
    assert all(np.array_equal(c, s.codes) for (_, c), s in zip(got, samples(20)))
    assert max(decoded) <= 3 and sum(decoded) == 20
    assert schemas.codes.codes_from_arrow is real  # the module's own function, patched only in parquet
