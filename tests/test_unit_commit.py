"""A unit's commit protocol, without Ray: a crash at ANY file write or rename, followed by a
re-run, leaves exactly the bytes of an uninterrupted run, and committed codes are never redone;
a unit of a run whose output lock was taken over commits nothing."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import numpy as np
import pytest

from pipeline.encode.unit import UnitJob, is_current, run_unit
from pipeline.fetch.audio_store import TarAudioStore, index_tar
from pipeline.output.lock import LOCK_NAME
from pipeline.plan.manifest import libriheavy_input
from pipeline.plan.subsets import plan_subset
from pipeline.text.bpe import BpeConfig, train_bpe
from storage.locks import LockLost, take
from tokens.audio import codec_input
from tokens.text import Tokenizer


class SimulatedCrash(BaseException):
    """Raised instead of a write; BaseException so no code path can swallow it."""


class StandInCodec:
    """Deterministic stand-in for EnCodec (75 frames/s, 8 codebooks) that counts forward passes.
    The commit protocol under test does not depend on what the codes mean, and real EnCodec
    costs seconds per call here; tests/test_pipeline_e2e.py runs the real one."""

    def __init__(self):
        self.forward_passes = 0

    def encode(self, waves):
        self.forward_passes += 1
        out = []
        for w in waves:
            frames = -(-len(w) // 320)
            energy = np.abs(np.pad(w, (0, frames * 320 - len(w)))).reshape(frames, 320).mean(1)
            out.append(((energy * 1e4).astype(np.int64) + np.arange(8)[:, None]) % 1024)
        return [c.astype(np.uint16) for c in out]


@pytest.fixture
def encoder():
    return StandInCodec()


@pytest.fixture(scope="module")
def unit_setup(tmp_path_factory, tiny_corpus):
    """One unit holding every recording of the tiny `small` manifest, a BPE model, the audio."""
    work = tmp_path_factory.mktemp("unit")
    plan = plan_subset(
        libriheavy_input(tiny_corpus.manifests["small"]),
        "small",
        "train",
        work,
        unit_hours=1.0,
        progress=False,
    )
    assert len(plan.units) == 1
    tokenizer_path = train_bpe(
        ((c, t.text) for c, t in tiny_corpus.cuts.items() if t.text.strip()),
        work / "bpe.model",
        BpeConfig(vocab_size=64),
    )
    index_tar(tiny_corpus.tars["small"])
    return work, plan.units[0], Tokenizer(tokenizer_path), TarAudioStore([tiny_corpus.tars["small"]])


def fresh_out(tmp_path: Path, name: str, unit_setup) -> Path:
    """An OUT holding only the unit's plan file, as the runner leaves it before units run."""
    plan_root, unit, _, _ = unit_setup
    out = tmp_path / name
    target = unit.path(out)
    target.parent.mkdir(parents=True)
    target.write_bytes(unit.path(plan_root).read_bytes())
    return out


def make_job(out: Path, unit_setup, **changes) -> UnitJob:
    _, unit, tokenizer, store = unit_setup
    fields = dict(
        out=out,
        unit=unit,
        audio_store=store,
        min_duration=0.5,
        max_duration=20.0,
        text_field="book",
        tokenizer=tokenizer,
        formats=["webdataset", "parquet", "lhotse_shar"],
        target_shard_bytes=20_000,
        audio_fingerprint="audio-v1",
        text_fingerprint="text-v1",
        encode_chunk_seconds=3.0,
    )
    fields.update(changes)
    return UnitJob(**fields)


def local_encode(encoder):
    def encode_async(windows, rates):
        codes = encoder.encode([codec_input(w, r, 24000) for w, r in zip(windows, rates)])
        return lambda: codes

    return encode_async


