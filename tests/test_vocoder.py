"""Vocos from a local folder decodes the corpus's codes (a tiny Vocos of the real architecture with
random weights, built from the published config's layout); mismatched codebooks, bandwidths and
classes outside the vocos package are refused. No network: nothing is fetched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from tokens.codec import CodecEncoder
from tokens.codec_settings import CodecConfig
from tokens.stack import import_without_torchaudio
from tokens.vocoder import VocoderError, VocosDecoder, decoder_for


def tiny_config(**backbone) -> dict:
    """The published EnCodec Vocos config's layout (backbone 384 x 8 layers there), made small."""
    return {
        "feature_extractor": {
            "class_path": "vocos.feature_extractors.EncodecFeatures",
            "init_args": {"encodec_model": "encodec_24khz", "bandwidths": [1.5, 3.0, 6.0, 12.0]},
        },
        "backbone": {
            "class_path": "vocos.models.VocosBackbone",
            "init_args": {
                "input_channels": 128,
                "dim": 32,
                "intermediate_dim": 64,
                "num_layers": 1,
                "adanorm_num_embeddings": 4,
                **backbone,
            },
        },
        "head": {"class_path": "vocos.heads.ISTFTHead", "init_args": {"dim": 32, "n_fft": 1280, "hop_length": 320}},
    }


@pytest.fixture(scope="module")
def codec():
    encoder = CodecEncoder(CodecConfig(weights="random", bandwidth=6.0))
    encoder.setup()
    return encoder


def write_vocos(folder, codec, config=None, codebooks=None):
    config = config or tiny_config()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    import_without_torchaudio("vocos")
    from vocos.heads import ISTFTHead
    from vocos.models import VocosBackbone

    torch.manual_seed(0)
    state = {f"backbone.{k}": v for k, v in VocosBackbone(**config["backbone"]["init_args"]).state_dict().items()}
    state |= {f"head.{k}": v for k, v in ISTFTHead(**config["head"]["init_args"]).state_dict().items()}
    # The published checkpoint holds the codebooks of all 16 quantizers of the 12 kbps codec.
    books = codec.codebooks() if codebooks is None else codebooks
    state["feature_extractor.codebook_weights"] = torch.cat([books, torch.randn(8 * 1024, 128)])
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def test_vocos_decodes_codes_to_24khz_audio(tmp_path, codec):
    vocos = decoder_for("vocos", codec, 6.0, str(write_vocos(tmp_path / "vocos", codec)))
    assert isinstance(vocos, VocosDecoder) and vocos.bandwidth_id == 2
    codes = np.random.default_rng(0).integers(0, 1024, size=(8, 30))
    wave = vocos.decode(codes)
    assert wave.dtype == np.float32 and wave.shape == (30 * 320,) and np.isfinite(wave).all()
    assert np.abs(wave).max() > 0
    other = codes.copy()
    other[3] = (other[3] + 1) % 1024  # every codebook reaches the audio
    assert not np.allclose(vocos.decode(other), wave)
    assert decoder_for("encodec", codec, 6.0) is codec


def test_vocos_for_other_codes_is_refused(tmp_path, codec):
    with pytest.raises(VocoderError, match="other EnCodec weights"):
        VocosDecoder(write_vocos(tmp_path / "a", codec, codebooks=torch.randn(8 * 1024, 128)), codec, 6.0)
    with pytest.raises(VocoderError, match="kbps"):
        VocosDecoder(write_vocos(tmp_path / "b", codec), codec, 24.0)
    config = tiny_config()
    config["head"]["class_path"] = "os.system"
    (tmp_path / "b" / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(VocoderError, match="not a Vocos backbone or head"):
        VocosDecoder(tmp_path / "b", codec, 6.0)
    with pytest.raises(VocoderError, match="needs --vocos"):
        decoder_for("vocos", codec, 6.0)
    with pytest.raises(VocoderError, match="config.yaml"):
        VocosDecoder(tmp_path / "missing", codec, 6.0)
