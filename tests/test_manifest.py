"""Manifest lines: the msgspec parser agrees with lhotse's MonoCut on every line lhotse
accepts, refuses what lhotse refused, and also refuses bad numbers; blocks merge exactly."""

from __future__ import annotations

import copy
import gzip
import io
import json
import math
from pathlib import Path

import pytest

from pipeline.plan.manifest import BadLine, LibriheavyLines, ManifestScan, parse_line, read_blocks, scan_block
from sample.manifest_reference import lhotse_compact_cut

REPO = Path(__file__).resolve().parents[1]
PREFIX = "download/librilight/"


def manifest_lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def all_lines(tiny_corpus) -> list[str]:
    paths = sorted((REPO / "sample/manifests").glob("*.jsonl.gz")) + list(tiny_corpus.manifests.values())
    return [line for p in paths for line in manifest_lines(p)]


def reference(line: str):
    """lhotse's verdict: the compact cut, or 'reject' (refused or would have stopped planning)."""
    try:
        return lhotse_compact_cut(line, PREFIX)
    except Exception:
        return "reject"


def ours(line: str):
    try:
        return parse_line(line.encode(), PREFIX)
    except BadLine:
        return "reject"


def test_every_real_format_line_parses_as_lhotse_parses_it(tiny_corpus):
    lines = all_lines(tiny_corpus)
    assert len(lines) > 50
    for line in lines:
        want, got = reference(line), ours(line)
        assert got == want, line[:200]
        if got != "reject":  # same values and the same bytes in the plan
            assert json.dumps(got, ensure_ascii=False) == json.dumps(want, ensure_ascii=False)


def _set(path, value):
    def mutate(d):
        node = d
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


def _drop(path):
    def mutate(d):
        node = d
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return mutate


SUP, REC, SRC = ("supervisions", 0), ("recording",), ("recording", "sources", 0)
# Mutations lhotse also refuses (or that stopped the old planner): both must reject.
BOTH_REJECT = {
    **{
        f"no {'.'.join(map(str, p))}": _drop(p)
        for p in [
            ("id",),
            ("start",),
            ("duration",),
            ("channel",),
            SUP + ("id",),
            SUP + ("recording_id",),
            SUP + ("start",),
            SUP + ("duration",),
            REC + ("id",),
            REC + ("sources",),
            REC + ("sampling_rate",),
            REC + ("num_samples",),
            REC + ("duration",),
            SRC + ("type",),
            SRC + ("channels",),
            SRC + ("source",),
            ("recording",),
            SUP + ("custom",),
            SUP + ("custom", "texts"),
        ]
    },
    **{f"unknown key in {'.'.join(map(str, p)) or 'cut'}": _set(p + ("bogus",), 1) for p in [(), SUP, REC, SRC]},
    "no supervisions": _set(("supervisions",), []),
    "two supervisions": lambda d: d["supervisions"].append(copy.deepcopy(d["supervisions"][0])),
    "supervisions null": _set(("supervisions",), None),
    "texts not a list": _set(SUP + ("custom", "texts"), "one text"),
    "a text not a string": _set(SUP + ("custom", "texts"), ["ok", 3]),
    "custom null": _set(SUP + ("custom",), None),
    "no sources": _set(REC + ("sources",), []),
    "recording null": _set(("recording",), None),
    "start null": _set(("start",), None),
    "duration null": _set(("duration",), None),
    "not an object": lambda d: d.clear() or d.update({"x": [1]}),
}
# What lhotse let through and the pipeline must not: bad numbers, odd types.
ONLY_OURS_REJECT = {
    "start NaN": _set(("start",), math.nan),
    "duration NaN": _set(("duration",), math.nan),
    "duration infinite": _set(("duration",), math.inf),
    "start -inf": _set(("start",), -math.inf),
    "negative start": _set(("start",), -0.5),
    "negative duration": _set(("duration",), -3.0),
    "zero duration": _set(("duration",), 0),
    "start a string": _set(("start",), "1.5"),
    "id a number": _set(("id",), 17),
    "negative channel": _set(("channel",), -1),
    "source not a string": _set(SRC + ("source",), 5),
    "a MultiCut": _set(("type",), "MultiCut"),
    "speed-perturbed recording": _set(REC + ("transforms",), [{"name": "Speed", "kwargs": {"factor": 1.1}}]),
}
# Differences that change nothing the pipeline reads: both accept, with the same result.
BOTH_ACCEPT = {
    "speaker missing": _drop(SUP + ("speaker",)),
    "speaker a number": _set(SUP + ("speaker",), 42),
    "channel a list": _set(("channel",), [0]),
    "integer start": _set(("start",), 3),
    "no type": _drop(("type",)),
    "no cut custom": _drop(("custom",)),
    "extra custom keys": _set(SUP + ("custom", "anything"), {"nested": [1, 2]}),
    "source outside the prefix": _set(SRC + ("source",), "/data/x.flac"),
}


@pytest.fixture(scope="module")
def good_line(tiny_corpus):
    return json.loads(manifest_lines(tiny_corpus.manifests["small"])[0])