def snapshot(out: Path) -> dict[str, bytes]:
    """Every file, the codes .npz included (its zip members have fixed timestamps)."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_crash_at_every_write_then_rerun_matches_clean_run(tmp_path, unit_setup, encoder, monkeypatch):
    clean_out = fresh_out(tmp_path, "clean", unit_setup)
    run_unit(make_job(clean_out, unit_setup), local_encode(encoder))
    expected = snapshot(clean_out)
    assert {k.split("/")[0] for k in expected} >= {"webdataset", "parquet", "lhotse_shar"}

    real_replace = os.replace
    n_writes = 0

    # Count the renames of a clean run: every commit step ends in one.
    def counting(src, dst):
        nonlocal n_writes
        n_writes += 1
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", counting)
    run_unit(make_job(fresh_out(tmp_path, "count", unit_setup), unit_setup), local_encode(encoder))
    monkeypatch.setattr(os, "replace", real_replace)
    assert n_writes >= 5  # codes, ledger, 2+ shards, ledger

    for crash_at in range(1, n_writes + 1):
        out = fresh_out(tmp_path, f"crash{crash_at}", unit_setup)
        calls = 0

        def crashing(src, dst):
            nonlocal calls
            calls += 1
            if calls == crash_at:
                raise SimulatedCrash(f"crash before rename #{crash_at} ({dst})")
            real_replace(src, dst)

        monkeypatch.setattr(os, "replace", crashing)
        with pytest.raises(SimulatedCrash):
            run_unit(make_job(out, unit_setup), local_encode(encoder))
        monkeypatch.setattr(os, "replace", real_replace)

        passes = encoder.forward_passes
        result = run_unit(make_job(out, unit_setup), local_encode(encoder))
        assert snapshot(out) == expected, f"crash before rename #{crash_at}"
        assert not list(out.rglob("*.partial"))
        # Once the codes file is committed (rename #1 then its ledger entry, #2), no re-encoding.
        if crash_at > 2:
            assert result["action"] == "shards" and encoder.forward_passes == passes


def test_a_unit_whose_run_lost_its_output_lock_stops_and_commits_nothing(tmp_path, unit_setup, encoder, monkeypatch):
    """Another host takes the run's output lock over while the unit encodes (the driver was
    paused past the stale time): the unit stops at its next chunk, leaving no codes file, shard
    or ledger entry."""
    out = fresh_out(tmp_path, "out", unit_setup)
    plan_files = set(snapshot(out))
    run_lock, other = take(out / LOCK_NAME, host="host-a", heartbeat_s=60), []
    encode = local_encode(encoder)

    def encode_then_taken_over(windows, rates):
        if not other:
            monkeypatch.setattr(fcntl, "flock", lambda fd, op: None)  # another host's flock
            other.append(take(out / LOCK_NAME, host="host-b", force=True, heartbeat_s=60))
        return encode(windows, rates)

    try:
        with pytest.raises(LockLost, match="taken over by host host-b"):
            run_unit(make_job(out, unit_setup, lock=run_lock.guard), encode_then_taken_over)
        assert encoder.forward_passes == 1  # of several chunks
        assert {f for f in snapshot(out) if not f.startswith(LOCK_NAME)} == plan_files
    finally:
        for lock in (run_lock, *other):
            lock.release()


def test_text_change_reuses_codes_and_codec_change_reencodes(tmp_path, unit_setup, encoder):
    out = fresh_out(tmp_path, "o", unit_setup)
    first = run_unit(make_job(out, unit_setup), local_encode(encoder))
    assert first["action"] == "codes"
    assert is_current(make_job(out, unit_setup))

    passes = encoder.forward_passes
    retok = make_job(out, unit_setup, text_fingerprint="text-v2", formats=["parquet"])
    assert not is_current(retok)
    assert run_unit(retok, local_encode(encoder))["action"] == "shards"
    assert encoder.forward_passes == passes
    # The formats no longer asked for are gone; the ledger names only what exists.
    assert not list((out / "webdataset").rglob("*.tar"))
    assert all(p.parent == out / "lhotse_shar" for p in (out / "lhotse_shar").rglob("*"))  # no unit folder

    recode = make_job(out, unit_setup, audio_fingerprint="audio-v2")
    assert run_unit(recode, local_encode(encoder))["action"] == "codes"
    assert encoder.forward_passes > passes


def test_asr_field_needs_codes_for_cuts_the_book_text_dropped(tmp_path, unit_setup, encoder, tiny_corpus):
    """The empty-book-text cut was never encoded; switching to the ASR text needs its codes,
    so the unit is re-encoded rather than silently missing a sample."""
    out = fresh_out(tmp_path, "o", unit_setup)
    run_unit(make_job(out, unit_setup), local_encode(encoder))
    result = run_unit(make_job(out, unit_setup, text_field="asr", text_fingerprint="asr"), local_encode(encoder))
    assert result["action"] == "codes"
    empty = next(c for c, t in tiny_corpus.cuts.items() if t.defect == "empty_text")
    entry = json.loads((out / "ledger" / f"{unit_setup[1].name}.json").read_text())
    assert not any(r["cut_id"] == empty for r in entry["shards"]["rejects"])
