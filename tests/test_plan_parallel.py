"""Parallel planning: blocks parsed by worker processes or Ray tasks, and subsets planned at the
same time, give exactly the plan of one thread planning the subsets one after another."""

from __future__ import annotations

import gzip
import json
import threading
from pathlib import Path

import pytest

from pipeline.plan import parse_pool
from pipeline.plan.manifest import libriheavy_input, libriheavy_inputs
from pipeline.plan.parse_pool import ProcessParsers, RayParsers, SerialParsers, default_parsers, ray_node_cpus
from pipeline.plan.subsets import ManifestUnreadable, SubsetPlanner, ids_path, plan_subset, plan_subsets
from tests.conftest import REPO

PREFIX = "download/librilight/"
TINY_BLOCK = 300  # bytes: most blocks hold one line; many lines are longer than a block


def _lines(path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def _write(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _moved(line: str, recording_line: str) -> str:
    """The same cut id in another recording."""
    cut = json.loads(line)
    cut["recording"] = json.loads(recording_line)["recording"]
    cut["supervisions"][0]["recording_id"] = cut["recording"]["id"]
    return json.dumps(cut)


def _everything(out: Path, plans) -> list:
    """All a plan says and writes: summaries (units, sha256, rejects, fingerprint), unit files
    byte for byte, and the saved id sets."""
    return [
        (plan, [u.path(out).read_bytes() for u in plan.units], ids_path(out, plan.subset).read_bytes())
        for plan in plans
    ]


@pytest.fixture(scope="module")
def messy_manifest(tmp_path_factory, tiny_corpus) -> Path:
    """Every line of the sample and tiny manifests, with bad lines and duplicate ids far apart
    (so that they land in different blocks)."""
    manifests = sorted((REPO / "sample/manifests").glob("*.jsonl.gz")) + list(tiny_corpus.manifests.values())
    lines = [line for p in manifests for line in _lines(p)]
    good = [l for l in lines if l.startswith("{") and l.endswith("}")]
    lines = (
        ["not json", good[5]]
        + lines[:20]
        + ["", '{"id": "x"}']
        + lines[20:]
        + [_moved(good[-1], good[0]), good[12], "\x00\xff"]
    )
    return _write(tmp_path_factory.mktemp("messy") / "libriheavy_cuts_messy.jsonl.gz", lines)


def _plan_with(parsers, manifest: Path, out: Path):
    with parsers:
        plan = plan_subset(libriheavy_input(manifest), "messy", "train", out, 0.002, progress=False, parsers=parsers)
    return _everything(out, [plan])


@pytest.mark.parametrize(
    "make",
    [lambda: SerialParsers(TINY_BLOCK), lambda: ProcessParsers(2, TINY_BLOCK), lambda: ProcessParsers(3, 4096)],
    ids=["serial-tiny", "processes-tiny", "processes-4k"],
)
def test_parallel_parsing_gives_the_serial_plan(tmp_path, messy_manifest, make):
    reference = _plan_with(SerialParsers(), messy_manifest, tmp_path / "serial")
    ((plan, _, _),) = reference
    assert len(plan.units) > 3
    assert {r["reason"] for r in plan.rejects} == {"bad_manifest_line", "duplicate_cut_id"}
    assert sum(r["reason"] == "duplicate_cut_id" for r in plan.rejects) == 3
    assert _plan_with(make(), messy_manifest, tmp_path / "parallel") == reference


def test_ray_tasks_give_the_serial_plan(tmp_path, messy_manifest, ray_address):
    reference = _plan_with(SerialParsers(), messy_manifest, tmp_path / "serial")
    assert _plan_with(RayParsers(2, TINY_BLOCK), messy_manifest, tmp_path / "ray") == reference
    with default_parsers() as chosen:  # in a Ray session, planning parses with Ray tasks, one a CPU
        assert isinstance(chosen, RayParsers) and chosen.workers == ray_node_cpus() == 3  # the session's Ray


def sample_lines() -> list[str]:
    return _lines(REPO / "sample/manifests/libriheavy_cuts_small.jsonl.gz")


def _three_subsets(tmp_path: Path, tiny_corpus) -> tuple[dict[str, Path], dict[str, str]]:
    """test, dev and train manifests that share ids: train has one of dev's and one of test's,
    dev has one of test's; train also repeats an id of its own."""
    small, dev = _lines(tiny_corpus.manifests["small"]), _lines(tiny_corpus.manifests["dev"])
    sample = sample_lines()
    test = sample[:6]
    manifests = {
        "train_a": _write(tmp_path / "train_a.gz", small + [dev[0], test[3], small[4]]),
        "dev": _write(tmp_path / "dev.gz", dev + [test[2]]),
        "test": _write(tmp_path / "test.gz", test),
        "train_b": _write(tmp_path / "train_b.gz", sample[6:] + [dev[1]]),
    }
    return manifests, {"train_a": "train", "dev": "dev", "test": "test", "train_b": "train"}


def _one_after_another(manifests, roles, out) -> list:
    """The single-threaded reference: subsets in priority order, each told the earlier id sets."""
    from pipeline.plan import cut_ids

    earlier, plans = [], {}
    for subset in ("test", "dev", "train_a", "train_b"):
        plans[subset] = plan_subset(
            libriheavy_input(manifests[subset]),
            subset,
            roles[subset],
            out,
            0.002,
            progress=False,
            parsers=SerialParsers(),
            earlier=list(earlier),
        )
        earlier.append((subset, cut_ids.load(ids_path(out, subset))))
    return [plans[s] for s in roles]


def test_subsets_planned_at_once_keep_the_priority_across_subsets(tmp_path, tiny_corpus):
    manifests, roles = _three_subsets(tmp_path, tiny_corpus)
    reference = _everything(tmp_path / "ref", _one_after_another(manifests, roles, tmp_path / "ref"))
    kept_in = {
        p.subset: {r["cut_id"]: r["detail"] for r in p.rejects if r["reason"] == "duplicate_cut_id"}
        for p, _, _ in reference
    }
    n = len(_lines(tiny_corpus.manifests["small"]))  # its copies of dev's and test's ids follow
    details = sorted(kept_in["train_a"].values())
    assert details[:2] == [
        f"line {n + 1}: the same id is kept in subset dev",
        f"line {n + 2}: the same id is kept in subset test",
    ]
    assert details[2].startswith(f"line {n + 3}: the same id is kept at line 5 ")
    assert list(kept_in["train_b"].values()) == [f"line {len(sample_lines()) - 5}: the same id is kept in subset dev"]
    n_dev = len(_lines(tiny_corpus.manifests["dev"]))
    assert list(kept_in["dev"].values()) == [f"line {n_dev + 1}: the same id is kept in subset test"]

    with ProcessParsers(2, TINY_BLOCK) as parsers:
        plans = plan_subsets(
            libriheavy_inputs(manifests), roles, tmp_path / "par", 0.002, progress=False, parsers=parsers
        )
        assert _everything(tmp_path / "par", plans) == reference
        # manifests arriving in any order (train's first, as when dev's download is slow)
        with SubsetPlanner(roles, tmp_path / "late", 0.002, False, parsers) as planner:
            for subset in ("train_b", "train_a", "dev", "test"):
                planner.manifest_ready(subset, libriheavy_input(manifests[subset]))
            assert _everything(tmp_path / "late", planner.plans()) == reference

        # a changed manifest is seen: dev no longer holds test's cut, nor train_a dev's
        _write(manifests["dev"], _lines(manifests["dev"])[1:-1])
        again = plan_subsets(
            libriheavy_inputs(manifests), roles, tmp_path / "par", 0.002, progress=False, parsers=parsers
        )
    fresh = _one_after_another(manifests, roles, tmp_path / "ref2")
    assert _everything(tmp_path / "par", again) == _everything(tmp_path / "ref2", fresh)
    assert again[0] != plans[0] and again[2] == plans[2]  # train_a changed; test did not


def test_a_failed_subset_fails_those_below_it_and_nothing_hangs(tmp_path, tiny_corpus, monkeypatch):
    monkeypatch.setattr(parse_pool, "PARALLEL_FROM_BYTES", 0)  # the default pool, even for these
    manifests, roles = _three_subsets(tmp_path, tiny_corpus)
    data = manifests["dev"].read_bytes()
    manifests["dev"].write_bytes(data[: len(data) // 2])
    with pytest.raises(ManifestUnreadable, match="dev.gz: not a readable gzip file"):
        plan_subsets(libriheavy_inputs(manifests), roles, tmp_path / "out", 0.002, progress=False)
    assert not (tmp_path / "out/plan/train_a.json").exists()  # its ids could not be checked
    assert not [t for t in threading.enumerate() if t.name.startswith("plan ")]  # none plans on

    planner = SubsetPlanner(roles, tmp_path / "out2", 0.002, False)
    with planner:
        planner.manifest_ready("train_a", libriheavy_input(manifests["train_a"]))  # waits for test and dev
        with pytest.raises(ValueError, match="no manifest handed over for dev, test, train_b"):
            planner.plans()
    with pytest.raises(RuntimeError, match="was not planned"):
        planner.done["train_a"].result(timeout=5)


def test_corrupt_compressed_bytes_are_a_clear_error(tmp_path, messy_manifest):
    data = bytearray(messy_manifest.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # zeros inside the deflate stream
    damaged = tmp_path / "libriheavy_cuts_damaged.jsonl.gz"
    damaged.write_bytes(bytes(data))
    with (
        ProcessParsers(2, TINY_BLOCK) as parsers,
        pytest.raises(ManifestUnreadable, match="damaged.jsonl.gz: not a readable gzip file"),
    ):
        plan_subset(
            libriheavy_input(damaged), "damaged", "train", tmp_path / "out", 0.002, progress=False, parsers=parsers
        )


def test_stopping_ray_parsers_cancels_their_tasks_at_once(ray_address):
    """Ctrl-C while large manifests parse on Ray: closing the pool cancels the blocks in flight,
    so the planning threads waiting on them stop in seconds, not after the whole manifest."""
    import time

    import ray

    from pipeline.plan.parse_pool import PlanningStopped

    def slow_block(*args):
        time.sleep(60)

    parsers = RayParsers(workers=1)
    parsers.task = ray.remote(slow_block).options(num_cpus=0)
    handle = parsers.submit(b"", 1, "", "x")
    started = time.monotonic()
    parsers.close()
    with pytest.raises(ray.exceptions.TaskCancelledError):  # the task itself stopped: no CPU spent on it
        ray.get(handle, timeout=20)
    with pytest.raises(PlanningStopped):  # and whoever waits on it, or would submit more, is told
        parsers.result(handle)
    with pytest.raises(PlanningStopped):
        parsers.submit(b"", 1, "", "x")
    assert time.monotonic() - started < 20
