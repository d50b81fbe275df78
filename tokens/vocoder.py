"""Decoders from codes to audio: EnCodec's own (the default) or Vocos, the decoder VALL-E 2 used.

In: (n_q, T) codes of the corpus's EnCodec. Out: float32 mono 24 kHz, T * 320 samples.

Vocos (Siuzdak 2023, the `vocos` package) is taken from a local folder holding the published
EnCodec variant as its model hub stores it (`config.yaml` + `pytorch_model.bin`; get it once with
`huggingface-cli download charactr/vocos-encodec-24khz --local-dir DIR`): nothing is fetched at
run time. Only its backbone and head are built from the folder. Its feature extractor would
download EnCodec, so codes are embedded here with the codebooks of the EnCodec the corpus was
encoded with; when the checkpoint carries codebooks (the published one does) they must equal
those, or the Vocos was trained for other codes and is refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml

from tokens.codec import CodecEncoder
from tokens.codecs import DEFAULT_CODEC, SPECS
from tokens.stack import import_without_torchaudio

ENCODEC = SPECS[DEFAULT_CODEC]  # Vocos decodes EnCodec 24 kHz codes

VOCOS_HUB_REPO = "charactr/vocos-encodec-24khz"
DECODERS = ("encodec", "vocos")
_BUILDING_BLOCKS = ("vocos.models", "vocos.heads")  # the only modules a config may name classes from


class VocoderError(ValueError):
    """A Vocos folder that cannot decode this corpus's codes; the message says why."""


class VocosDecoder:
    def __init__(self, folder: str | Path, codec: CodecEncoder, bandwidth_kbps: float, device: str = "cpu"):
        folder = Path(folder)
        config, weights = folder / "config.yaml", folder / "pytorch_model.bin"
        for path in (config, weights):
            if not path.is_file():
                raise VocoderError(
                    f"{path} does not exist; --vocos takes a folder with config.yaml and pytorch_model.bin "
                    f"(huggingface-cli download {VOCOS_HUB_REPO} --local-dir DIR)"
                )
        cfg = yaml.safe_load(config.read_text())
        features = cfg.get("feature_extractor", {})
        args = features.get("init_args", {})
        if (
            not str(features.get("class_path", "")).endswith("EncodecFeatures")
            or args.get("encodec_model", "encodec_24khz") != "encodec_24khz"
        ):
            raise VocoderError(f"{config}: not a Vocos for EnCodec 24 kHz codes (feature_extractor {features})")
        bandwidths = [float(b) for b in args.get("bandwidths", [1.5, 3.0, 6.0, 12.0])]
        if float(bandwidth_kbps) not in bandwidths:
            raise VocoderError(f"{config}: trained for {bandwidths} kbps, the corpus's codes are {bandwidth_kbps} kbps")
        self.bandwidth_id = bandwidths.index(float(bandwidth_kbps))
        import_without_torchaudio("vocos")
        self.backbone = _build(cfg["backbone"], config)
        self.head = _build(cfg["head"], config)
        state = _state_dict(weights)
        for name, module in (("backbone", self.backbone), ("head", self.head)):
            part = {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(name + ".")}
            try:
                module.load_state_dict(part, strict=True)
            except RuntimeError as e:
                raise VocoderError(f"{weights}: its {name} does not fit {config} ({str(e).splitlines()[0]})") from None
        self.codebooks = codec.codebooks()  # (n_q * 1024, 128)
        theirs = state.get("feature_extractor.codebook_weights")
        if theirs is not None:
            rows = self.codebooks.shape[0]
            if theirs.shape[0] < rows or not torch.allclose(theirs[:rows].float(), self.codebooks, atol=1e-5):
                raise VocoderError(
                    f"{weights} was trained on the codes of other EnCodec weights than this corpus's "
                    f"(its codebooks differ); use the Vocos made for the weights the corpus names"
                )
        self.device = torch.device(device)
        self.backbone.to(self.device).eval()
        self.head.to(self.device).eval()
        self.codebooks = self.codebooks.to(self.device)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """(n_q, T) codes -> float32 mono 24 kHz waveform of T * 320 samples."""
        x = torch.as_tensor(np.asarray(codes, dtype=np.int64), device=self.device)  # (n_q, T)
        offsets = torch.arange(x.shape[0], device=self.device)[:, None] * ENCODEC.codebook_size
        features = torch.nn.functional.embedding(x + offsets, self.codebooks).sum(0)  # (T, 128)
        with torch.inference_mode():
            bandwidth = torch.tensor([self.bandwidth_id], device=self.device)
            wave = self.head(self.backbone(features.T[None], bandwidth_id=bandwidth))  # (1, samples)
        return wave[0, : x.shape[1] * ENCODEC.hop].float().cpu().numpy()


def _build(section: dict, config: Path) -> torch.nn.Module:
    """A Vocos building block named by a config section, from the vocos package only."""
    module_name, _, class_name = str(section.get("class_path", "")).rpartition(".")
    if module_name not in _BUILDING_BLOCKS:
        raise VocoderError(f"{config}: class {section.get('class_path')!r} is not a Vocos backbone or head")
    cls = getattr(import_without_torchaudio(module_name), class_name, None)
    if not isinstance(cls, type) or not issubclass(cls, torch.nn.Module):
        raise VocoderError(f"{config}: {section.get('class_path')!r} is not a Vocos module")
    return cls(**section.get("init_args", {}))


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, or pickled objects beyond tensors
        raise VocoderError(
            f"{path} cannot be read as a state dict with weights_only=True ({type(e).__name__})"
        ) from None
    if not isinstance(state, dict):
        raise VocoderError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def decoder_for(name: str, codec: CodecEncoder, bandwidth_kbps: float, vocos: str | None = None, device: str = "cpu"):
    """The decoder called `name` ("encodec": the codec itself; "vocos": from the folder `vocos`)."""
    if name == "encodec":
        return codec
    if name == "vocos":
        if not vocos:
            raise VocoderError(
                f"the vocos decoder needs --vocos DIR (config.yaml + pytorch_model.bin of {VOCOS_HUB_REPO})"
            )
        return VocosDecoder(vocos, codec, bandwidth_kbps, device)
    raise VocoderError(f"decoder {name!r}: choose one of {', '.join(DECODERS)}")
