"""Planning: units are deterministic, partition the cuts, keep recordings whole."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.plan.manifest import libriheavy_input, libriheavy_inputs
from pipeline.plan.subsets import ManifestUnreadable, _pack_units, load_plan, plan_subset, plan_subsets, read_unit_cuts
from sample.manifest_reference import reference_units
from storage.download import DownloadError
from tests.conftest import REPO


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.text("abc/_-0123", min_size=1, max_size=8), st.floats(0.5, 4000, allow_nan=False), min_size=1, max_size=60
    ),
    st.floats(0.01, 3.0),
)
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
    plan = plan_subset(libriheavy_input(manifest), "small", "train", tmp_path, 0.001, progress=False)
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
    assert plan_subset(libriheavy_input(manifest), "small", "train", tmp_path, 0.001, progress=False) == plan
    assert (tmp_path / "plan/small.json").stat().st_mtime_ns == mtime  # not redone


def test_plan_does_not_depend_on_manifest_line_order(tmp_path, tiny_corpus):
    lines = gzip.open(tiny_corpus.manifests["small"], "rt").read().splitlines()
    shuffled = tmp_path / "shuffled.jsonl.gz"
    with gzip.open(shuffled, "wt") as f:
        f.write("\n".join(reversed(lines)) + "\n")
    a = plan_subset(
        libriheavy_input(tiny_corpus.manifests["small"]), "small", "train", tmp_path / "a", 0.002, progress=False
    )
    b = plan_subset(libriheavy_input(shuffled), "small", "train", tmp_path / "b", 0.002, progress=False)
    assert [u.name for u in a.units] == [u.name for u in b.units]
    for ua, ub in zip(a.units, b.units):
        assert read_unit_cuts(tmp_path / "a", ua) == read_unit_cuts(tmp_path / "b", ub)


def test_interrupted_plan_is_redone_cleanly(tmp_path, tiny_corpus):
    manifest = tiny_corpus.manifests["small"]
    plan = plan_subset(libriheavy_input(manifest), "small", "train", tmp_path, 0.001, progress=False)
    (tmp_path / "plan/small.json").unlink()  # killed after the rename, before the summary
    (tmp_path / "plan/.small.partial").mkdir()
    (tmp_path / "plan/.small.partial/junk.jsonl").write_text("junk")
    again = plan_subset(libriheavy_input(manifest), "small", "train", tmp_path, 0.001, progress=False)
    assert again == plan and not (tmp_path / "plan/.small.partial").exists()


def test_changed_settings_replan(tmp_path, tiny_corpus):
    manifest = tiny_corpus.manifests["small"]
    small_units = plan_subset(libriheavy_input(manifest), "small", "train", tmp_path, 0.001, progress=False)
    one_unit = plan_subset(libriheavy_input(manifest), "small", "train", tmp_path, 10.0, progress=False)
    assert len(one_unit.units) == 1 < len(small_units.units)
    assert sorted(p.name for p in (tmp_path / "plan/small").iterdir()) == ["small-000000.jsonl"]
    assert json.loads((tmp_path / "plan/small.json").read_text())["fingerprint"] == one_unit.fingerprint


# ---------------------------------------------------------------- production-scale rules

PREFIX = "download/librilight/"


def _lines(path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def _write(path, lines) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _units(plan) -> list[tuple]:
    return [(u.name, u.recordings, u.cuts, u.seconds, u.sha256) for u in plan.units]


@pytest.mark.parametrize("unit_hours", [0.001, 0.002, 0.006, 10.0])
def test_same_units_and_names_as_the_lhotse_planner(tmp_path, tiny_corpus, unit_hours):
    manifests = sorted((REPO / "sample/manifests").glob("*.jsonl.gz")) + list(tiny_corpus.manifests.values())
    for i, manifest in enumerate(manifests):
        subset = manifest.name.removeprefix("libriheavy_cuts_").removesuffix(".jsonl.gz")
        plan = plan_subset(libriheavy_input(manifest), subset, "train", tmp_path / str(i), unit_hours, progress=False)
        assert _units(plan) == reference_units(manifest, subset, unit_hours, PREFIX), manifest


def _variant(line: str, **changes) -> str:
    d = json.loads(line)
    for key, value in changes.items():
        if key == "recording":  # move the cut to another recording of the manifest
            d["recording"] = json.loads(value)["recording"]
            d["supervisions"][0]["recording_id"] = d["recording"]["id"]
        else:
            d[key] = value
    return json.dumps(d)


def test_bad_numbers_are_counted_rejects_that_cost_no_other_cut(tmp_path, tiny_corpus):
    lines = _lines(tiny_corpus.manifests["small"])
    clean = plan_subset(
        libriheavy_input(_write(tmp_path / "clean.gz", lines)), "small", "train", tmp_path / "a", 0.001, progress=False
    )
    bad = {  # before the first recording's lines: a NaN there once swallowed every later recording
        1: _variant(lines[0], id="x-nan", duration=math.nan),
        2: _variant(lines[0], id="x-null", start=None),
        3: _variant(lines[0], id="x-negative", start=-2.5),
        4: _variant(lines[0], id="x-inf", duration=math.inf),
        5: _variant(lines[0], id="x-zero", duration=0.0),
    }
    plan = plan_subset(
        libriheavy_input(_write(tmp_path / "bad.gz", list(bad.values()) + lines)),
        "small",
        "train",
        tmp_path / "b",
        0.001,
        progress=False,
    )
    assert _units(plan) == _units(clean)
    got = {r["detail"].split(":")[0]: r["detail"] for r in plan.rejects}
    assert {f"line {n}" for n in bad} | {"line 7"} == set(got)  # line 7: the planted malformed line
    assert "duration is nan" in got["line 1"] and "`null` - at `$.start`" in got["line 2"]
    assert "start is -2.5" in got["line 3"] and "duration is inf" in got["line 4"]
    assert "duration is 0" in got["line 5"]
    assert {r["reason"] for r in plan.rejects} == {"bad_manifest_line"}
    assert plan.cuts_in == clean.cuts_in + len(bad)


def test_duplicate_ids_in_a_subset_keep_one_copy_whatever_the_line_order(tmp_path, tiny_corpus):
    lines = [l for l in _lines(tiny_corpus.manifests["small"]) if l.startswith("{") and l.endswith("}")]
    recordings = sorted({json.loads(l)["recording"]["id"] for l in lines})
    first_of = {json.loads(l)["recording"]["id"]: l for l in reversed(lines)}
    moved = _variant(lines[-1], recording=first_of[recordings[0]])  # same id, an earlier recording
    extra = [moved, lines[3]]  # and an exact copy of line 4
    plans = []
    for name, order in (("fwd", lines + extra), ("rev", list(reversed(lines + extra)))):
        plan = plan_subset(
            libriheavy_input(_write(tmp_path / f"{name}.gz", order)),
            "small",
            "train",
            tmp_path / name,
            0.001,
            progress=False,
        )
        cuts = [c for u in plan.units for c in read_unit_cuts(tmp_path / name, u)]
        ids = [c["id"] for c in cuts]
        assert len(ids) == len(set(ids)) == len(lines)
        kept = next(c for c in cuts if c["id"] == json.loads(moved)["id"])
        assert kept["recording_id"] == recordings[0]  # the smallest (recording, start) stays
        dups = [r for r in plan.rejects if r["reason"] == "duplicate_cut_id"]
        assert sorted(r["cut_id"] for r in dups) == sorted(json.loads(l)["id"] for l in extra)
        assert all(r["detail"].startswith("line ") and "is kept at line" in r["detail"] for r in dups)
        assert sum(u.cuts for u in plan.units) == len(lines)
        plans.append([(u.name, u.cuts, u.seconds, read_unit_cuts(tmp_path / name, u)) for u in plan.units])
    assert plans[0] == plans[1]  # unit files list cuts in manifest order; their cuts are the same


def _count_parses(monkeypatch) -> list[str]:
    """The subsets whose manifests are parsed from now on."""
    import pipeline.plan.subsets

    parsed, scan = [], pipeline.plan.subsets._scan
    monkeypatch.setattr(
        pipeline.plan.subsets, "_scan", lambda m, subset, *a: parsed.append(subset) or scan(m, subset, *a)
    )
    return parsed


def test_an_id_in_two_subsets_is_kept_in_the_evaluation_subset(tmp_path, tiny_corpus, monkeypatch):
    small, dev = _lines(tiny_corpus.manifests["small"]), _lines(tiny_corpus.manifests["dev"])
    leaked = small[0]
    paths = {"small": _write(tmp_path / "small.gz", small), "dev": _write(tmp_path / "dev.gz", dev + [leaked])}
    roles = {"small": "train", "dev": "dev"}
    out = tmp_path / "out"
    train, held_out = plan_subsets(libriheavy_inputs(paths), roles, out, 0.001, progress=False)
    assert (train.subset, held_out.subset) == ("small", "dev")  # DAG order back
    leaked_id = json.loads(leaked)["id"]
    assert leaked_id in {c["id"] for u in held_out.units for c in read_unit_cuts(out, u)}
    assert leaked_id not in {c["id"] for u in train.units for c in read_unit_cuts(out, u)}
    (reject,) = [r for r in train.rejects if r["reason"] == "duplicate_cut_id"]
    assert reject["cut_id"] == leaked_id and reject["detail"] == "line 1: the same id is kept in subset dev"
    assert held_out.rejects == [] and train.excluded

    stamp = (out / "plan/small.json").stat().st_mtime_ns
    assert plan_subsets(libriheavy_inputs(paths), roles, out, 0.001, progress=False) == [train, held_out]
    assert (out / "plan/small.json").stat().st_mtime_ns == stamp  # nothing re-planned

    _write(paths["dev"], dev)  # the leak is fixed upstream: the training copy comes back
    parsed = _count_parses(monkeypatch)
    train2, _ = plan_subsets(libriheavy_inputs(paths), roles, out, 0.001, progress=False)
    assert parsed == ["dev"]  # train's exclusions changed, not its manifest: planned from its kept parse
    assert leaked_id in {c["id"] for u in train2.units for c in read_unit_cuts(out, u)}
    assert train2.excluded == "" and not [r for r in train2.rejects if r["reason"] == "duplicate_cut_id"]
    assert _units(train2) == _units(
        plan_subset(libriheavy_input(paths["small"]), "small", "train", tmp_path / "alone", 0.001, progress=False)
    )


def test_a_new_unit_size_plans_from_the_kept_parse_and_a_damaged_one_is_parsed_again(
    tmp_path, tiny_corpus, monkeypatch
):
    manifest = tiny_corpus.manifests["small"]
    plan_subset(libriheavy_input(manifest), "small", "train", tmp_path / "out", 0.001, progress=False)
    parsed = _count_parses(monkeypatch)
    bigger = plan_subset(libriheavy_input(manifest), "small", "train", tmp_path / "out", 0.002, progress=False)
    assert parsed == []
    assert _units(bigger) == _units(
        plan_subset(libriheavy_input(manifest), "small", "train", tmp_path / "alone", 0.002, False)
    )
    assert parsed == ["small"]  # a fresh output folder has nothing kept

    kept = tmp_path / "out/plan/small.parsed/cuts.tsv"
    kept.write_bytes(kept.read_bytes()[:-10])  # a damaged copy is never planned from
    again = plan_subset(libriheavy_input(manifest), "small", "train", tmp_path / "out", 0.001, progress=False)
    assert parsed == ["small", "small"]
    assert _units(again) == _units(
        plan_subset(libriheavy_input(manifest), "small", "train", tmp_path / "a2", 0.001, False)
    )


def test_output_folders_sharing_downloads_share_the_parse(tmp_path, tiny_corpus, monkeypatch):
    """A second output folder (the same corpus coded by another codec) plans from the first's
    parse, linked from the shared folder; a damaged shared parse is parsed again and replaced."""
    manifests, roles, shared = {"small": tiny_corpus.manifests["small"]}, {"small": "train"}, tmp_path / "parsed"
    parsed = _count_parses(monkeypatch)
    (first,) = plan_subsets(libriheavy_inputs(manifests), roles, tmp_path / "a", 0.001, progress=False, shared=shared)
    (published,) = shared.iterdir()
    assert parsed == ["small"] and published.name.startswith("small-")
    (second,) = plan_subsets(libriheavy_inputs(manifests), roles, tmp_path / "b", 0.001, progress=False, shared=shared)
    assert parsed == ["small"] and _units(second) == _units(first)  # no second parse, the same units
    linked = tmp_path / "b/plan/small.parsed/cuts.tsv"
    assert linked.stat().st_ino == (published / "cuts.tsv").stat().st_ino  # a link, not a copy

    (published / "digests.npy").write_bytes(b"damaged")
    (third,) = plan_subsets(libriheavy_inputs(manifests), roles, tmp_path / "c", 0.001, progress=False, shared=shared)
    assert parsed == ["small", "small"] and _units(third) == _units(first)
    assert (tmp_path / "c/plan/small.parsed/digests.npy").read_bytes() == (published / "digests.npy").read_bytes()
    assert [p.name for p in shared.iterdir()] == [published.name]  # replaced, nothing left aside


def test_a_damaged_manifest_is_a_clear_error(tmp_path, tiny_corpus):
    data = tiny_corpus.manifests["small"].read_bytes()
    damaged = tmp_path / "libriheavy_cuts_small.jsonl.gz"
    damaged.write_bytes(data[: len(data) // 2])
    with pytest.raises(ManifestUnreadable, match="not a readable gzip file.*download it again"):
        plan_subset(libriheavy_input(damaged), "small", "train", tmp_path / "out", 0.001, progress=False)
    assert isinstance(ManifestUnreadable("x"), DownloadError)  # the CLI reports it in one line


def test_a_changed_manifest_is_planned_again(tmp_path, tiny_corpus):
    lines = _lines(tiny_corpus.manifests["small"])
    path = _write(tmp_path / "m.gz", lines)
    first = plan_subset(libriheavy_input(path), "small", "train", tmp_path / "out", 10.0, progress=False)
    _write(path, lines[:-1])  # one cut fewer upstream
    second = plan_subset(libriheavy_input(path), "small", "train", tmp_path / "out", 10.0, progress=False)
    assert second.fingerprint != first.fingerprint
    assert second.units[0].cuts == first.units[0].cuts - 1 and second.units[0].sha256 != first.units[0].sha256


def test_a_downloaded_manifest_is_not_hashed_again(tmp_path, tiny_corpus, monkeypatch):
    """Its download verified its sha256 and wrote it in the marker: planning takes it from
    there while the file keeps its size; a file changed since (another size) is hashed."""
    import hashlib

    import pipeline.plan.subsets
    from storage.download import Checksum, write_marker
    from storage.hashing import sha256_file

    lines = _lines(tiny_corpus.manifests["small"])
    path = _write(tmp_path / "m.gz", lines)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    write_marker(path, "https://example.org/m.gz", Checksum.parse(f"sha256:{digest}"))
    hashed = []
    monkeypatch.setattr(
        pipeline.plan.subsets, "sha256_file", lambda p: (hashed.append(p) if p == path else None) or sha256_file(p)
    )
    first = plan_subset(libriheavy_input(path), "small", "train", tmp_path / "out", 10.0, progress=False)
    assert hashed == [] and first.fingerprint == pipeline.plan.subsets.plan_fingerprint(
        digest, 10.0, {"source_prefix": PREFIX}
    )
    _write(path, lines[:-1])
    second = plan_subset(libriheavy_input(path), "small", "train", tmp_path / "out", 10.0, progress=False)
    assert hashed == [path] and second.fingerprint != first.fingerprint


# The bundled Libriheavy sample's plan, as written before corpora other than Libriheavy could be
# planned: source kinds must not change a byte of it (the unit files' sha256 key every unit's
# codes, so a changed byte would re-encode every corpus built so far).
SAMPLE_PLAN_SHA256 = {
    "plan/dev.json": "4d3c19eb8298eb38dc5e1948785b53187726aff012d634cf554af7f6bc06c933",
    "plan/small.json": "1d800703f57658428355d3612ac3e74d37e542e9506fb0f2db1b9281a85f8d84",
    "plan/test_clean.json": "64329b897faf437480339f322dd548a3c979fc3dad997d8addae9ff1e0642eb9",
    "plan/dev/dev-000000.jsonl": "b075a03c5a0b5b4f77d37b675afefc78378dce4251871a489b4e09162f3b9e5d",
    "plan/small/small-000000.jsonl": "7fc1ea48e15f71955eb68df56614760d4b9167e099d6c7299ce7c93f26cc30cf",
    "plan/small/small-000001.jsonl": "8cd287e89fcbbd9c6d70ff64c71d160ab20fe751b3a3d6f9a3821105baa1c7a7",
    "plan/small/small-000002.jsonl": "90c348027ad4898639442e94171e9cc1b1cb2c7904809ca9b9d430c4d71b7550",
    "plan/test_clean/test_clean-000000.jsonl": "05d756ad3f2978735600cf1270aaba2bcbeacc4ea1fc73535cbf9640ccc60c26",
}


def test_the_libriheavy_sample_plans_to_the_same_bytes(tmp_path):
    from pipeline.dag import load_dag
    from pipeline.fetch.transfer_pools import ThreadTasks
    from pipeline.sources import kind_of
    from storage.hashing import sha256_file

    dag = load_dag(REPO / "dags/sample.yaml", out=str(tmp_path))
    with kind_of(dag.source).open_source(dag, tmp_path, False, ThreadTasks()) as source:
        plan_subsets(source.manifests(), dag.subsets.roles(), tmp_path, dag.plan.unit_hours, progress=False)
        provenance = source.provenance()
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("plan/**/*.json*"))
    written = [p for p in written if ".parsed/" not in p]
    assert written == sorted(SAMPLE_PLAN_SHA256)
    assert {p: sha256_file(tmp_path / p) for p in written} == SAMPLE_PLAN_SHA256
    sums = dict(reversed(line.split("  ")) for line in (REPO / "sample/SHA256SUMS").read_text().splitlines())
    manifests = {Path(name).name: digest for name, digest in sums.items() if name.startswith("manifests/")}
    assert provenance == {"kind": "libriheavy", "manifests": manifests}
