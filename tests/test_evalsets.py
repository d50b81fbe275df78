"""Evaluation sets (schemas.evalset): written and read back strictly; chosen deterministically;
made from a built corpus's subset (its codes, ground truth from its source audio) and from a
LibriSpeech test-clean look-alike served over local HTTP (md5-checked download, safe extraction,
lhotse's recipe, coded by the corpus's codec)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json

import numpy as np
import pytest

from pipeline.cli import main as prep
from pipeline.evalsets.from_corpus import asr_transcripts, build_from_corpus
from pipeline.evalsets.librispeech import build_from_librispeech, sentence_case
from pipeline.evalsets.selection import Selection
from sample.http_mirror import HttpMirror
from sample.librispeech import write_test_clean
from sample.lookalike import manifest_line
from schemas.contract import SchemaError
from schemas.evalset import EvalSet, EvalSetWriter
from schemas.reading import index_shards, read_index, read_shard
from tests.conftest import write_dag
from tokens.text import normalize_text


def write_set(folder, speakers=("a", "a", "a", "b"), bpe=b"model"):
    writer = EvalSetWriter(folder)
    for n, speaker in enumerate(speakers):
        writer.add(
            id=f"u{n}",
            speaker=speaker,
            text=f"Text {n}.",
            reference=f"TEXT {n}",
            text_tokens=[1, 2, n],
            audio=np.full(2400 * (n + 1), 0.1, np.float32),
            codes=np.full((8, 10 * (n + 1)), n, np.uint16),
        )
    codec = {"model": "encodec_24khz", "bandwidth_kbps": 6.0, "codebooks": 8, "weights_sha256": "x"}
    provenance = {"codec": codec, "bpe": {"model": "text/bpe.model", "sha256": "y"}, "text": {"normalization": "z"}}
    writer.finish(name="t", source={"kind": "test"}, selection={}, provenance=provenance, bpe_model=bpe)
    return folder


def test_written_set_reads_back(tmp_path):
    s = EvalSet(write_set(tmp_path / "set"))
    assert [u.id for u in s.utterances] == ["u0", "u1", "u2", "u3"] and s.meta["speakers"] == 2
    # VALL-E 2's pairing: the speaker's previous utterance, the first taking the last
    assert [s.by_id[f"u{n}"].prompt_id for n in range(3)] == ["u2", "u0", "u1"]
    assert s.by_id["u3"].prompt_id is None  # b has one utterance: no cross-sentence prompt
    assert s.codes(s.by_id["u1"]).shape == (8, 20) and s.codes(s.by_id["u1"]).dtype == np.uint16
    assert s.audio(s.by_id["u2"]).shape == (7200,) and s.bpe_model.read_bytes() == b"model"
    assert s.provenance["bpe"]["model"] == "bpe.model"


def test_unfinished_or_tampered_sets_are_refused(tmp_path):
    folder = write_set(tmp_path / "set")
    lines = (folder / "utterances.jsonl").read_text().splitlines()
    row = json.loads(lines[0])
    row["codes"] = "../../etc/passwd"
    (folder / "utterances.jsonl").write_text("\n".join([json.dumps(row), *lines[1:]]) + "\n")
    with pytest.raises(SchemaError, match="leaves the set's folder"):
        EvalSet(folder)
    EvalSetWriter(folder)  # starting over removes evalset.json first: a half-written set is not read
    with pytest.raises(SchemaError, match="not a finished evaluation set"):
        EvalSet(folder)


def test_selection_is_deterministic_and_spreads_over_speakers():
    pairs = [(f"{s}-{n}", s) for s in "abc" for n in range(4)]
    assert Selection(max_utterances=5).choose(pairs[::-1]) == {"a-0", "b-0", "c-0", "a-1", "b-1"}
    assert Selection(per_speaker=1).choose(pairs) == {"a-0", "b-0", "c-0"}
    assert Selection().fits(4.0) and Selection().fits(10.0) and not Selection().fits(3.9)
    with pytest.raises(ValueError):
        Selection(min_seconds=5, max_seconds=4)


def test_set_from_a_built_corpus_keeps_its_codes(built_corpus, tiny_corpus, tmp_path):
    dag = built_corpus[0]
    dest = tmp_path / "dev_set"
    summary = build_from_corpus(dag, "small", dest, Selection(0.0, 20.0), progress=False)
    s = EvalSet(dest)
    assert summary["utterances"] == len(s.utterances) > 0 and summary["speakers"] >= 2
    out = str(dag.out)
    index = read_index(out)
    built = {
        meta["id"]: (meta, codes)
        for shard in index_shards(out, index)
        if shard.subset == "small"
        for _, meta, codes in read_shard(shard)
    }
    assert {u.id for u in s.utterances} == set(built)
    for u in s.utterances:
        meta, codes = built[u.id]
        assert np.array_equal(s.codes(u), codes) and list(u.text_tokens) == meta["text_tokens"]
        # the ground truth is the window the codes were made from: as long, to a sample
        assert abs(len(s.audio(u)) / 24000 - meta["duration"]) < 1e-3
    assert s.provenance["codec"]["weights_sha256"] == index["provenance"]["codec"]["weights_sha256"]
    assert hashlib.sha256(s.bpe_model.read_bytes()).hexdigest() == index["provenance"]["bpe"]["sha256"]
    # the command line: a subset the corpus lacks is a clear error
    dag_file = str(write_dag(tmp_path / "tiny.yaml", tiny_corpus))
    assert prep(["evalset", dag_file, "--out", out, "--subset", "nope", "--to", str(tmp_path / "x")]) == 2


def test_a_set_from_a_training_subset_warns_and_says_so(built_corpus, tiny_corpus, tmp_path, capsys):
    dag_file = str(write_dag(tmp_path / "tiny.yaml", tiny_corpus))
    common = ["--out", str(built_corpus[0].out), "--min-seconds", "0", "--max-seconds", "20", "--no-progress"]
    assert prep(["evalset", dag_file, "--subset", "small", "--to", str(tmp_path / "small"), *common]) == 0
    assert "!! WARNING: this set's utterances were in the training data" in capsys.readouterr().err
    source = EvalSet(tmp_path / "small").meta["source"]
    assert source["trained_on"] is True and "scores are not held-out" in source["warning"]
    # dev is not trained on, but its one speaker also reads a chapter of small
    assert prep(["evalset", dag_file, "--subset", "dev", "--to", str(tmp_path / "dev"), *common]) == 0
    assert "also speak in the training data" in capsys.readouterr().err
    source = EvalSet(tmp_path / "dev").meta["source"]
    assert source["trained_on"] is False and source["training_speakers"] == 1


def test_held_out_fields_from_roles_and_speakers(tmp_path):
    from pipeline.evalsets.held_out import held_out_fields
    from sample.corpora import Cut, speaker_blocks
    from sample.corpora import write_corpus as write_generated

    out = str(write_generated(tmp_path, speaker_blocks(2, 2, 3), dev=[[Cut("99", "large/99/b/c", 16, 4)]]))
    index = read_index(out)
    assert held_out_fields(out, index, "large", {"0"})["trained_on"] is True
    assert held_out_fields(out, index, "dev", {"99"}) == {"trained_on": False, "training_speakers": 0}
    seen = held_out_fields(out, index, "dev", {"99", "3"})
    assert seen["training_speakers"] == 1 and "(3)" in seen["warning"]


def test_a_malformed_held_out_field_is_refused_when_read(tmp_path):
    folder = write_set(tmp_path / "set")
    meta = json.loads((folder / "evalset.json").read_text())
    meta["source"] |= {"trained_on": True, "warning": 5}
    (folder / "evalset.json").write_text(json.dumps(meta))
    with pytest.raises(SchemaError, match="source.warning must be a str"):
        EvalSet(folder)


def test_librispeech_set_downloads_verifies_and_codes(built_corpus, tmp_path):
    site = tmp_path / "openslr"
    archive = write_test_clean(site)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    corpus = str(built_corpus[0].out)
    dest = tmp_path / "ls"
    with HttpMirror(site) as mirror:
        url = mirror.url("test-clean.tar.gz")
        with pytest.raises(ValueError, match="md5"):  # a wrong published checksum: nothing is kept
            build_from_librispeech(
                corpus, dest, Selection(), download_dir=tmp_path / "dl", url=url, checksum="md5:" + "0" * 32
            )
        summary = build_from_librispeech(
            corpus,
            dest,
            Selection(3.0, 10.0, max_utterances=4),
            download_dir=tmp_path / "dl",
            url=url,
            checksum=f"md5:{md5}",
            codec_weights="random",
            progress=False,
        )
        fetched = len(mirror.requests)
        build_from_librispeech(  # a re-run finds the verified archive: no request
            corpus, dest, Selection(3.0, 10.0, max_utterances=4), download_dir=tmp_path / "dl", url=url,
            checksum=f"md5:{md5}", codec_weights="random", progress=False,
        )  # fmt: skip
        assert len(mirror.requests) == fetched
    s = EvalSet(dest)
    assert summary == {"utterances": 4, "speakers": 3, "skipped": {}} and len(s.utterances) == 4
    u = s.utterances[0]
    assert u.reference.isupper() and u.text == sentence_case(u.reference)
    assert 3.0 <= u.duration <= 10.0 and s.codes(u).shape[1] == int(np.ceil(u.duration * 75 - 1e-6))
    assert s.meta["source"]["checksum"] == f"md5:{md5}"
    assert s.meta["source"]["reference"] == {"field": "LibriSpeech transcript", "fallbacks": 0}


def test_sentence_case():
    assert sentence_case("HE HOPED THERE WOULD BE STEW") == "He hoped there would be stew."
    assert sentence_case("  ") == ""


def _line(cut_id: str, texts: list[str]) -> bytes:
    rec = f"small/1/book/{cut_id}"
    line = manifest_line(cut_id, rec, "1", 0.0, 2.0, texts, ["", ""], 0, 32000, f"download/librilight/{rec}.flac", "t")
    return json.dumps(line).encode() + b"\n"


def test_asr_transcripts_are_read_for_the_chosen_cuts_only(tmp_path):
    manifest = tmp_path / "libriheavy_cuts_x.jsonl.gz"
    book = "Mr. Smith paid 1820 dollars on the 3rd."
    heard = "MISTER SMITH PAID EIGHTEEN TWENTY DOLLARS ON THE THIRD"
    lines = [_line("a", [book, heard]), b"{not json\n", _line("b", [book]), _line("c", [book, "  .. "])]
    manifest.write_bytes(gzip.compress(b"".join([*lines, _line("d", [book, "NOT CHOSEN"])])))
    # a: the transcript, not the book text; b has none, c none with a word in it; d was not chosen
    assert asr_transcripts(manifest, {"a", "b", "c", "x"}) == {"a": heard}


def test_corpus_set_is_scored_against_the_asr_transcript(built_corpus, tiny_corpus, tmp_path):
    dag = built_corpus[0]
    build_from_corpus(dag, "small", tmp_path / "set", Selection(0.0, 20.0), progress=False)
    s = EvalSet(tmp_path / "set")
    assert s.reference == s.meta["source"]["reference"] == {"field": "asr transcript (texts[1])", "fallbacks": 0}
    for u in s.utterances:  # the models read the book text; WER is scored against what was heard
        truth = tiny_corpus.cuts[u.id]
        assert u.text == normalize_text(truth.text) and u.reference == normalize_text(truth.asr_text) != u.text
    # a manifest without one cut's ASR transcript: that cut is scored against its text, and counted
    name = dag.source.manifest_name("small")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    for tar in dag.source.audio_archives:
        (downloads / tar).symlink_to(dag.out / "downloads" / tar)
    lost = s.utterances[0].id
    lines = gzip.decompress((dag.out / "downloads" / name).read_bytes()).splitlines(keepends=True)
    n = next(n for n, line in enumerate(lines) if line.startswith(b'{"id": ' + json.dumps(lost).encode()))
    cut = json.loads(lines[n])
    del cut["supervisions"][0]["custom"]["texts"][1:]
    lines[n] = json.dumps(cut).encode() + b"\n"
    (downloads / name).write_bytes(gzip.compress(b"".join(lines)))
    moved = dataclasses.replace(dag, source=dataclasses.replace(dag.source, download_dir=str(downloads)))
    build_from_corpus(moved, "small", tmp_path / "set2", Selection(0.0, 20.0), progress=False)
    again = EvalSet(tmp_path / "set2")
    assert again.reference["fallbacks"] == 1 and again.by_id[lost].reference == again.by_id[lost].text
    assert [u.reference for u in again.utterances[1:]] == [u.reference for u in s.utterances[1:]]
    (downloads / name).unlink()  # no manifest: a clear error, not a set scored against the book text
    with pytest.raises(ValueError, match="missing"):
        build_from_corpus(moved, "small", tmp_path / "set3", Selection(0.0, 20.0), progress=False)


def test_sets_that_do_not_name_their_reference_stay_readable(tmp_path):
    folder = write_set(tmp_path / "set")
    assert EvalSet(folder).reference == {"field": "the set's text", "fallbacks": 0}
    meta = json.loads((folder / "evalset.json").read_text())
    meta["source"]["reference"] = "texts[1]"
    (folder / "evalset.json").write_text(json.dumps(meta))
    with pytest.raises(SchemaError, match="source.reference"):
        EvalSet(folder)
