"""DAG files load, are checked before anything runs, and take --set overrides."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.dag import DagError, load_dag
from tests.conftest import REPO, write_dag


@pytest.mark.parametrize("path", sorted((REPO / "dags").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_dag_loads(path):
    dag = load_dag(path)
    assert dag.subsets.train and dag.output.formats
    assert path.read_text().startswith("#"), "a DAG opens with a comment saying what it does"
    assert "valle-prep run dags/" in path.read_text(), "and the command that runs it"


def test_real_corpus_dags_use_official_sources_and_checksums():
    for size in ("small", "medium", "large"):
        dag = load_dag(REPO / f"dags/libriheavy-{size}.yaml")
        assert dag.source.manifest_base_url == "https://huggingface.co/datasets/pkufool/libriheavy/resolve/main/"
        assert dag.source.audio_base_url == "https://dl.fbaipublicfiles.com/librilight/data/"
        assert dag.codec.weights == "pretrained"
        assert dag.source.checksums["libriheavy_cuts_dev.jsonl.gz"].startswith("sha256:d9667957")
        assert all(f"{a}" in dag.source.checksums for a in dag.source.audio_archives)


def test_sample_dag_resolves_local_paths_to_file_urls():
    dag = load_dag(REPO / "dags/sample.yaml")
    assert dag.source.manifest_base_url == (REPO / "sample/manifests").as_uri() + "/"
    assert dag.codec.weights == "auto"


def test_overrides_are_yaml_and_reach_any_key(tmp_path, tiny_corpus):
    path = write_dag(tmp_path / "d.yaml", tiny_corpus)
    dag = load_dag(path, ["text.bpe.vocab_size=99", "output.formats=[parquet]",
                          "source.checksums=null", "codec.bandwidth=3"], out="elsewhere")
    assert dag.text.bpe.vocab_size == 99 and dag.output.formats == ["parquet"]
    assert dag.source.checksums is None and dag.codec.bandwidth == 3.0
    assert dag.out == Path("elsewhere")


def test_fingerprint_ignores_where_and_how_fast_but_not_what(tmp_path, tiny_corpus):
    path = write_dag(tmp_path / "d.yaml", tiny_corpus)
    base = load_dag(path).fingerprint()
    assert load_dag(path, ["codec.batch_seconds=5", "ray.units_in_flight=9"], out="x").fingerprint() == base
    assert load_dag(path, ["text.bpe.vocab_size=99"]).fingerprint() != base


@pytest.mark.parametrize("override, message", [
    (["codec.bandwith=6"], r"unknown key codec\.bandwith \(did you mean 'bandwidth'\?\)"),
    (["plan.unit_hours=lots"], r"plan\.unit_hours: expected float"),
    (["output.formats=[tar]"], r"output\.formats must be"),
    (["subsets.train=[]"], r"subsets\.train is empty"),
    (["subsets.dev=[small]"], r"listed twice"),
    (["source.checksums={nope.tar: 'md5:00'}"], r"names 'nope\.tar', which this DAG does not download"),
    (["text.field=title"], r"text\.field must be one of"),
    (["codec.weights=/no/such.th"], r"codec\.weights"),
    (["segment.min_duration=30"], r"min_duration < max_duration"),
    (["novalue"], r"expected dotted\.key=value"),
])
def test_bad_dags_fail_early_naming_the_key(tmp_path, tiny_corpus, override, message):
    path = write_dag(tmp_path / "d.yaml", tiny_corpus)
    with pytest.raises(DagError, match=message):
        load_dag(path, override)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(DagError, match="not found"):
        load_dag(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: [unclosed")
    with pytest.raises(DagError, match="not valid YAML"):
        load_dag(bad)
