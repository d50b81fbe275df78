"""The `lhotse` source kind: manifests from lhotse's own classes and recipes, both forms, any rate,
channel and format libsndfile reads, every bad input a counted reject; a manifest that is not
lhotse's stops the run before anything starts."""

from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import yaml

from pipeline.dag import DagError, load_dag
from pipeline.encode.segment import segment_recording
from pipeline.executors.local import LocalExecutor
from pipeline.fetch.transfer_pools import ThreadTasks
from pipeline.inspect.report import collect
from pipeline.inspect.status import corpus_status
from pipeline.inspect.verify import verify
from pipeline.plan import recordings_table
from pipeline.plan.parse_pool import ProcessParsers, SerialParsers
from pipeline.plan.subsets import plan_subset, plan_subsets, read_unit_cuts
from pipeline.runner import run
from pipeline.sources import kind_of
from tests.conftest import REPO
from tokens.text import normalize_text

lhotse = pytest.importorskip("lhotse")
from lhotse import AudioSource, CutSet, MonoCut, Recording, RecordingSet, SupervisionSegment, SupervisionSet  # noqa: E402

WORDS = "the quick brown fox jumps over a lazy dog while seven bright stars shine".split()


def speech(seconds: float, rate: int, seed: int, channels: int = 1) -> np.ndarray:
    """Noisy voiced tones that change every 0.2 s: audio the codec takes, nothing more."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    pitch = np.repeat(rng.uniform(120, 300, int(seconds * 5) + 1), int(rate * 0.2))[: len(t)]
    wave = 0.3 * np.sin(2 * np.pi * np.cumsum(pitch) / rate) + 0.02 * rng.standard_normal(len(t))
    wave = wave.astype(np.float32)
    return np.stack([wave * (c + 1) / channels for c in range(channels)], axis=1) if channels > 1 else wave


def sentence(seed: int) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(WORDS, 5)).capitalize() + "."


def dag_file(tmp_path: Path, manifests: Path, **sections) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    dag = {
        "name": "lhotse-test",
        "source": {"kind": "lhotse", "manifests": str(manifests), **sections.pop("source", {})},
        "plan": {"unit_hours": 0.001},
        "segment": {"min_duration": 0.5, "max_duration": 20.0},
        "text": {"bpe": {"vocab_size": 40}},
        "filter": {"max_text_cer": None},
        "codec": {"weights": "random"},
        "output": {"dir": str(tmp_path / "out"), "formats": ["parquet"], "target_shard_mb": 0.05},
        **sections,
    }
    path = tmp_path / "lhotse.yaml"
    path.write_text(yaml.safe_dump(dag, sort_keys=False))
    return path


def built(out: Path, index: dict) -> dict[str, dict]:
    """cut id -> its Parquet row (codes left out)."""
    rows = {}
    for shard in index["shards"]:
        for row in pq.read_table(
            out / shard["path"], columns=["id", "speaker", "subset", "duration", "text"]
        ).to_pylist():
            rows[row["id"]] = row
    return rows


# ---- the recipe test: LibriTTS-R as lhotse prepares it ------------------------------------------


def write_librittsr(root: Path, parts: dict[str, list[tuple[str, str]]]) -> None:
    """A LibriTTS-R-shaped tree (<part>/<speaker>/<chapter>/<utt>.wav + .trans.tsv + .book.tsv),
    as prepare_librittsr reads it: the original text upper-cased, the normalized one as written."""
    seed = 0
    for part, chapters in parts.items():
        for speaker, chapter in chapters:
            folder = root / part / speaker / chapter
            folder.mkdir(parents=True)
            trans, book = [], []
            for n in range(2):
                seed += 1
                utt = f"{speaker}_{chapter}_{n:06d}_000000"
                sf.write(folder / f"{utt}.wav", speech(0.8 + 0.3 * n, 24000, seed), 24000)
                text = sentence(seed)
                (folder / f"{utt}.normalized.txt").write_text(text)
                (folder / f"{utt}.original.txt").write_text(text.upper())
                trans.append(f"{utt}\t{text.upper()}\t{text}")
                book.append(f"{utt}\t{text.upper()}\t{text}\t{n}\t12.5")
            (folder / f"{speaker}_{chapter}.trans.tsv").write_text("\n".join(trans) + "\n")
            (folder / f"{speaker}_{chapter}.book.tsv").write_text("\n".join(book) + "\n")


def test_a_librittsr_recipe_output_is_built_as_lhotse_reads_it(tmp_path):
    from lhotse.recipes import prepare_librittsr

    corpus = tmp_path / "LibriTTS_R"
    write_librittsr(corpus, {"train-clean-100": [("19", "198"), ("26", "495")], "dev-clean": [("84", "121")]})
    manifests = tmp_path / "manifests"
    prepared = prepare_librittsr(corpus, dataset_parts=["train-clean-100", "dev-clean"], output_dir=manifests)
    assert sorted(p.name for p in manifests.iterdir())[0] == "libritts_recordings_dev-clean.jsonl.gz"

    dag = load_dag(dag_file(tmp_path, manifests))
    assert dag.subsets.train == ["train_clean_100"] and dag.subsets.dev == ["dev_clean"]
    summary = run(dag, progress=False, executor=LocalExecutor(threads=1))
    rows = built(dag.out, summary.index)

    expected, original = {}, {}
    for part, subset in (("train-clean-100", "train_clean_100"), ("dev-clean", "dev_clean")):
        cuts = CutSet.from_manifests(**prepared[part]).trim_to_supervisions(keep_overlapping=False)
        for cut in cuts:
            sup = cut.supervisions[0]
            expected[cut.id] = {
                "id": cut.id,
                "speaker": sup.speaker,
                "subset": subset,
                "duration": pytest.approx(cut.duration, abs=1e-4),
                "text": normalize_text(sup.text),
            }
            original[cut.id] = normalize_text(sup.custom["orig_text"])
    assert rows == expected and len(rows) == 6
    assert summary.index["provenance"]["source"]["kind"] == "lhotse"
    assert set(summary.index["provenance"]["source"]["manifests"]) == {p.name for p in manifests.iterdir()}

    again = run(load_dag(dag_file(tmp_path, manifests)), progress=False, executor=LocalExecutor(threads=1))
    assert again.skipped == again.units and again.codec_forward_passes == 0  # the recordings table reused

    text = {"field": "orig_text", "bpe": {"vocab_size": 40}}  # a custom field of LibriTTS's supervisions
    other = run(load_dag(dag_file(tmp_path, manifests, text=text)), progress=False, executor=LocalExecutor(threads=1))
    assert {i: row["text"] for i, row in built(dag.out, other.index).items()} == original != {}
    assert other.codec_forward_passes == 0


# ---- both forms, rates, channels, formats and every reject ---------------------------------------


def corpus(root: Path) -> tuple[RecordingSet, SupervisionSet]:
    """Recordings of every kind the kind reads, and some it must refuse, with their supervisions."""
    audio = root / "audio"
    audio.mkdir(parents=True)
    sf.write(audio / "long.flac", speech(4.0, 16000, 1), 16000)  # two utterances in one recording
    sf.write(audio / "rate.wav", speech(1.5, 22050, 2), 22050)
    sf.write(audio / "stereo.wav", speech(1.5, 16000, 3, channels=2), 16000)
    sf.write(audio / "speech.mp3", speech(1.5, 16000, 4), 16000, format="MP3")
    sf.write(audio / "speech.opus", speech(1.5, 16000, 5), 16000, format="OGG", subtype="OPUS")
    names = ("long.flac", "rate.wav", "stereo.wav", "speech.mp3", "speech.opus")
    recordings = [Recording.from_file(audio / name, recording_id=name.replace(".", "_")) for name in names]
    (audio / "noise.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt " + bytes(200))  # no decoder reads it
    missing = Recording.from_file(audio / "rate.wav", recording_id="gone")
    missing.sources[0].source = str(audio / "gone.wav")
    folder = Recording.from_file(audio / "rate.wav", recording_id="folder")
    folder.sources[0].source = "audio"  # a bad path: a folder, relative to the audio root
    noise = Recording.from_file(audio / "rate.wav", recording_id="noise")
    noise.sources[0].source = "audio/noise.wav"
    fast = Recording.from_file(audio / "rate.wav", recording_id="fast").perturb_speed(1.1, affix_id=False)
    # one file per channel, as lhotse writes multi-microphone corpora: channel 1 is stereo.wav's first
    pair = Recording.from_file(audio / "long.flac", recording_id="pair")
    pair.sources.append(AudioSource("file", [1], str(audio / "stereo.wav")))
    pair.duration, pair.num_samples = 4.0, 64000
    recordings += [missing, folder, noise, fast, pair]
    sups = [
        SupervisionSegment("long-a", "long_flac", 0.2, 1.5, text="First of two.", speaker="s1", language="English"),
        SupervisionSegment(
            "long-b", "long_flac", 2.0, 1.8, text="Second of two.", speaker="s1", custom={"alt": "Other words."}
        ),
        SupervisionSegment("rate", "rate_wav", 0.0, 1.5, text=sentence(2), speaker="s2"),
        SupervisionSegment("stereo", "stereo_wav", 0.0, 1.5, channel=1, text=sentence(3), speaker="s3"),
        SupervisionSegment("mp3", "speech_mp3", 0.0, 1.4, text=sentence(4), speaker="s4"),
        SupervisionSegment("opus", "speech_opus", 0.0, 1.4, text=sentence(10), speaker="s5"),
        SupervisionSegment("gone", "gone", 0.0, 1.0, text=sentence(5)),
        SupervisionSegment("folder", "folder", 0.0, 1.0, text=sentence(6)),
        SupervisionSegment("noise", "noise", 0.0, 1.0, text=sentence(7)),
        SupervisionSegment("outside", "rate_wav", 0.5, 3.0, text=sentence(8)),
        SupervisionSegment("empty", "rate_wav", 0.0, 1.0, text=""),
        SupervisionSegment("both", "stereo_wav", 0.0, 1.0, channel=[0, 1], text=sentence(9)),
        SupervisionSegment("fast", "fast", 0.0, 1.0, text=sentence(11)),
        SupervisionSegment("pair", "pair", 0.0, 1.5, channel=[1], text=sentence(12)),
        SupervisionSegment("pair-left", "pair", 2.0, 1.5, channel=0, text=sentence(13)),  # long.flac only
    ]
    return RecordingSet.from_recordings(recordings), SupervisionSet.from_segments(sups)


BUILT = {"long-a", "long-b", "rate", "stereo", "mp3", "opus", "pair", "pair-left"}  # the corpus's good samples


def write_both_forms(root: Path) -> tuple[Path, Path, CutSet]:
    """The same corpus as a cuts manifest (one cut per recording, with all its supervisions) and
    as recordings + supervisions; each with a line lhotse refuses."""
    recordings, sups = corpus(root)
    cuts_dir, split_dir = root / "cuts", root / "split"
    cuts_dir.mkdir(), split_dir.mkdir()
    cuts = CutSet.from_manifests(recordings, sups)
    cuts.to_file(cuts_dir / "demo_cuts_train.jsonl.gz")
    recordings.to_file(split_dir / "demo_recordings_train.jsonl.gz")
    sups.to_file(split_dir / "demo_supervisions_train.jsonl.gz")
    orphan = SupervisionSegment("orphan", "nowhere", 0.0, 1.0, text="No recording.")
    for path, extra in (
        (cuts_dir / "demo_cuts_train.jsonl.gz", {"id": "x", "start": 0, "duration": 1, "channel": 0, "oops": 1}),
        (split_dir / "demo_supervisions_train.jsonl.gz", orphan.to_dict()),
    ):
        with gzip.open(path, "at") as f:
            f.write(json.dumps(extra) + "\n" + json.dumps({**orphan.to_dict(), "id": "y", "shape": 3}) + "\n")
    return cuts_dir, split_dir, cuts


def planned(tmp_path: Path, manifests: Path, name: str) -> tuple[dict, dict]:
    """(cut id -> compact cut, reason -> rejected ids, None where unknown) of `train`, planned only."""
    (tmp_path / name).mkdir()
    dag = load_dag(dag_file(tmp_path / name, manifests))
    out = dag.out
    with kind_of(dag.source).open_source(dag, out, False, ThreadTasks()) as source:
        [plan] = plan_subsets(source.manifests(), dag.subsets.roles(), out, 0.001, progress=False)
    cuts = {c["id"]: c for unit in plan.units for c in read_unit_cuts(out, unit)}
    rejects = {}
    for r in plan.rejects:
        rejects.setdefault(r["reason"], []).append(r["cut_id"])
    return cuts, rejects


def test_both_forms_plan_the_same_cuts_and_refuse_the_same_lines(tmp_path):
    cuts_dir, split_dir, cutset = write_both_forms(tmp_path / "corpus")
    from_cuts, refused_cuts = planned(tmp_path, cuts_dir, "a")
    from_split, refused_split = planned(tmp_path, split_dir, "b")

    def by_window(cuts):
        return {(c["recording_id"], c["start"], c["duration"]): {**c, "id": None} for c in cuts.values()}

    assert by_window(from_cuts) == by_window(from_split) and len(from_split) == 12
    # a cut with one supervision keeps its id; each of several is named by its supervision's
    named = {c.id if len(c.supervisions) == 1 else s.id for c in cutset for s in c.supervisions}
    fast = next(c.id for c in cutset if c.supervisions[0].id == "fast")
    assert set(from_cuts) == named - {"outside", "both", fast} and {"long-a", "long-b", "rate"} <= set(from_cuts)
    assert "mp3" not in from_cuts and "mp3" in from_split  # a single supervision's cut keeps the cut's id
    long_b = from_split["long-b"]
    assert long_b["start"] == 2.0 and long_b["duration"] == 1.8 and long_b["speaker"] == "s1"
    assert long_b["texts"] == {"text": "Second of two.", "alt": "Other words."}
    assert from_cuts["long-b"] == long_b and from_split["long-a"]["language"] == "English"
    assert from_split["stereo"]["channel"] == 1
    assert from_split["pair"]["channel"] == 0 and from_split["pair"]["audio"].endswith("stereo.wav")
    assert refused_split["unsupported_recording"] == ["fast"] and refused_cuts["unsupported_recording"] == [fast]
    assert from_split["folder"]["audio"] == str(Path.cwd() / "audio")  # relative: under the audio root
    assert refused_split["supervision_outside_recording"] == ["outside"]
    assert refused_split["multi_channel_supervision"] == ["both"]
    assert refused_split["missing_recording"] == ["orphan"]
    assert refused_cuts["multi_channel_supervision"] == ["both"]
    assert len(refused_cuts["bad_manifest_line"]) == 2 and len(refused_split["bad_manifest_line"]) == 1


def test_worker_processes_join_with_the_recordings_table_as_the_planning_thread_does(tmp_path):
    """The supervisions' parser pickles into spawned workers, each opening the table itself."""
    _, split_dir, _ = write_both_forms(tmp_path / "corpus")
    dag = load_dag(dag_file(tmp_path, split_dir))
    plans = []
    for n, parsers in enumerate((SerialParsers(block_bytes=600), ProcessParsers(2, block_bytes=600))):
        with parsers, kind_of(dag.source).open_source(dag, tmp_path / f"out{n}", False, ThreadTasks()) as source:
            plan = plan_subset(
                source.manifests()["train"], "train", "train", tmp_path / f"out{n}", 0.001, False, (), parsers
            )
        plans.append(([(u.name, u.sha256) for u in plan.units], plan.rejects))
    assert plans[0] == plans[1] and len(plans[0][0]) > 1
    tables = [Path(table) for _, _, table in recordings_table._CONNECTIONS if table.startswith(str(tmp_path))]
    opened_here = {table.parent.parent.parent.name for table in tables}
    assert opened_here == {"out0"}  # out1's joins ran in the workers
    store = pickle.loads(pickle.dumps(source.audio_store()))  # Ray ships it to every worker
    assert store.read_bytes(str(tmp_path / "corpus/audio/rate.wav"))[:4] == b"RIFF"


