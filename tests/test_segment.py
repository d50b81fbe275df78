"""Segmenting: one decode per recording, exact windows, clamping, and a reason for every drop."""

from __future__ import annotations

import gzip
import io

import numpy as np
import pytest
import soundfile as sf

from pipeline.encode.segment import segment_recording
from pipeline.fetch.audio_store import TarAudioStore, index_tar
from pipeline.plan.manifest import parse_line as compact_cut
from tokens.audio import as_float32, codec_input, resample


@pytest.fixture(scope="module")
def cuts_by_recording(tiny_corpus):
    out = {}
    for line in gzip.open(tiny_corpus.manifests["small"], "rt"):
        try:
            cut = compact_cut(line, "download/librilight/")
        except ValueError:
            continue
        out.setdefault(cut["recording_id"], []).append(cut)
    return out


@pytest.fixture(scope="module")
def store(tiny_corpus):
    index_tar(tiny_corpus.tars["small"])
    return TarAudioStore([tiny_corpus.tars["small"]])


def test_windows_match_the_source_audio(tiny_corpus, cuts_by_recording, store):
    reads = []

    def read(path):
        reads.append(path)
        return store.read_bytes(path)

    for rec, cuts in cuts_by_recording.items():
        whole, rate = sf.read(io.BytesIO(store.read_bytes(cuts[0]["audio"])), dtype="float32")
        segments, rejects = segment_recording(cuts, read, 0.5, 20.0)
        assert len(segments) + len(rejects) == len(cuts)
        for seg in segments:
            truth = tiny_corpus.cuts[seg.cut["id"]]
            assert seg.clamped == (truth.defect == "past_end")
            assert seg.duration == pytest.approx(truth.available_samples / 16000, abs=1 / 16000)
            window = whole[truth.first_sample : truth.first_sample + round(seg.duration * rate)]
            # 16-bit FLAC travels as int16 at 16 kHz, and becomes exactly what decoding to
            # float32 and resampling gave before (so the codes are unchanged).
            assert seg.audio.dtype == np.int16 and seg.rate == rate == 16000
            assert np.array_equal(as_float32(seg.audio), window)
            assert np.array_equal(codec_input(seg.audio, seg.rate, 24000), resample(window, rate, 24000))
            assert len(codec_input(seg.audio, seg.rate, 24000)) == len(window) * 3 // 2
    assert sorted(reads) == sorted({c[0]["audio"] for c in cuts_by_recording.values()})  # once each


def test_defects_become_rejects_with_reasons(tiny_corpus, cuts_by_recording, store):
    reasons = {}
    for cuts in cuts_by_recording.values():
        _, rejects = segment_recording(cuts, store.read_bytes, 0.5, 20.0)
        reasons.update({r["cut_id"]: r["reason"] for r in rejects})
    short = next(c for c, t in tiny_corpus.cuts.items() if t.defect == "too_short")
    assert reasons == {short: "too_short"}


def test_missing_undecodable_and_out_of_range(cuts_by_recording, store):
    cuts = next(iter(cuts_by_recording.values()))

    def missing(path):
        raise LookupError(f"{path} not in any tar")

    _, rejects = segment_recording(cuts, missing, 0.5, 20.0)
    assert {r["reason"] for r in rejects} == {"missing_audio"} and len(rejects) == len(cuts)
    _, rejects = segment_recording(cuts, lambda p: b"not a flac", 0.5, 20.0)
    assert {r["reason"] for r in rejects} == {"undecodable_audio"}
    late = [{**cuts[0], "start": 10_000.0}]
    _, rejects = segment_recording(late, store.read_bytes, 0.5, 20.0)
    assert rejects[0]["reason"] == "window_past_end"
    _, rejects = segment_recording(cuts, store.read_bytes, 0.1, 0.2)
    assert {r["reason"] for r in rejects} == {"too_long"} and len(rejects) == len(cuts)


def test_int16_scaled_equals_libsndfile_float_decode(tmp_path):
    """libsndfile's float32 decode of 16-bit audio is int16 / 32768, bit for bit, over the whole
    int16 range: what lets audio travel as int16 without changing a single code."""
    every_value = np.arange(-32768, 32768, dtype=np.int16)
    noise = np.random.default_rng(0).integers(-32768, 32768, 48000).astype(np.int16)
    for samples in (every_value, noise):
        buf = io.BytesIO()
        sf.write(buf, samples, 16000, format="FLAC", subtype="PCM_16")
        as_int16, _ = sf.read(io.BytesIO(buf.getvalue()), dtype="int16")
        as_float, _ = sf.read(io.BytesIO(buf.getvalue()), dtype="float32")
        assert np.array_equal(as_int16, samples)
        assert as_float32(as_int16).dtype == np.float32
        assert np.array_equal(as_float32(as_int16), as_float)


def test_files_not_16_bit_travel_as_float(tmp_path):
    samples = (0.5 * np.sin(np.arange(32000) / 7)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, samples, 16000, format="FLAC", subtype="PCM_24")
    cut = {"id": "c", "recording_id": "r", "audio": "a.flac", "start": 0.0, "duration": 1.5, "channel": 0}
    (seg,), _ = segment_recording([cut], lambda _: buf.getvalue(), 0.5, 20.0)
    decoded, _ = sf.read(io.BytesIO(buf.getvalue()), dtype="float32")
    assert seg.audio.dtype == np.float32 and np.array_equal(seg.audio, decoded[:24000])


def test_resample_length_and_passthrough():
    x = np.sin(np.arange(16000) / 16000 * 2 * np.pi * 440).astype(np.float32)
    y = resample(x, 16000, 24000)
    assert y.dtype == np.float32 and len(y) == 24000
    assert resample(y, 24000, 24000) is y


def test_overrun_past_the_end_is_clamped_up_to_the_tolerance_then_rejected(cuts_by_recording, store):
    from pipeline.encode.segment import PAST_END_TOLERANCE_S

    cut = next(iter(cuts_by_recording.values()))[0]
    whole, rate = sf.read(io.BytesIO(store.read_bytes(cut["audio"])), dtype="float32")
    end = len(whole) / rate
    start = end - 1.0
    near = {**cut, "id": "near", "start": start, "duration": 1.0 + PAST_END_TOLERANCE_S - 0.01}
    far = {**cut, "id": "far", "start": start, "duration": 1.0 + PAST_END_TOLERANCE_S + 0.01}
    segments, rejects = segment_recording([near, far], store.read_bytes, 0.5, 20.0)
    assert [s.cut["id"] for s in segments] == ["near"] and segments[0].clamped
    assert segments[0].duration == pytest.approx(1.0, abs=1 / rate)
    assert [(r["cut_id"], r["reason"]) for r in rejects] == [("far", "window_past_end")]
    assert f"lasts {end:.3f}s" in rejects[0]["detail"]