@pytest.mark.parametrize("name", sorted(BOTH_REJECT))
def test_what_lhotse_refuses_is_refused(good_line, name):
    d = copy.deepcopy(good_line)
    BOTH_REJECT[name](d)
    line = json.dumps(d)
    assert reference(line) == "reject" and ours(line) == "reject"


@pytest.mark.parametrize("name", sorted(ONLY_OURS_REJECT))
def test_bad_numbers_and_types_lhotse_let_through_are_refused(good_line, name):
    d = copy.deepcopy(good_line)
    ONLY_OURS_REJECT[name](d)
    line = json.dumps(d)  # NaN and Infinity as Python writes them
    with pytest.raises(BadLine):
        parse_line(line.encode(), PREFIX)


@pytest.mark.parametrize("name", sorted(BOTH_ACCEPT))
def test_harmless_variants_parse_the_same(good_line, name):
    d = copy.deepcopy(good_line)
    BOTH_ACCEPT[name](d)
    line = json.dumps(d)
    assert ours(line) == reference(line) != "reject"


def test_reject_messages_name_the_problem(good_line):
    def message(mutate) -> str:
        d = copy.deepcopy(good_line)
        mutate(d)
        with pytest.raises(BadLine) as err:
            parse_line(json.dumps(d).encode(), PREFIX)
        return str(err.value)

    assert "duration is nan" in message(_set(("duration",), math.nan))
    assert "start is -0.5" in message(_set(("start",), -0.5))
    assert "duration is 0" in message(_set(("duration",), 0))
    assert "got `null` - at `$.start`" in message(_set(("start",), None))
    assert "`$.supervisions[0].custom`" in message(_drop(SUP + ("custom", "texts")))
    assert "unknown field `bogus`" in message(_set(("bogus",), 1))


def test_undecodable_text_is_a_reject_not_a_crash(good_line):
    line = json.dumps(good_line, ensure_ascii=False)
    text = good_line["supervisions"][0]["custom"]["texts"][0]
    word = text.split()[0]
    for raw in [
        line.replace(word, word + "\\ud800", 1).encode(),  # a lone surrogate
        line.encode().replace(word.encode(), word.encode() + b"\xff", 1),  # not UTF-8
        line[: len(line) // 2].encode(),
        b"[]",
        b"null",
        b"{",
    ]:
        with pytest.raises(BadLine):
            parse_line(raw, PREFIX)
    # In a field the pipeline never reads, the same bytes cost nothing (the old reader, decoding
    # whole lines as UTF-8, stopped the plan there).
    assert parse_line(line.encode().replace(b"English", b"Engl\xffsh"), PREFIX) == ours(line)


def write_gz(path: Path, text: str) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(text)
    return path


def test_blocks_hold_whole_lines_with_their_numbers(tmp_path):
    lines = [f'{{"n": {i}, "pad": "{"x" * (i % 7)}"}}' for i in range(1, 200)]
    lines[10] = lines[50] = ""
    for trailing in ("\n", ""):
        path = write_gz(tmp_path / f"m{len(trailing)}.gz", "\n".join(lines) + trailing)
        for size in (1, 17, 64, 1 << 20):
            seen = {}
            for first, block in read_blocks(path, block_bytes=size):
                for n, line in enumerate(block.split(b"\n"), start=first):
                    seen[n] = line.decode()
            assert [seen[n] for n in range(1, len(lines) + 1)] == lines
            assert max(seen) == len(lines)


def scan_whole(path: Path, block_bytes: int) -> tuple[ManifestScan, bytes]:
    scan, sink = ManifestScan(), io.BytesIO()
    for first, block in read_blocks(path, block_bytes=block_bytes):
        scan.merge(scan_block(block, first, LibriheavyLines(PREFIX), "small", sink))
    return scan, sink.getvalue()


def test_scans_of_blocks_merge_into_the_scan_of_the_whole(tiny_corpus, tmp_path):
    lines = manifest_lines(tiny_corpus.manifests["small"])
    path = write_gz(tmp_path / "m.gz", "\n".join(lines + ["", "not json"] + lines[:3]) + "\n")
    whole, sink = scan_whole(path, 1 << 24)
    n = len(lines)  # line 2 of the tiny manifest is malformed, and so is its copy at n + 4
    assert whole.lines == n + 4 and whole.cuts == n - 1 + 2
    assert [r["detail"].split(":")[0] for r in whole.rejects] == [f"line {i}" for i in (2, n + 2, n + 4)]
    for size in (100, 3000):
        scan, chunked_sink = scan_whole(path, size)
        assert scan == whole and chunked_sink == sink
    first = sink.split(b"\n")[0].split(b"\t")
    assert first[0] == b"1" and json.loads(first[1]) == ours(lines[0])


def test_a_damaged_gzip_file_is_an_error_naming_it(tiny_corpus, tmp_path):
    data = tiny_corpus.manifests["small"].read_bytes()
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(EOFError):
        list(read_blocks(path))
