"""The bundled lhotse sample (sample/lhotse/) is lhotse recipe output as its README says: every
manifest loads with lhotse, the good ones make a CutSet, the rates, containers, channels, the
long recording and the bad path are where they should be, and its bytes are the committed ones."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

from sample.make_sample import tools_match

REPO = Path(__file__).resolve().parents[1]
LHOTSE = REPO / "sample" / "lhotse"
PARTS = ("train", "dev", "test")
BAD_PATH = "1580_0004"  # the recording whose file is not there


def committed_sums() -> dict[str, str]:
    return dict(reversed(line.split("  ", 1)) for line in (LHOTSE / "SHA256SUMS").read_text().splitlines())


def manifest(kind: str, part: str) -> Path:
    return LHOTSE / "manifests" / f"lookalike_{kind}_{part}.jsonl.gz"


def load(part: str) -> tuple[RecordingSet, SupervisionSet]:
    recordings = RecordingSet.from_file(manifest("recordings", part))
    return recordings, SupervisionSet.from_file(manifest("supervisions", part))


def test_files_match_their_checksums():
    sums = committed_sums()
    on_disk = {p.relative_to(LHOTSE).as_posix() for p in LHOTSE.rglob("*") if p.is_file()} - {"SHA256SUMS"}
    assert set(sums) == on_disk
    for rel, digest in sums.items():
        assert hashlib.sha256((LHOTSE / rel).read_bytes()).hexdigest() == digest, rel
    assert sum((LHOTSE / rel).stat().st_size for rel in sums) < 1_500_000


def test_manifests_are_lhotse_recipe_output_part_by_part():
    names = sorted(p.name for p in (LHOTSE / "manifests").iterdir())
    assert names == sorted(f"lookalike_{k}_{p}.jsonl.gz" for k in ("recordings", "supervisions") for p in PARTS)
    counts, speakers = {}, {}
    for part in PARTS:
        # line by line, as lhotse's own classes read them
        for kind, cls in (("recordings", Recording), ("supervisions", SupervisionSegment)):
            with gzip.open(manifest(kind, part), "rt", encoding="utf-8") as f:
                for line in f:
                    assert cls.from_dict(json.loads(line)).id
        recs, sups = load(part)
        assert {s.recording_id for s in sups} == set(recs.ids)
        for rec in recs:
            (src,) = rec.sources
            assert src.type == "file" and not Path(src.source).is_absolute()
            assert src.source == f"audio/{rec.id.split('_')[0]}/{rec.id}.{src.source.rsplit('.', 1)[1]}"
        for s in sups:
            assert s.text and s.language == "English" and s.speaker == s.recording_id.split("_")[0]
            assert s.custom["orig_text"] and s.gender in ("F", "M")
        counts[part] = (len(recs), len(sups))
        speakers[part] = {s.speaker for s in sups}
    assert counts == {"train": (9, 11), "dev": (3, 3), "test": (3, 3)}
    assert speakers["train"] == speakers["dev"] == {"1580", "2961", "4446"}
    assert speakers["test"] == {"6829"}  # held out: heard in no other part


def test_manifests_are_the_bytes_lhotse_writes_with_a_zero_timestamp(tmp_path):
    for part in PARTS:
        for kind, manifest_set in zip(("recordings", "supervisions"), load(part)):
            committed = manifest(kind, part).read_bytes()
            assert committed[4:8] == b"\0\0\0\0"  # gzip MTIME
            again = tmp_path / manifest(kind, part).name  # same name: gzip keeps it in the header
            manifest_set.to_file(again)
            rewritten = again.read_bytes()
            assert rewritten[:4] + b"\0\0\0\0" + rewritten[8:] == committed


def test_text_and_its_custom_written_form():
    differ = {}
    for part in PARTS:
        for s in load(part)[1]:
            if s.text != s.custom["orig_text"]:
                differ[s.id] = (s.text, s.custom["orig_text"])
    assert set(differ) == {"1580_0002", "2961_0002", "4446_0100_0", "6829_0002"}
    said, written = "Doctor Hale counted twelve gulls on the rail.", "Dr. Hale counted 12 gulls on the rail."
    assert differ["1580_0002"] == (said, written)


def test_good_manifests_make_a_cutset_whose_audio_loads():
    supervised = {}
    for part in PARTS:
        recs, sups = load(part)
        recs = recs.filter(lambda r: r.id != BAD_PATH).with_path_prefix(LHOTSE)
        sups = sups.filter(lambda s: s.recording_id != BAD_PATH)
        cuts = CutSet.from_manifests(recordings=recs, supervisions=sups)
        for cut in cuts:
            audio = cut.load_audio()
            assert audio.shape[-1] == cut.recording.num_samples and np.abs(audio).max() > 0.1
            for s in cut.supervisions:
                assert 0 <= s.start and s.end <= cut.duration + 1e-6
                supervised[s.id] = cut.sampling_rate
    assert len(supervised) == 16  # all 17 supervisions but the bad path's
    assert sorted(set(supervised.values())) == [16000, 22050]


def test_rates_containers_and_channels_are_where_the_readme_says():
    recs = {r.id: r for part in PARTS for r in load(part)[0]}
    want = {
        "flac16": {"1580_0001", "1580_0002", "1580_0005", "4446_0100", "6829_0001", "6829_0002"},
        "wav22": {"2961_0001", "2961_0002", "2961_0004"},
        "flac22": {"2961_0003", "4446_0001", "4446_0002", "6829_0003"},
        "mp322": {"1580_0003"},
    }
    for group, ids in want.items():
        fmt, rate = group[:-2], {"16": 16000, "22": 22050}[group[-2:]]
        for rid in ids:
            info = sf.info(LHOTSE / recs[rid].sources[0].source)
            assert (info.format, info.samplerate, info.frames) == (fmt.upper(), rate, recs[rid].num_samples), rid
            assert recs[rid].sampling_rate == rate
    assert set(recs) - set().union(*want.values()) == {BAD_PATH}

    # the mp3 decodes with soundfile, at its rate, to the samples its recording claims
    mp3 = recs["1580_0003"]
    audio, rate = sf.read(LHOTSE / mp3.sources[0].source, dtype="float32")
    assert rate == 22050 and audio.ndim == 1 and audio.size == mp3.num_samples and np.abs(audio).max() > 0.1

    # stereo: the supervision is on channel 1, the speech; channel 0 is faint noise only
    stereo = recs["2961_0003"]
    (sup,) = [s for s in load("train")[1] if s.recording_id == stereo.id]
    audio, _ = sf.read(LHOTSE / stereo.sources[0].source, dtype="int16")
    assert stereo.channel_ids == [0, 1] and sup.channel == 1 and audio.shape == (stereo.num_samples, 2)
    assert np.abs(audio[:, 0]).max() <= 16 and np.abs(audio[:, 1]).max() > 3000


def test_the_long_recording_holds_three_supervisions():
    recs, sups = load("train")
    (long,) = [r for r in recs if r.id == "4446_0100"]
    inside = sorted((s for s in sups if s.recording_id == long.id), key=lambda s: s.start)
    assert [s.id for s in inside] == ["4446_0100_0", "4446_0100_1", "4446_0100_2"]
    assert inside[0].start > 0.5 and inside[-1].end < long.duration
    assert all(a.end < b.start for a, b in zip(inside, inside[1:]))  # gaps between sentences
    audio, _ = sf.read(LHOTSE / long.sources[0].source, dtype="int16")
    for s in inside:  # speech inside each window, near-silence in the gaps
        assert np.abs(audio[round(s.start * 16000) : round(s.end * 16000)]).max() > 3000
    for a, b in zip(inside, inside[1:]):
        assert np.abs(audio[round(a.end * 16000) + 1 : round(b.start * 16000) - 1]).max() <= 16


def test_the_bad_path_is_the_only_missing_file():
    missing = [
        (part, r.id, r.sources[0].source)
        for part in PARTS
        for r in load(part)[0]
        if not (LHOTSE / r.sources[0].source).exists()
    ]
    assert missing == [("train", BAD_PATH, f"audio/1580/{BAD_PATH}.flac")]
    assert [s.id for s in load("train")[1] if s.recording_id == BAD_PATH] == [BAD_PATH]


def test_the_dag_names_the_lhotse_source_and_the_sample():
    path = REPO / "dags" / "sample-lhotse.yaml"
    raw = yaml.safe_load(path.read_text())
    source = raw["source"]
    assert source["kind"] == "lhotse"
    assert (path.parent / source["manifests"]).resolve() == LHOTSE / "manifests"
    assert (path.parent / source["audio_root"]).resolve() == LHOTSE
    assert raw["text"]["field"] == "text" and raw["output"]["dir"] == "out/sample-lhotse"
    assert path.read_text().startswith("#") and "valle-prep run dags/sample-lhotse.yaml" in path.read_text()


def test_the_dag_loads_with_roles_by_part_name():
    from pipeline.sources import KINDS

    if "lhotse" not in KINDS:
        pytest.skip("the lhotse source kind (pipeline/sources/lhotse.py) is not in pipeline.sources.KINDS yet")
    from pipeline.dag import load_dag

    dag = load_dag(REPO / "dags" / "sample-lhotse.yaml")
    assert dag.subsets.roles() == {"train": "train", "dev": "dev", "test": "test"}
    assert dag.text.field == "text"


@pytest.mark.skipif(
    not tools_match(), reason="sample/lhotse's bytes come from espeak-ng 1.51 and SoX 14.4.2 (sample/README.md)"
)
def test_make_lhotse_sample_rebuilds_the_bundled_bytes(tmp_path):
    from sample.make_lhotse_sample import build

    assert build(tmp_path) == committed_sums()
    assert (tmp_path / "SHA256SUMS").read_bytes() == (LHOTSE / "SHA256SUMS").read_bytes()
