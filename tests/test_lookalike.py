"""The look-alike corpus has the real Libriheavy shape, its windows hold the right audio, the
planted defects are there, and the bundled sample/ is intact."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse.cut import MonoCut

from sample.lookalike import AUDIO_PREFIX, SAMPLE_RATE, Defects, pcm16, synthetic_chapters, write_corpus
from sample.make_sample import tools_match

SAMPLE = Path(__file__).resolve().parents[1] / "sample"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    chapters = synthetic_chapters(n_speakers=3, chapters_per_speaker=2, utterances_per_chapter=4)
    ids = [ch.recording_id for ch in chapters]
    defects = Defects(
        missing_audio="dev", past_end="small", empty_text="small", too_short="small", malformed_line="small"
    )
    files = write_corpus(
        chapters,
        tmp_path_factory.mktemp("corpus"),
        defects=defects,
        manifest_subsets={"small": ids[:-1], "dev": ids[-1:]},
    )
    return chapters, files


def lines_of(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def parsed(files, name: str) -> list[dict]:
    bad = files.malformed_lines.get(name)
    return [json.loads(line) for i, line in enumerate(lines_of(files.manifests[name])) if i != bad]


def tar_files(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def has_null(value) -> bool:
    if isinstance(value, dict):
        return any(v is None or has_null(v) for v in value.values())
    if isinstance(value, list):
        return any(v is None or has_null(v) for v in value)
    return False


def test_every_line_loads_with_lhotse_except_the_malformed_one(corpus):
    _, files = corpus
    assert files.malformed_lines == {"small": 1}
    for name, path in files.manifests.items():
        lines = lines_of(path)
        assert len(lines) == sum(c.manifest == name for c in files.cuts.values()) + (name == "small")
        for i, line in enumerate(lines):
            if i == files.malformed_lines.get(name):
                with pytest.raises(json.JSONDecodeError):
                    json.loads(line)
                continue
            cut = MonoCut.from_dict(json.loads(line))
            truth = files.cuts[cut.id]
            assert (cut.start, cut.duration, cut.recording_id) == (truth.start, truth.duration, truth.recording_id)


def test_lines_follow_the_libriheavy_rules(corpus):
    _, files = corpus
    for name in files.manifests:
        for d in parsed(files, name):
            rec = d["recording"]
            assert (
                list(d) == ["id", "start", "duration", "channel", "supervisions", "recording", "custom", "type"]
                and d["type"] == "MonoCut"
            )
            assert d["id"].rsplit("_", 1)[0] == rec["id"] and d["id"].rsplit("_", 1)[1].isdigit()
            assert not has_null(d)
            assert d["start"] * SAMPLE_RATE != round(d["start"] * SAMPLE_RATE)  # unrounded float
            assert abs(d["duration"] * 1000 - round(d["duration"] * 1000)) < 1e-6  # floored to ms
            (sup,) = d["supervisions"]
            assert sup["start"] == 0 and sup["duration"] == d["duration"] and "text" not in sup
            assert sup["id"] == d["id"] and sup["recording_id"] == rec["id"]
            book, asr = sup["custom"]["texts"]
            assert asr == asr.upper() and not any(p in asr for p in ".,?!\u201c\u201d")
            assert len(sup["custom"]["pre_texts"]) == 2
            assert rec["sources"][0]["source"] == f"{AUDIO_PREFIX}/{rec['id']}.flac"
            assert rec["sampling_rate"] == SAMPLE_RATE and rec["duration"] == rec["num_samples"] / SAMPLE_RATE


def test_cut_numbers_are_not_in_time_order(corpus):
    _, files = corpus
    by_rec: dict[str, list] = {}
    for c in files.cuts.values():
        if c.defect != "missing_audio":
            by_rec.setdefault(c.recording_id, []).append(c)
    for cuts in by_rec.values():
        numbers = [int(c.cut_id.rsplit("_", 1)[1]) for c in sorted(cuts, key=lambda c: c.start)]
        assert sorted(numbers) == list(range(len(cuts))) and numbers != sorted(numbers)


def test_tar_has_the_librilight_layout(corpus):
    chapters, files = corpus
    assert list(files.tars) == ["small"]
    with tarfile.open(files.tars["small"]) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in members)
    expected = {f"{ch.recording_id}{ext}" for ch in chapters for ext in (".flac", ".json")}
    blobs = tar_files(files.tars["small"])
    assert set(blobs) == expected
    for ch in chapters:
        audio, sr = sf.read(io.BytesIO(blobs[f"{ch.recording_id}.flac"]), dtype="int16")
        assert sr == SAMPLE_RATE and audio.ndim == 1
        assert audio.size == files.recording_samples[ch.recording_id]
        assert audio.size / SAMPLE_RATE > sum(u.audio.size for u in ch.utterances) / SAMPLE_RATE + 1.0
        meta = json.loads(blobs[f"{ch.recording_id}.json"])
        assert meta["speaker"] == ch.speaker and len(meta["voice_activity"]) == len(ch.utterances)
        assert {"title", "language"} <= set(meta["book_meta"]) and isinstance(meta["snr"], float)


def test_slicing_a_cut_window_gives_the_utterance(corpus):
    chapters, files = corpus
    blobs = tar_files(files.tars["small"])
    checked = 0
    for c in files.cuts.values():
        if c.defect is not None:
            continue
        audio, _ = sf.read(io.BytesIO(blobs[f"{c.recording_id}.flac"]), dtype="int16")
        first = round(c.start * SAMPLE_RATE)
        window = audio[first : first + round(c.duration * SAMPLE_RATE)]
        utt = chapters[c.chapter_index].utterances[c.utterance_index]
        expected = pcm16(utt.audio)
        assert 0 <= expected.size - window.size < SAMPLE_RATE // 1000  # floored to 1 ms
        np.testing.assert_array_equal(window, expected[: window.size])
        assert c.text == utt.text
        checked += 1
    assert checked == len(files.cuts) - 4  # all but the four defective cuts

    # The past-end window, clamped to the file, still starts with its utterance.
    past = next(c for c in files.cuts.values() if c.defect == "past_end")
    audio, _ = sf.read(io.BytesIO(blobs[f"{past.recording_id}.flac"]), dtype="int16")
    expected = pcm16(chapters[past.chapter_index].utterances[past.utterance_index].audio)
    clamped = audio[past.first_sample : past.first_sample + round(past.duration * SAMPLE_RATE)]
    assert clamped.size == past.available_samples > expected.size
    np.testing.assert_array_equal(clamped[: expected.size], expected)


def test_planted_defects(corpus):
    _, files = corpus
    by_defect = {c.defect: c for c in files.cuts.values() if c.defect}
    assert set(by_defect) == {"missing_audio", "past_end", "empty_text", "too_short"}
    names = set(tar_files(files.tars["small"]))

    missing = by_defect["missing_audio"]
    assert missing.manifest == "dev" and missing.recording_id.startswith("medium/")
    assert f"{missing.recording_id}.flac" not in names and missing.available_samples == 0

    past = by_defect["past_end"]
    real = files.recording_samples[past.recording_id]
    line = next(d for d in parsed(files, "small") if d["id"] == past.cut_id)
    assert (past.start + past.duration) * SAMPLE_RATE > real
    assert line["recording"]["num_samples"] > real
    assert past.start + past.duration <= line["recording"]["duration"]
    assert past.available_samples == real - past.first_sample

    empty = by_defect["empty_text"]
    assert empty.text.strip() == "" and " ".join(unicodedata.normalize("NFKC", empty.text).split()) == ""
    assert empty.asr_text  # the speech is still there

    assert by_defect["too_short"].duration < 0.5


def test_plain_builder_is_clean_and_byte_deterministic(tmp_path):
    chapters = synthetic_chapters(n_speakers=2, chapters_per_speaker=1, utterances_per_chapter=2)
    a = write_corpus(chapters, tmp_path / "a")
    b = write_corpus(synthetic_chapters(n_speakers=2, chapters_per_speaker=1, utterances_per_chapter=2), tmp_path / "b")
    assert all(c.defect is None for c in a.cuts.values()) and not a.malformed_lines
    for x, y in [(a.tars["small"], b.tars["small"]), (a.manifests["small"], b.manifests["small"])]:
        assert x.read_bytes() == y.read_bytes()
    header = a.manifests["small"].read_bytes()[:10]
    assert header[3] == 0 and header[4:8] == b"\0\0\0\0"  # no file name, mtime 0


def test_bad_requests_say_what_is_wrong(tmp_path):
    chapters = synthetic_chapters(n_speakers=1, chapters_per_speaker=1, utterances_per_chapter=2)
    with pytest.raises(ValueError, match="targets manifest 'dev'"):
        write_corpus(chapters, tmp_path, defects=Defects(missing_audio="dev"))
    with pytest.raises(ValueError, match="not among the chapters"):
        write_corpus(chapters, tmp_path, manifest_subsets={"dev": ["small/1/x/y"]})


def test_bundled_sample_matches_its_checksums_and_loads():
    sums = dict(reversed(line.split("  ", 1)) for line in (SAMPLE / "SHA256SUMS").read_text().splitlines())
    assert set(sums) == {
        "audio/small.tar",
        "audio/large.tar",
        "manifests/libriheavy_cuts_small.jsonl.gz",
        "manifests/libriheavy_cuts_dev.jsonl.gz",
        "manifests/libriheavy_cuts_test_clean.jsonl.gz",
    }
    for rel, digest in sums.items():
        assert hashlib.sha256((SAMPLE / rel).read_bytes()).hexdigest() == digest, rel
    blobs = tar_files(SAMPLE / "audio/small.tar") | tar_files(SAMPLE / "audio/large.tar")
    flacs = {name[: -len(".flac")] for name in blobs if name.endswith(".flac")}
    assert len(flacs) == 7 and len({f.split("/")[1] for f in flacs}) == 4
    counts, speakers = {}, {}
    for name in ("small", "dev", "test_clean"):
        cuts, bad = [], 0
        for line in lines_of(SAMPLE / f"manifests/libriheavy_cuts_{name}.jsonl.gz"):
            try:
                cuts.append(MonoCut.from_dict(json.loads(line)))
            except json.JSONDecodeError:
                bad += 1
        counts[name] = (len(cuts), bad, sum(c.recording_id not in flacs for c in cuts))
        speakers[name] = {c.supervisions[0].speaker for c in cuts}
    assert counts == {"small": (30, 1, 0), "dev": (7, 0, 1), "test_clean": (6, 0, 0)}
    assert speakers["test_clean"] == {"5105"} and not speakers["test_clean"] & (speakers["small"] | speakers["dev"])
    # its ASR texts say what was read, as Libriheavy's: "Dr." is DOCTOR, "12" TWELVE
    spoken = " ".join(c.supervisions[0].custom["texts"][1] for c in cuts)
    assert "DOCTOR" in spoken and "TWELVE" in spoken and "MISTER" in spoken
    audio, sr = sf.read(io.BytesIO(blobs[f"{sorted(flacs)[0]}.flac"]), dtype="int16")
    assert sr == SAMPLE_RATE and audio.ndim == 1 and audio.size > 10 * SAMPLE_RATE


@pytest.mark.skipif(
    not tools_match(), reason="the sample's bytes come from espeak-ng 1.51 and SoX 14.4.2 (sample/README.md)"
)
def test_make_sample_rebuilds_the_bundled_bytes(tmp_path):
    from sample.make_sample import build

    committed = dict(reversed(line.split("  ", 1)) for line in (SAMPLE / "SHA256SUMS").read_text().splitlines())
    assert build(tmp_path) == committed
