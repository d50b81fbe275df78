"""Shared fixtures: one local Ray per test session, a tiny generated Libriheavy look-alike,
and DAG files pointing at it. Everything runs offline on CPU with a random-init EnCodec."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import yaml

from sample.lookalike import Defects, synthetic_chapters, write_corpus
from storage.hashing import sha256_file

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def capture_every_level():
    """Every test starts with pytest's capture handlers letting every level through: a scoring
    library building or restoring a model (NeMo) can leave the root's handlers, which pytest
    reuses from test to test, at ERROR, and a later test's caplog would see nothing."""
    for handler in logging.root.handlers:
        if type(handler).__name__ == "LogCaptureHandler":
            handler.setLevel(logging.NOTSET)


@pytest.fixture
def s3(monkeypatch):
    """A moto S3 server on 127.0.0.1 that boto3 and storage.remote talk to (AWS_ENDPOINT_URL,
    test credentials); yields a boto3 client for it."""
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    import storage.remote

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(storage.remote, "_CLIENTS", {})  # clients made for another endpoint
    try:
        yield boto3.client("s3")
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ray_address():
    """A local Ray cluster shared by the whole session (ray.init costs ~5 s); yields its address.
    3 CPUs: room for two CPU codec workers of one CPU each plus their unit tasks (DAGs from
    `write_dag` give a single worker 2, as the machine's cores)."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """6 chapters x 3 utterances of synthetic speech (~1-2.5 s each), with every defect planted:
    a malformed line, a too-short cut, an empty text, a window past the end, an ASR text that
    disagrees with the book text (small) and a cut with missing audio (dev)."""
    root = tmp_path_factory.mktemp("corpus")
    chapters = synthetic_chapters(n_speakers=3, chapters_per_speaker=2, utterances_per_chapter=3)
    ids = [c.recording_id for c in chapters]
    files = write_corpus(
        chapters,
        root,
        manifest_subsets={"small": ids[:5], "dev": ids[5:]},
        defects=Defects(
            missing_audio="dev",
            past_end="small",
            empty_text="small",
            too_short="small",
            asr_mismatch="small",
            malformed_line="small",
        ),
    )
    return files


def write_dag(path: Path, corpus, **sections) -> Path:
    """A DAG over `corpus` (file:// sources, checksums of the real files), sections overridable."""
    dag = {
        "name": "tiny",
        "source": {
            "manifest_base_url": corpus.root.joinpath("manifests").as_uri() + "/",
            "audio_base_url": corpus.root.joinpath("audio").as_uri() + "/",
            "audio_archives": ["small.tar"],
            "checksums": {
                p.name: f"sha256:{sha256_file(p)}" for p in [*corpus.manifests.values(), *corpus.tars.values()]
            },
        },
        "subsets": {"train": ["small"], "dev": ["dev"]},
        "plan": {"unit_hours": 0.001},  # one recording per unit
        "segment": {"min_duration": 0.5, "max_duration": 20.0},
        "text": {"field": "book", "bpe": {"vocab_size": 64}},
        "codec": {"weights": "random"},
        "output": {
            "dir": str(path.parent / "out"),
            "formats": ["webdataset", "parquet", "lhotse_shar"],
            "target_shard_mb": 0.02,
        },
        "ray": {"units_in_flight": 2, "cpus_per_codec_worker": 2},
    }
    for key, value in sections.items():
        dag[key] = {**dag.get(key, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(dag, sort_keys=False))
    return path


@pytest.fixture
def tiny_dag(tmp_path, tiny_corpus):
    return write_dag(tmp_path / "tiny.yaml", tiny_corpus)


@pytest.fixture(scope="session")
def built_corpus(tmp_path_factory, tiny_corpus, ray_address):
    """The tiny corpus run once through the whole pipeline: (dag, run summary). Read-only:
    tests that change files work on a copy."""
    from pipeline.dag import load_dag
    from pipeline.runner import run

    folder = tmp_path_factory.mktemp("built")
    dag = load_dag(write_dag(folder / "tiny.yaml", tiny_corpus))
    return dag, run(dag, progress=False)


def files_state(folder: Path) -> dict:
    """Every file under `folder` with its inode and modification time: a download rewrites both."""
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture(scope="session")
def codec_samples(tmp_path_factory):
    """dags/sample.yaml built once per session with DAC and with Mimi (random-init weights), into
    two folders sharing one download_dir: ({codec: OUT}, the download_dir's files before the
    second build, after it, the download_dir)."""
    from pipeline.dag import load_dag
    from pipeline.executors.local import LocalExecutor
    from pipeline.runner import run

    root = tmp_path_factory.mktemp("codecs")
    downloads, outs, states = root / "downloads", {}, []
    for name in ("dac_24khz", "mimi"):
        states.append(files_state(downloads) if downloads.exists() else {})
        outs[name] = root / name
        overrides = [f"source.download_dir={downloads}", "codec.weights=random", f"codec.name={name}"]
        dag = load_dag(REPO / "dags/sample.yaml", overrides, out=str(outs[name]))
        run(dag, progress=False, executor=LocalExecutor(threads=2))
    return outs, states[1], files_state(downloads), downloads


@pytest.fixture(scope="session")
def trained(built_corpus, tmp_path_factory):
    """(corpus dir, AR checkpoint, NAR checkpoint, prompt wav): tiny models trained 5 steps each on
    the built corpus (valle-synth and valle-eval tests share them)."""
    import numpy as np
    import soundfile as sf

    from trainer.config import load_config
    from trainer.train import train

    corpus = str(built_corpus[0].out)
    root = tmp_path_factory.mktemp("synth")
    paths = []
    for kind in ("ar", "nar"):
        out = root / kind
        cfg = load_config(
            REPO / f"trainer/configs/{kind}-tiny.yaml",
            [f"run.out={out}", "run.max_steps=5", "run.checkpoint_every=5", "run.eval_every=1000", "data.workers=0"],
        )
        train(cfg, [corpus], allow_random_codec=True)
        paths.append(out / "checkpoint-5.pt")
    # 1.5 s stereo at 16 kHz (exercises the mono mix and the resampling): a tone plus noise.
    t = np.arange(int(1.5 * 16000)) / 16000
    rng = np.random.default_rng(0)
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.02 * rng.standard_normal(t.size)
    prompt = root / "prompt.wav"
    sf.write(prompt, np.stack([tone, 0.5 * tone], axis=1).astype(np.float32), 16000)
    return corpus, paths[0], paths[1], prompt


@pytest.fixture(scope="session")
def lhotse_sample(tmp_path_factory):
    """The bundled lhotse sample (sample/lhotse/) built by dags/sample-lhotse.yaml as shipped, but
    for a random-init codec and an output folder here: (dag, run summary), read-only."""
    from pipeline.dag import load_dag
    from pipeline.executors.local import LocalExecutor
    from pipeline.runner import run

    out = tmp_path_factory.mktemp("sample-lhotse") / "out"
    dag = load_dag(REPO / "dags/sample-lhotse.yaml", ["codec.weights=random"], out=str(out))
    return dag, run(dag, progress=False, executor=LocalExecutor(threads=2))


@pytest.fixture(scope="session")
def emilia_sample(tmp_path_factory):
    """The Emilia look-alike (sample/emilia.py: 3 tars, one utterance per "recording", ids like
    EN_B00000_S00001_W000000, 4 defects) built from a folder of its tars: (out, its files)."""
    from pipeline.dag import load_dag
    from pipeline.executors.local import LocalExecutor
    from pipeline.runner import run
    from sample.emilia import write_emilia
    from tests.test_source_emilia import emilia_dag

    folder = tmp_path_factory.mktemp("emilia-sample")
    lookalike = write_emilia(folder / "site", tars=3)
    dag = load_dag(emilia_dag(folder, {"audio_dir": str(lookalike.folder)}))
    run(dag, progress=False, executor=LocalExecutor(threads=2))
    return dag.out, lookalike
