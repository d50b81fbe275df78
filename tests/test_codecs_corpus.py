"""The bundled sample built with DAC 24 kHz and Mimi (random weights, offline), each once, in two
output folders sharing one download_dir: index.json records each codec's numbers, the codes have
its codebooks, frame rate and codebook size, `verify` checks them against what the index records,
stock readers read them, and a second codec re-downloads nothing. Bad codec settings are one
clear error each."""

from __future__ import annotations

import io
import json
import math
import shutil
import tarfile

import numpy as np
import pytest
import soundfile as sf
import yaml

import schemas
from pipeline.cli import main
from pipeline.dag import DagError, load_dag
from pipeline.executors.local import LocalExecutor
from pipeline.inspect.listen import listen
from pipeline.inspect.report import collect
from pipeline.inspect.verify import verify
from pipeline.runner import SettingsChanged, audio_settings, check_audio_settings, resolve_codec, run
from schemas.reading import index_shards, read_index, read_shard
from tests.conftest import REPO
from tests.test_formats import readme_snippets
from tests.test_verify_status import _replace_shard
from tokens.codecs import SPECS, spec

CODECS = ("dac_24khz", "mimi")
SAMPLE_DAG = REPO / "dags/sample.yaml"


def sample_dag(out, downloads, *overrides):
    return load_dag(SAMPLE_DAG, [f"source.download_dir={downloads}", "codec.weights=random", *overrides], out=str(out))


def build(out, downloads, *overrides):
    return run(sample_dag(out, downloads, *overrides), progress=False, executor=LocalExecutor(threads=2))


@pytest.fixture(scope="module")
def built(codec_samples):
    return codec_samples


@pytest.fixture(scope="module")
def outs(codec_samples):
    return codec_samples[0]


def samples(out) -> dict[str, tuple[dict, np.ndarray]]:
    """{id: (metadata, codes)} as the project's readers give them, every subset."""
    return {
        meta["id"]: (meta, codes)
        for shard in index_shards(str(out), read_index(str(out)))
        for _, meta, codes in read_shard(shard)
    }


def test_the_schema_accepts_every_codec():
    codec = schemas.load_schema("index.v2")["properties"]["provenance"]["properties"]["codec"]["properties"]
    assert sorted(codec["model"]["enum"]) == sorted(SPECS)


@pytest.mark.parametrize("name", CODECS)
def test_the_index_records_the_codec_and_verify_passes(outs, name):
    index = read_index(str(outs[name]))  # checked against schemas/index.v2.json
    codec = spec(name)
    recorded = index["provenance"]["codec"]
    assert (recorded["model"], recorded["sample_rate"], recorded["codebook_size"], recorded["frame_rate"]) == (
        name,
        codec.sample_rate,
        codec.codebook_size,
        codec.frame_rate,
    )
    assert recorded["codebooks"] == index["codes"]["codebooks"] == codec.default_codebooks
    assert index["codes"]["frame_rate"] == codec.frame_rate and recorded["weights"] == "random"
    assert verify(outs[name], jobs=2) == []


@pytest.mark.parametrize("name", CODECS)
def test_codes_have_the_codecs_shape_and_range(outs, name):
    codec, got = spec(name), samples(outs[name])
    assert len(got) == 40
    top = 0
    for meta, codes in got.values():
        audio_samples = round(meta["duration"] * codec.sample_rate)
        assert codes.shape == (codec.default_codebooks, math.ceil(audio_samples / codec.hop)), meta["id"]
        top = max(top, int(codes.max()))
    assert top < codec.codebook_size
    if codec.codebook_size > 1024:
        assert top > 1023  # Mimi's 2,048 entries are used, not clipped to EnCodec's 1,024


