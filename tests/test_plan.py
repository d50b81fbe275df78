"""Planning: units are deterministic, partition the cuts, keep recordings whole."""
from __future__ import annotations

import gzip
import json

from hypothesis import given, settings, strategies as st

from pipeline.plan import _pack_units, load_plan, plan_subset, read_unit_cuts


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text("abc/_-0123", min_size=1, max_size=8),
                       st.floats(0.5, 4000, allow_nan=False), min_size=1, max_size=60),
       st.floats(0.01, 3.0))
def test_units_partition_recordings_in_id_order(seconds, unit_hours):
    unit_of = _pack_units(seconds, "small", unit_hours)
    assert set(unit_of) == set(seconds)  # every recording in exactly one unit
    names = [unit_of[r] for r in sorted(seconds)]
    assert names == sorted(names)  # contiguous runs of sorted ids
    assert names[0] == "small-000000"
    units = sorted(set(names))
    assert units == [f"small-{i:06d}" for i in range(len(units))]
    for name in units[:-1]:  # every unit but the last reached the target
        assert sum(s for r, s in seconds.items() if unit_of[r] == name) >= unit_hours * 3600
    assert _pack_units(dict(reversed(list(seconds.items()))), "small", unit_hours) == unit_of


def test_plan_is_a_partition_and_reused(tmp_path, tiny_corpus):
    manifest = tiny_corpus.manifests["small"]
    plan = plan_subset(manifest, "small", "train", tmp_path, 0.001, "download/librilight/", progress=False)
    cut_ids = [c["id"] for u in plan.units for c in read_unit_cuts(tmp_path, u)]
    readable = [cid for cid, t in tiny_corpus.cuts.items() if t.manifest == "small"]
    assert sorted(cut_ids) == sorted(readable) and len(set(cut_ids)) == len(cut_ids)
    assert plan.cuts_in == len(readable) + 1
    assert [r["reason"] for r in plan.rejects] == ["bad_manifest_line"]
    assert "line 2" in plan.rejects[0]["detail"]
    for unit in plan.units:  # whole recordings: one per unit at this size
        assert len({c["recording_id"] for c in read_unit_cuts(tmp_path, unit)}) == unit.recordings == 1
    first = read_unit_cuts(tmp_path, plan.units[0])[0]
    assert first["audio"].startswith("small/") and first["audio"].endswith(".flac")
    assert load_plan(tmp_path, "small") == plan
    mtime = (tmp_path / "plan/small.json").stat().st_mtime_ns
    assert plan_subset(manifest, "small", "train", tmp_path, 0.001, "download/librilight/", progress=False) == plan
    assert (tmp_path / "plan/small.json").stat().st_mtime_ns == mtime  # not redone


def test_plan_does_not_depend_on_manifest_line_order(tmp_path, tiny_corpus):
    lines = gzip.open(tiny_corpus.manifests["small"], "rt").read().splitlines()
    shuffled = tmp_path / "shuffled.jsonl.gz"
    with gzip.open(shuffled, "wt") as f:
        f.write("\n".join(reversed(lines)) + "\n")
    a = plan_subset(tiny_corpus.manifests["small"], "small", "train", tmp_path / "a", 0.002, "download/librilight/", progress=False)
    b = plan_subset(shuffled, "small", "train", tmp_path / "b", 0.002, "download/librilight/", progress=False)
    assert [u.name for u in a.units] == [u.name for u in b.units]
    for ua, ub in zip(a.units, b.units):
        assert read_unit_cuts(tmp_path / "a", ua) == read_unit_cuts(tmp_path / "b", ub)


def test_interrupted_plan_is_redone_cleanly(tmp_path, tiny_corpus):
    manifest = tiny_corpus.manifests["small"]
    plan = plan_subset(manifest, "small", "train", tmp_path, 0.001, "download/librilight/", progress=False)
    (tmp_path / "plan/small.json").unlink()  # killed after the rename, before the summary
    (tmp_path / "plan/.small.partial").mkdir()
    (tmp_path / "plan/.small.partial/junk.jsonl").write_text("junk")
    again = plan_subset(manifest, "small", "train", tmp_path, 0.001, "download/librilight/", progress=False)
    assert again == plan and not (tmp_path / "plan/.small.partial").exists()


def test_changed_settings_replan(tmp_path, tiny_corpus):
    manifest = tiny_corpus.manifests["small"]
    small_units = plan_subset(manifest, "small", "train", tmp_path, 0.001, "download/librilight/", progress=False)
    one_unit = plan_subset(manifest, "small", "train", tmp_path, 10.0, "download/librilight/", progress=False)
    assert len(one_unit.units) == 1 < len(small_units.units)
    assert sorted(p.name for p in (tmp_path / "plan/small").iterdir()) == ["small-000000.jsonl"]
    assert json.loads((tmp_path / "plan/small.json").read_text())["fingerprint"] == one_unit.fingerprint
