"""`valle-prep report`: its numbers equal what the index, lengths.parquet, the Parquet shards and
the committed codes files say (computed here independently), and it writes a page with plots."""

from __future__ import annotations

import json
import shutil
from collections import Counter, defaultdict

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.encode.codes_file import CodesFile
from pipeline.inspect.report import ReportError, collect, write_report


@pytest.fixture(scope="module")
def report(built_corpus, tmp_path_factory):
    """The report of a copy of the built tiny corpus (the original stays read-only)."""
    out = tmp_path_factory.mktemp("report") / "corpus"
    shutil.copytree(built_corpus[0].out, out)
    return out, write_report(out, progress=False)


def _lengths_by_sample(out, index):
    """(role, subset, seconds, tokens, speaker, recording) per sample, from lengths.parquet."""
    subset_of = {s["id"]: s["subset"] for s in index["shards"]}
    rows = []
    for r in pq.read_table(out / "lengths.parquet").to_pylist():
        subset = subset_of[r["shard"]]
        rows += [
            (index["subsets"][subset]["role"], subset, f / 75, t, sp, rec)
            for f, t, sp, rec in zip(r["frames"], r["text_tokens"], r["speaker"], r["recording_id"])
        ]
    return rows


def test_subsets_lengths_and_speakers_match_the_index_and_lengths(report):
    out, stats = report
    index = json.loads((out / "index.json").read_text())
    assert stats["subsets"] == {
        k: {"role": v["role"], "samples": v["samples"], "hours": v["hours"]} for k, v in index["subsets"].items()
    }
    rows = _lengths_by_sample(out, index)
    for role in ("train", "dev"):
        seconds = [r[2] for r in rows if r[0] == role]
        expected = np.bincount(np.minimum((np.array(seconds) * 2).astype(int), 79), minlength=80)
        assert stats["durations"]["by_role"][role] == expected.tolist()
        tokens = [r[3] for r in rows if r[0] == role]
        assert (
            stats["text_tokens"]["by_role"][role]
            == np.bincount(np.minimum(np.array(tokens) // 4, 99), minlength=100).tolist()
        )
    train_seconds = defaultdict(float)
    for role, _, s, _, speaker, _ in rows:
        if role == "train":
            train_seconds[speaker] += s
    ranked = sorted(train_seconds.items(), key=lambda kv: -kv[1])
    assert stats["speakers"]["train_hours"] == pytest.approx([s / 3600 for _, s in ranked], abs=1e-6)
    assert [n for n, _ in stats["speakers"]["top"]] == [n for n, _ in ranked[:10]]


def test_speakers_books_and_leakage_match_the_shards(report, tiny_corpus):
    out, stats = report
    index = json.loads((out / "index.json").read_text())
    speakers, books = defaultdict(set), defaultdict(set)
    for s in index["shards"]:
        if s["format"] == "parquet":
            table = pq.read_table(out / s["path"], columns=["speaker", "recording_id"])
            speakers[s["subset"]].update(table.column("speaker").to_pylist())
            books[s["subset"]].update(r.split("/")[2] for r in table.column("recording_id").to_pylist())
    assert stats["speakers"]["per_subset"] == {
        k: {"speakers": len(speakers[k]), "books": len(books[k])} for k in index["subsets"]
    }
    # The tiny corpus's dev chapter is read by a speaker who also has a training chapter.
    assert stats["speakers"]["leakage"] == {
        "dev": {"speakers": sorted(speakers["dev"] & speakers["small"]), "books": sorted(books["dev"] & books["small"])}
    }
    assert stats["speakers"]["leakage"]["dev"]["speakers"]
    assert any(w.startswith("Leakage: speakers of dev that also occur in training data (1)") for w in stats["warnings"])


def test_codebook_figures_match_the_committed_codes(report):
    out, stats = report
    index = json.loads((out / "index.json").read_text())
    ids = {
        i
        for s in index["shards"]
        if s["format"] == "parquet"
        for i in pq.read_table(out / s["path"], columns=["id"]).column("id").to_pylist()
    }
    counts = np.zeros((8, 1024), np.int64)
    for path in (out / "work/codes").glob("*.npz"):
        for cut_id, _, codes in CodesFile(path):
            if cut_id in ids:
                counts += np.stack([np.bincount(c, minlength=1024) for c in codes])
    codes = stats["codes"]
    assert codes["frames"] == int(counts[0].sum()) and codes["samples"] == len(ids)
    assert codes["shards_read"] == codes["shards_total"]
    for k, cb in enumerate(codes["per_codebook"]):
        p = counts[k][counts[k] > 0] / counts[k].sum()
        assert cb["used"] == int((counts[k] > 0).sum()) and cb["utilization"] == pytest.approx(
            cb["used"] / 1024, abs=1e-6
        )
        assert cb["entropy_bits"] == pytest.approx(-(p * np.log2(p)).sum(), abs=1e-4)
        assert cb["top"][0] == [int(counts[k].argmax()), pytest.approx(counts[k].max() / counts[k].sum(), abs=1e-6)]
        assert codes["sorted_frequencies"][k] == sorted(counts[k].tolist(), reverse=True)


def test_rejects_and_transcript_cer_match_their_files(report):
    out, stats = report
    index = json.loads((out / "index.json").read_text())
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert stats["rejects"]["by_reason"] == index["rejects"]["by_reason"] == dict(Counter(r["reason"] for r in rejects))
    for reason, examples in stats["rejects"]["examples"].items():
        assert (
            examples
            == [
                {"subset": r["subset"], "cut_id": r["cut_id"], "detail": r["detail"]}
                for r in rejects
                if r["reason"] == reason
            ][:3]
        )
    assert sum(stats["rejects"]["text_mismatch_cer"]) == 1
    cers = [c for r in pq.read_table(out / "lengths.parquet").column("text_cer").to_pylist() for c in r]
    assert sum(stats["cer"]["accepted"]) == len(cers) == sum(s["samples"] for s in index["subsets"].values())
    assert stats["cer"]["mean"] == pytest.approx(np.mean(cers), abs=1e-4)


def test_page_plots_and_summary(report, capsys):
    import torch

    out, stats = report
    page = (out / "report/index.html").read_text()
    for name in ("durations", "text_tokens", "speaker_hours", "codebooks", "code_frequencies", "cer", "rejects"):
        assert f'src="{name}.png"' in page
        assert (out / f"report/{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "RANDOM-INIT" in page and "text_mismatch" in page and stats["provenance"]["codec"]["weights_sha256"] in page
    units = sum(1 for _ in (out / "ledger").glob("*.json"))
    isa = torch.backends.cpu.get_cpu_capability()
    stack = f"cpu ({isa}, one utterance, 1 thread, FastELU, torch {torch.__version__}, exact)"
    assert f"{stack}: {units} unit(s)" in page  # the stack the codes came from
    assert json.loads((out / "report/report.json").read_text()) == json.loads(json.dumps(stats))

    assert main(["report", str(out), "--no-progress", "--code-shards", "1"]) == 0
    printed = capsys.readouterr().out
    assert "small" in printed and "rejects: " in printed and "WARNING: Leakage" in printed
    assert json.loads((out / "report/report.json").read_text())["codes"]["shards_read"] == 1


def test_an_unfinished_corpus_is_refused(tmp_path, capsys):
    with pytest.raises(ReportError, match="no index.json"):
        collect(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    assert "not finished" in capsys.readouterr().err


def test_a_parquet_only_corpus_without_transcript_cers(tmp_path):
    """Codes read through the Parquet reader; a lengths file from before text_cer existed."""
    from sample.corpora import speaker_blocks, write_corpus

    root = write_corpus(
        tmp_path / "c", speaker_blocks(3, 2, 4, frames=20), formats=("parquet",), dev=speaker_blocks(1, 1, 3, frames=30)
    )
    stats = write_report(root, progress=False)
    assert stats["codes"]["format"] == "parquet" and stats["codes"]["samples"] == 3 * 2 * 4 + 3
    assert stats["codes"]["frames"] == 3 * 2 * 4 * 20 + 3 * 30
    assert stats["cer"] is None and not (root / "report/cer.png").exists()
    assert "No text_cer column" in (root / "report/index.html").read_text()


def test_a_corpus_over_http_reports_what_the_folder_reports(report, tmp_path, capsys):
    """The report reads a remote corpus as the trainer does (index, lengths by ranges, rejects
    streamed, codes shard by shard) and writes the page where --to says."""
    from sample.http_mirror import HttpMirror

    out, local = report
    with HttpMirror(out) as mirror:
        assert main(["report", mirror.base_url, "--to", str(tmp_path / "page"), "--no-progress"]) == 0
        served = {r.path.rpartition("/")[2] for r in mirror.requests}
    remote = json.loads((tmp_path / "page/report.json").read_text())
    assert {**remote, "out": None} == {**json.loads(json.dumps(local)), "out": None}
    assert {"index.json", "lengths.parquet", "rejects.jsonl"} <= served
    assert (tmp_path / "page/index.html").is_file()
    assert f"wrote {tmp_path / 'page' / 'index.html'}" in capsys.readouterr().out