@pytest.mark.parametrize("name", CODECS)
def test_stock_readers_read_the_codes_with_the_recorded_sizes(outs, name, tmp_path, monkeypatch):
    """docs/formats.md's snippets (webdataset, pyarrow + pandas, datasets, lhotse Shar) run as
    written and give what the project's readers give."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sample").symlink_to(outs[name])
    monkeypatch.chdir(tmp_path)
    want = {k: codes for k, (_, codes) in samples(outs[name]).items()}
    codebooks = spec(name).default_codebooks
    web, arrow, hf, shar = readme_snippets()

    scope: dict = {}
    exec(compile(web, "formats.md (WebDataset)", "exec"), scope)
    assert scope["codes"].dtype == np.uint16 and scope["codes"].shape[0] == codebooks
    assert np.array_equal(scope["codes"], want[scope["meta"]["id"]])
    exec(compile(arrow, "formats.md (pyarrow, pandas)", "exec"), scope)
    first = scope["table"].column("id")[0].as_py()
    assert np.array_equal(scope["codes"], want[first]) and np.array_equal(scope["codes_pd"], want[first])
    exec(compile(hf, "formats.md (datasets)", "exec"), scope)
    rows = [r for split in scope["ds"].values() for r in split]
    assert len(rows) == len(want)  # train, dev and test splits
    for r in rows:
        assert np.array_equal(r["codes"], want[r["id"]])
    exec(compile(shar, "formats.md (lhotse Shar)", "exec"), scope)
    cuts = list(scope["cuts"])
    assert len(cuts) == 28
    for cut in cuts:  # every frame: the durations are frames / the codec's frame rate
        assert np.array_equal(cut.load_codes().T, want[cut.id])
        assert cut.duration == pytest.approx(want[cut.id].shape[1] / spec(name).frame_rate)


def test_listen_and_report_use_the_recorded_codec(outs, tmp_path):
    mimi = spec("mimi")
    cut_id, (_, codes) = next(iter(samples(outs["mimi"]).items()))
    seconds = listen(outs["mimi"], cut_id, tmp_path / "x.wav")
    wave, rate = sf.read(tmp_path / "x.wav")
    assert rate == mimi.sample_rate and len(wave) == codes.shape[1] * mimi.hop
    assert seconds == pytest.approx(codes.shape[1] / mimi.frame_rate)
    stats = collect(outs["mimi"], progress=False)
    assert stats["codes"]["codebook_size"] == 2048 and len(stats["codes"]["sorted_frequencies"][0]) == 2048
    frames = max(c.shape[1] for _, c in samples(outs["mimi"]).values())
    assert stats["durations"]["longest_s"] == pytest.approx(frames / mimi.frame_rate, abs=1e-3)


def test_a_second_codec_downloads_and_parses_nothing_again(built):
    outs, before, after, downloads = built
    assert {p for p in before if p.endswith(".done.json")} >= {"small.tar.done.json", "large.tar.done.json"}
    assert after == before, "the second output folder downloaded again"
    assert not list(downloads.rglob("*.part*"))
    # Both folders plan from one parse of each manifest, published under downloads/parsed/.
    shared = sorted((downloads / "parsed").iterdir())
    subsets = json.loads((outs["mimi"] / "index.json").read_text())["subsets"]
    assert [p.name.split("-")[0] for p in shared] == sorted(subsets)
    for folder in shared:
        subset = folder.name.split("-")[0]
        for out in outs.values():
            kept = out / "plan" / f"{subset}.parsed" / "cuts.tsv"
            assert kept.stat().st_ino == (folder / "cuts.tsv").stat().st_ino


def test_verify_names_a_code_past_the_recorded_codebook(outs, tmp_path):
    """Mimi's codes reach 2,047: one code at 2,048 is the one problem, in a .npy member and in a
    Parquet column."""
    copy = tmp_path / "mimi"
    shutil.copytree(outs["mimi"], copy)
    index = json.loads((copy / "index.json").read_text())
    shard = next(s for s in index["shards"] if s["format"] == "webdataset")
    with tarfile.open(copy / shard["path"]) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    damaged = next(m.name for m, _ in members if m.name.endswith(".codes.npy"))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            if info.name == damaged:
                codes = np.load(io.BytesIO(data), allow_pickle=False)
                codes[0, 0] = 2048
                data = schemas.codes_to_npy(codes, codebook_size=65536)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    _replace_shard(copy, shard, buf.getvalue())
    problems = verify(copy)
    [problem] = [p for p in problems if "values must lie" in p]  # and its frames then differ from lengths
    assert f"{damaged}: values must lie in [0, 2048), got " in problem and problem.endswith("..2048")
    assert all(p.startswith(f"{shard['path']}: ") for p in problems)

    import pyarrow as pa
    import pyarrow.parquet as pq

    shutil.rmtree(copy)
    shutil.copytree(outs["mimi"], copy)
    shard = next(s for s in index["shards"] if s["format"] == "parquet")
    table = pq.read_table(copy / shard["path"])
    codes = schemas.codes_from_arrow(table.column("codes"), codebook_size=2048)
    codes[0] = codes[0].copy()
    codes[0][-1, -1] = 2048
    column = schemas.codes_to_arrow(codes, codebook_size=65536)
    table = table.set_column(table.schema.get_field_index("codes"), table.schema.field("codes"), column)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    _replace_shard(copy, shard, sink.getvalue().to_pybytes())
    [problem] = verify(copy)
    assert f"{shard['path']}: unreadable: SchemaError: codes: values must lie in [0, 2048), got " in problem


def test_an_unknown_codec_is_one_dag_error(tmp_path, capsys):
    with pytest.raises(DagError, match=r"codec.name 'foo' is not a codec; use one of \['dac_24khz', 'encodec_24khz'"):
        load_dag(SAMPLE_DAG, ["codec.name=foo"], out=str(tmp_path / "out"))
    assert main(["run", str(SAMPLE_DAG), "--out", str(tmp_path / "out"), "--set", "codec.name=foo"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "codec.name 'foo' is not a codec" in err
    assert not (tmp_path / "out").exists()


def test_weights_of_another_codec_are_refused_before_encoding(tmp_path, capsys):
    from tokens.codecs import hub, mimi

    folder = tmp_path / "mimi-weights"
    hub.random_model(mimi.CODEC).save_pretrained(folder)
    out = tmp_path / "out"
    argv = ["run", str(SAMPLE_DAG), "--out", str(out), "--no-progress"]
    argv += ["--set", "codec.name=dac_24khz", "--set", f"codec.weights={folder}"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"codec dac_24khz: codec.weights folder {folder} holds a 'mimi' model, not dac_24khz" in err
    assert not (out / "corpus.json").exists() and not (out / "work").exists() and not (out / "downloads").exists()


def test_switching_codec_in_an_encodec_folder_is_refused(tmp_path):
    """An EnCodec OUT (its corpus.json, what a run writes before anything else) refuses Mimi."""
    out = tmp_path / "encodec"
    encodec = sample_dag(out, tmp_path / "downloads")
    check_audio_settings(out, audio_settings(encodec, resolve_codec(encodec.codec).weights), rebuild=False)
    with pytest.raises(SettingsChanged, match=r"(?s)holds codes made with other audio settings.*mimi.*new --out"):
        run(sample_dag(out, tmp_path / "downloads", "codec.name=mimi"), progress=False, executor=LocalExecutor(1))
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["corpus.json"]


def test_a_saved_dac_folder_gives_the_random_dacs_codes(built, tmp_path):
    """save_pretrained of the random DAC, passed as codec.weights, encodes the same codes (the dev
    subset, in an output folder of its own) and is recorded as a checkpoint with the same hash."""
    from tokens.codecs import dac, hub

    outs, _, _, downloads = built
    folder = tmp_path / "dac-weights"
    hub.random_model(dac.CODEC).save_pretrained(folder)
    out = tmp_path / "out"
    needed = ("libriheavy_cuts_dev.jsonl.gz", "small.tar", "large.tar")
    checksums = {k: v for k, v in yaml.safe_load(SAMPLE_DAG.read_text())["source"]["checksums"].items() if k in needed}
    overrides = ["subsets={train: [dev]}", f"source.checksums={json.dumps(checksums)}"]
    summary = build(out, downloads, "codec.name=dac_24khz", f"codec.weights={folder}", *overrides)
    recorded = summary.index["provenance"]["codec"]
    random = read_index(str(outs["dac_24khz"]))["provenance"]["codec"]
    assert recorded["weights"] == "checkpoint" and recorded["weights_source"] == str(folder.resolve())
    assert recorded["weights_sha256"] == random["weights_sha256"]
    got, want = samples(out), samples(outs["dac_24khz"])
    assert len(got) == 6
    for cut_id, (_, codes) in got.items():
        assert np.array_equal(codes, want[cut_id][1]), cut_id