def test_rates_channels_formats_and_bad_audio_are_built_or_counted(tmp_path):
    _, split_dir, _ = write_both_forms(tmp_path / "corpus")
    dag = load_dag(dag_file(tmp_path, split_dir, source={"audio_root": str(tmp_path / "corpus")}))
    summary = run(dag, progress=False, executor=LocalExecutor(threads=1))
    rows = built(dag.out, summary.index)
    assert set(rows) == BUILT
    assert rows["rate"]["duration"] == pytest.approx(1.5) and rows["long-b"]["text"] == "Second of two."
    reasons = summary.index["rejects"]["by_reason"]
    assert reasons["missing_audio"] == 2  # gone.wav, and a folder where a file should be
    assert reasons["undecodable_audio"] == 1 and reasons["empty_text"] == 1
    assert reasons["supervision_outside_recording"] == 1 and reasons["missing_recording"] == 1
    details = [json.loads(line) for line in (dag.out / "rejects.jsonl").read_text().splitlines()]
    assert any(r["reason"] == "undecodable_audio" and "WAV" in r["detail"] for r in details)
    # the tools that inspect a corpus read this one as any other
    assert verify(dag.out) == []
    status = corpus_status(dag.out)
    assert status["complete"] and status["subsets"]["train"]["shards_done"] == summary.units
    stats = collect(dag.out, progress=False)
    assert stats["rejects"]["by_reason"]["supervision_outside_recording"] == 1


