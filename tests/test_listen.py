"""`valle-prep listen`: a sample's codes, found by cut id through lengths.parquet, decoded by the
corpus's EnCodec to a 24 kHz wav of frames x 320 samples; unknown and rejected ids say so."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from pipeline.cli import main
from pipeline.encode.codes_file import CodesFile
from pipeline.inspect.listen import ListenError, corpus_codec, find_sample, listen
from sample.compare import code_agreement


@pytest.fixture(scope="module")
def corpus(built_corpus):
    return built_corpus[0].out


def committed_codes(out, cut_id):
    for path in (out / "work/codes").glob("*.npz"):
        for found, _, codes in CodesFile(path):
            if found == cut_id:
                return codes
    raise AssertionError(f"{cut_id} has no committed codes")


def kept_cut(tiny_corpus, subset="small"):
    return next(t for t in tiny_corpus.cuts.values() if t.defect is None and t.manifest == subset)


def test_finds_the_sample_by_cut_id(corpus, tiny_corpus):
    for subset in ("small", "dev"):
        cut = kept_cut(tiny_corpus, subset)
        meta, codes = find_sample(corpus, cut.cut_id)
        assert meta["id"] == cut.cut_id
        np.testing.assert_array_equal(codes, committed_codes(corpus, cut.cut_id))


def test_a_corpus_over_http_is_listened_to_as_the_folder_is(corpus, tiny_corpus, tmp_path):
    """lengths.parquet read by ranges, the recording's shards only, and the rejects streamed."""
    from sample.http_mirror import HttpMirror

    cut = kept_cut(tiny_corpus)
    rejected = next(t for t in tiny_corpus.cuts.values() if t.defect == "asr_mismatch")
    with HttpMirror(corpus) as mirror:
        meta, codes = find_sample(mirror.base_url, cut.cut_id)
        with pytest.raises(ListenError, match=r"it was rejected \(text_mismatch: CER"):
            find_sample(mirror.base_url, rejected.cut_id)
        assert listen(mirror.base_url, cut.cut_id, tmp_path / "x.wav") == codes.shape[1] / 75
    assert meta["id"] == cut.cut_id
    np.testing.assert_array_equal(codes, committed_codes(corpus, cut.cut_id))


def test_listen_writes_a_24khz_wav_whose_codes_round_trip(corpus, tiny_corpus, tmp_path, capsys):
    cut = kept_cut(tiny_corpus)
    wav = tmp_path / "x.wav"
    assert main(["listen", str(corpus), cut.cut_id, "--out", str(wav)]) == 0
    assert f"wrote {wav}" in capsys.readouterr().out
    codes = committed_codes(corpus, cut.cut_id)
    audio, rate = sf.read(wav, dtype="float32")
    assert rate == 24000 and audio.ndim == 1
    assert len(audio) == codes.shape[1] * 320  # frames / 75 seconds
    # Re-encoding what was decoded gives codes of the same shape, and the same first-codebook code
    # far more often than unrelated codes would (1/1024). A random-init decoder is no inverse of
    # its encoder, so not all of them (seen: 31% of codebook 1 on this corpus).
    again = corpus_codec(corpus).encode([audio])[0]
    assert again.shape == codes.shape and np.isfinite(audio).all()
    assert code_agreement([codes], [again])[0] > 0.1


def test_unknown_and_rejected_cut_ids_are_named(corpus, tiny_corpus, tmp_path, capsys):
    with pytest.raises(ListenError, match="not found in any shard .*not among the rejects"):
        find_sample(corpus, "small/999/no_such_book/chapter_0")
    rejected = next(t for t in tiny_corpus.cuts.values() if t.defect == "asr_mismatch")
    with pytest.raises(ListenError, match=r"it was rejected \(text_mismatch: CER"):
        find_sample(corpus, rejected.cut_id)
    assert main(["listen", str(corpus), "small/999/x/y_0", "--out", str(tmp_path / "x.wav")]) == 2
    assert "is not in" in capsys.readouterr().err and not (tmp_path / "x.wav").exists()


def test_weights_other_than_the_corpus_are_refused(corpus, tiny_corpus, tmp_path):
    cut = kept_cut(tiny_corpus)
    index = json.loads((corpus / "index.json").read_text())
    assert index["provenance"]["codec"]["weights"] == "random"
    with pytest.raises(ListenError, match="does not exist|have sha256"):
        listen(corpus, cut.cut_id, tmp_path / "x.wav", weights=str(tmp_path / "missing.th"))
