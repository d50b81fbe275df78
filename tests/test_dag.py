"""DAG files load, are checked before anything runs, and take --set overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.dag import DagError, load_dag
from tests.conftest import REPO, write_dag


@pytest.mark.parametrize("path", sorted((REPO / "dags").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_dag_loads(path):
    # dags/lhotse.yaml is run with --set source.manifests=DIR: the bundled lhotse sample's here
    overrides = [f"source.manifests={REPO / 'sample/lhotse/manifests'}"] if path.name == "lhotse.yaml" else []
    dag = load_dag(path, overrides)
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
    dag = load_dag(
        path,
        ["text.bpe.vocab_size=99", "output.formats=[parquet]", "source.checksums=null", "codec.bandwidth=3"],
        out="elsewhere",
    )
    assert dag.text.bpe.vocab_size == 99 and dag.output.formats == ["parquet"]
    assert dag.source.checksums is None and dag.codec.bandwidth == 3.0
    assert dag.out == Path("elsewhere")


def test_fingerprint_ignores_where_and_how_fast_but_not_what(tmp_path, tiny_corpus):
    path = write_dag(tmp_path / "d.yaml", tiny_corpus)
    base = load_dag(path).fingerprint()
    assert load_dag(path, ["codec.batch_seconds=5", "ray.units_in_flight=9"], out="x").fingerprint() == base
    assert load_dag(path, ["text.bpe.vocab_size=99"]).fingerprint() != base


@pytest.mark.parametrize(
    "override, message",
    [
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
    ],
)
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


@pytest.mark.parametrize(
    "override, message",
    [
        ("codec.bandwidth=5.0", r"codec\.bandwidth must be one of \[1\.5, 3\.0, 6\.0, 12\.0, 24\.0\].*got 5\.0"),
        ("codec.batch_seconds=-1", r"codec\.batch_seconds must be > 0 or null, got -1\.0"),
        ("codec.batch_seconds=0", r"codec\.batch_seconds must be > 0"),
        ("codec.device=gpu", r"codec\.device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        ("codec.weights_url=ftp://host/x.th", r"codec\.weights_url must be an http\(s\):// or file:// URL"),
        ("codec.weights_checksum=sha256:xyz", r"codec\.weights_checksum is not a checksum"),
        ("codec.download_retries=0", r"codec\.download_retries must be > 0"),
        ("codec.threads=0", r"codec\.threads must be > 0 or null"),
        ("text.bpe.vocab_size=0", r"text\.bpe\.vocab_size=0: must be in \[5, 65535\]"),
        ("text.bpe.vocab_size=70000", r"text\.bpe\.vocab_size=70000: must be in \[5, 65535\]"),
        ("text.bpe.model_type=wordpiece", r"text\.bpe\.model_type='wordpiece': must be one of"),
        ("text.bpe.character_coverage=0", r"text\.bpe\.character_coverage=0\.0: must be in \(0, 1\]"),
        ("text.bpe.max_sentences=0", r"text\.bpe\.max_sentences=0: must be >= 1"),
        ("plan.unit_hours=.nan", r"plan\.unit_hours: expected a finite number, got nan"),
        ("plan.unit_hours=0", r"plan\.unit_hours must be > 0, got 0\.0"),
        ("segment.max_duration=.inf", r"segment\.max_duration: expected a finite number"),
        ("segment.min_duration=-1", r"segment\.min_duration must be > 0 and below max_duration"),
        ("output.target_shard_mb=0", r"output\.target_shard_mb must be > 0"),
        ("output.formats=[parquet, parquet]", r"output\.formats lists a format twice"),
        ("output.dir=''", r"output\.dir must name a folder"),
        ("ray.units_in_flight=0", r"ray\.units_in_flight must be > 0 or null, got 0"),
        ("ray.codec_workers=-2", r"ray\.codec_workers must be > 0 or null"),
        ("ray.cpus_per_codec_worker=0", r"ray\.cpus_per_codec_worker must be > 0 or null"),
        ("ray.address=' '", r"ray\.address must be HOST:PORT"),
        ("source.checksums={small.tar: 'sha1:abc'}", r"source\.checksums\.small\.tar is not a checksum"),
        ("source.manifest_base_url=''", r"source\.manifest_base_url is required"),
    ],
)
def test_every_stage_setting_is_checked_at_load_naming_the_key(tmp_path, tiny_corpus, override, message):
    path = write_dag(tmp_path / "d.yaml", tiny_corpus)
    with pytest.raises(DagError, match=message) as err:
        load_dag(path, [override])
    assert str(err.value).startswith(f"{path}: ")


def test_a_bad_setting_stops_the_cli_in_one_line_before_anything_is_written(tmp_path, tiny_corpus, capsys):
    from pipeline.cli import main

    path = write_dag(tmp_path / "d.yaml", tiny_corpus)
    for override in ("codec.bandwidth=5.0", "codec.batch_seconds=-1", "text.bpe.vocab_size=0"):
        assert main(["run", str(path), "--out", str(tmp_path / "out"), "--set", override]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("valle-prep: ") and override.split("=")[0] in err[0]
    assert not (tmp_path / "out").exists()


def test_a_given_bpe_model_must_reserve_our_ids(tmp_path, tiny_corpus):
    import io

    import sentencepiece as spm

    buf = io.BytesIO()  # sentencepiece's own defaults: unk=0, bos=1, eos=2, no pad
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["a few words to train on", "and a few more words"] * 20),
        model_writer=buf,
        vocab_size=16,
        minloglevel=2,
    )
    (tmp_path / "theirs.model").write_bytes(buf.getvalue())
    path = write_dag(tmp_path / "d.yaml", tiny_corpus)
    with pytest.raises(DagError, match=r"reserves pad/unk/bos/eos as \(-1, 0, 1, 2\), not \(0, 1, 2, 3\)"):
        load_dag(path, [f"text.bpe.model={tmp_path / 'theirs.model'}"])


def test_locations_given_with_set_are_read_from_the_working_directory(tmp_path, tiny_corpus, monkeypatch):
    from pipeline.dag import load_dag as load

    (tmp_path / "here").mkdir()
    (tmp_path / "here/my.model").write_bytes((REPO / "sample/SHA256SUMS").read_bytes())  # not a model
    (tmp_path / "dags").mkdir()
    path = write_dag(tmp_path / "dags/d.yaml", tiny_corpus)
    monkeypatch.chdir(tmp_path / "here")
    with pytest.raises(DagError, match=rf"{tmp_path}/here/my.model is not a SentencePiece model"):
        load(path, ["text.bpe.model=my.model"])  # from here, not from the DAG's folder
    dag = load(path, ["source.audio_dir=extracted", "codec.weights=random"])
    assert dag.source.audio_dir == str(tmp_path / "here/extracted") and dag.codec.weights == "random"
    assert load(path, ["source.manifest_base_url=../m"]).source.manifest_base_url == (tmp_path / "m").as_uri() + "/"