@pytest.fixture
def served(tmp_path):
    """A folder served over HTTP on 127.0.0.1: (folder, its URL)."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    folder = tmp_path / "site"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()


def test_a_url_folder_is_downloaded_and_relative_audio_read_from_a_url_root(tmp_path, served, ray_address):
    """On Ray: downloads as Ray tasks, the audio store shipped to unit tasks that read over HTTP."""
    site, url = served
    write_both_forms(site)
    source = {"prefix": "demo", "form": "recordings", "audio_root": url}
    with pytest.raises(DagError, match="cannot be listed"):
        load_dag(dag_file(tmp_path, f"{url}split", source=source))
    ray = {"units_in_flight": 2, "cpus_per_codec_worker": 2}
    dag = load_dag(dag_file(tmp_path, f"{url}split", source=source, subsets={"train": ["train"]}, ray=ray))
    summary = run(dag, progress=False)
    assert set(built(dag.out, summary.index)) == BUILT
    assert (dag.out / "downloads" / "demo_supervisions_train.jsonl.gz").is_file()
    reasons = summary.index["rejects"]["by_reason"]
    # audio/noise.wav came over HTTP and is refused by its format; "audio" is a folder's listing
    assert reasons["missing_audio"] == 1 and reasons["undecodable_audio"] == 2

    (site / "csv").mkdir()  # a URL folder's manifest is judged once downloaded, before it is planned
    (site / "csv/demo_cuts_train.jsonl.gz").write_bytes(gzip.compress(b"utt1,hello world,1.5\n"))
    source = {"prefix": "demo", "audio_root": url}
    bad = load_dag(dag_file(tmp_path / "csv", f"{url}csv", source=source, subsets={"train": ["train"]}, ray=ray))
    with pytest.raises(DagError, match="not a lhotse manifest: its first line is not JSON"):
        run(bad, progress=False)
    assert not (bad.out / "plan" / "train.json").exists()


def test_a_stereo_file_gives_the_supervision_s_channel():
    data = speech(1.0, 16000, 1, channels=2)
    data[:, 0] = 0
    from io import BytesIO

    buf = BytesIO()
    sf.write(buf, data, 16000, format="WAV", subtype="FLOAT")
    cut = {"id": "c", "recording_id": "r", "audio": "x.wav", "start": 0.0, "duration": 1.0, "channel": 1}
    [segment], _ = segment_recording([cut], lambda _: buf.getvalue(), 0.5, 20)
    np.testing.assert_array_equal(segment.audio, data[:, 1])
    _, [rejected] = segment_recording([{**cut, "channel": 2}], lambda _: buf.getvalue(), 0.5, 20)
    assert rejected["reason"] == "missing_channel"


# ---- what stops a run before it starts -----------------------------------------------------------


def test_a_manifest_that_is_not_lhotse_s_stops_before_anything_starts(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    with gzip.open(folder / "x_cuts_train.jsonl.gz", "wt") as f:
        f.write("utt1,hello world,1.5\n")
    with pytest.raises(DagError, match="not a lhotse manifest: its first line is not JSON"):
        load_dag(dag_file(tmp_path, folder))
    (folder / "x_cuts_train.jsonl.gz").write_bytes(gzip.compress(json.dumps({"path": "a.wav", "text": "hi"}).encode()))
    with pytest.raises(DagError, match="not a lhotse cuts manifest: its first line is not a cut"):
        load_dag(dag_file(tmp_path, folder))
    assert not (tmp_path / "out").exists()


def test_parts_are_found_named_and_given_roles(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    for part in ("train-clean-100", "train-other-500", "dev-clean", "test-other"):
        with gzip.open(folder / f"libritts_cuts_{part}.jsonl.gz", "wt") as f:
            f.write(json.dumps(MonoCut("c", 0, 1, 0).to_dict()) + "\n")
    dag = load_dag(dag_file(tmp_path, folder))
    assert dag.subsets.train == ["train_clean_100", "train_other_500"]
    assert (dag.subsets.dev, dag.subsets.test) == (["dev_clean"], ["test_other"])
    assert dag.source.parts["dev_clean"] == "dev-clean" and dag.source.prefix == "libritts"

    chosen = load_dag(dag_file(tmp_path, folder, subsets={"train": ["dev_clean"]}))
    assert chosen.subsets.roles() == {"dev_clean": "train"}
    with pytest.raises(DagError, match="no part of .* dev_clean"):
        load_dag(dag_file(tmp_path, folder, subsets={"train": ["dev_other"]}))

    clean = (folder / "libritts_cuts_dev-clean.jsonl.gz").read_bytes()
    (folder / "libritts_cuts_dev_clean.jsonl.gz").write_bytes(clean)
    with pytest.raises(DagError, match="would both be subset 'dev_clean'"):
        load_dag(dag_file(tmp_path, folder))
    (folder / "other_cuts_a.jsonl.gz").write_bytes(b"")
    with pytest.raises(DagError, match="several prefixes"):
        load_dag(dag_file(tmp_path, folder))
    plain = tmp_path / "plain"  # lhotse writes no prefix when given none
    plain.mkdir()
    (plain / "cuts_dev-clean.jsonl.gz").write_bytes(clean)
    (plain / "cuts_train.jsonl").write_bytes(gzip.decompress(clean))
    (plain / "cuts_train.jsonl.gz").write_bytes(clean)  # read before its .jsonl twin
    dag = load_dag(dag_file(tmp_path, plain))
    assert dag.source.prefix == "" and dag.subsets.roles() == {"train": "train", "dev_clean": "dev"}
    assert kind_of(dag.source).manifest_files(dag.source, "train") == {"cuts": str(plain / "cuts_train.jsonl.gz")}
    (tmp_path / "my-corpus.jsonl.gz").write_bytes(clean)  # one file, named as its owner likes
    single = load_dag(dag_file(tmp_path, tmp_path / "my-corpus.jsonl.gz"))
    assert single.subsets.roles() == {"my_corpus": "train"}
    assert kind_of(single.source).manifest_files(single.source, "my-corpus") == {"cuts": single.source.manifests}
    with pytest.raises(DagError, match="cannot be listed: set source.prefix and list the parts"):
        load_dag(dag_file(tmp_path, "https://example.org/manifests"))


def test_the_shipped_dag_builds_a_folder_given_with_set(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    with gzip.open(folder / "vctk_cuts_all.jsonl.gz", "wt") as f:
        f.write(json.dumps(MonoCut("c", 0, 1, 0).to_dict()) + "\n")
    dag = load_dag(REPO / "dags/lhotse.yaml", [f"source.manifests={folder}"], out=str(tmp_path / "out"))
    assert dag.source.KIND == "lhotse" and dag.subsets.train == ["all"] and dag.text.field == "text"
    with pytest.raises(DagError, match="source.manifests: is required: --set source.manifests=DIR"):
        load_dag(REPO / "dags/lhotse.yaml")


def test_s3_audio_is_read_and_a_missing_object_is_missing_audio(tmp_path, s3):
    """lhotse `url` sources on s3:// (and an s3:// audio_root) read through storage.remote."""
    from pipeline.fetch.audio_store import MissingAudio
    from pipeline.fetch.path_audio import PathAudioStore

    flac = tmp_path / "a.flac"
    sf.write(flac, np.zeros(1600, dtype=np.int16), 16000)
    s3.create_bucket(Bucket="audio")
    s3.upload_file(str(flac), "audio", "spk/a.flac")
    store = PathAudioStore("s3://audio/")
    assert store.read_bytes("s3://audio/spk/a.flac") == flac.read_bytes()  # a url source
    assert store.read_bytes("spk/a.flac") == flac.read_bytes()  # relative, under an s3 root
    with pytest.raises(MissingAudio, match="s3://audio/spk/gone.flac"):
        store.read_bytes("spk/gone.flac")
