"""The models that score synthesized speech, chosen by name and (where the model is not shipped
inside its package) a local path: `NAME` or `NAME:PATH`. Nothing is fetched from a hub.

ASR (WER):
  pocketsphinx        CMU PocketSphinx with the en-us model its wheel ships: the offline default.
                      Far from the state of the art (it misses much even of clean read speech), so
                      its WERs are only comparable with other pocketsphinx WERs.
  hubert:PATH         HuBERT-large CTC (VALL-E's ASR, hubert-large-ls960-ft) via transformers
  whisper:PATH        Whisper via transformers (a saved model folder)
  nemo:PATH           a NeMo ASR .nemo file, e.g. the conformer-transducer VALL-E 2 used
Speaker (SIM = cosine of embeddings):
  resemblyzer         Resemblyzer's GE2E encoder, weights shipped in its wheel: the offline default
  wavlm:PATH          WavLM x-vector speaker verification via transformers (a saved model folder);
                      the papers' WavLM-TDNN (ECAPA) is a different head: not comparable either
Quality:
  dnsmos              DNSMOS through speechmos, which ships its ONNX models: the P.808 score (the
                      one VALL-E 2 reports) and P.835's OVRL, SIG, BAK

Every back-end takes float32 mono 16 kHz audio and says what it is (`describe`): the tables name
it, and numbers from different back-ends are never put side by side as if comparable.
"""

from __future__ import annotations

import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import soxr

RATE = 16000  # every scoring model here takes 16 kHz
ASR_BACKENDS = ("pocketsphinx", "hubert", "whisper", "nemo")
SPEAKER_BACKENDS = ("resemblyzer", "wavlm")


class BackendError(ValueError):
    """A back-end that cannot be used as asked; the message says why and what to do."""


def to_16k(wave: np.ndarray, rate: int) -> np.ndarray:
    return wave.astype(np.float32) if rate == RATE else soxr.resample(wave, rate, RATE, "HQ").astype(np.float32)


def parse(spec: str, known: tuple[str, ...]) -> tuple[str, Path | None]:
    name, _, path = spec.partition(":")
    if name not in known:
        raise BackendError(f"back-end {spec!r}: choose one of {', '.join(known)} (NAME or NAME:PATH)")
    if path and not Path(path).exists():
        raise BackendError(f"back-end {spec!r}: {path} does not exist")
    return name, Path(path) if path else None


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def _require(package: str, backend: str, install: str | None = None):
    try:
        return __import__(package)
    except ImportError:
        how = install or package
        raise BackendError(f"the {backend} back-end needs the {package} package: pip install {how}") from None


def _saved_pretrained(backend: str, path: Path, device: str, preprocessor: str, model: str):
    """(preprocessor, model in eval mode on `device`) from a folder save_pretrained wrote; never
    fetched from a hub."""
    transformers = _require("transformers", backend)
    try:
        pre = getattr(transformers, preprocessor).from_pretrained(path, local_files_only=True)
        net = getattr(transformers, model).from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:  # not a saved model (no config.json or weights), or another kind
        raise BackendError(
            f"{backend}:{path} is not a {model} folder as save_pretrained writes it "
            f"(config.json, preprocessor_config.json, weights): {str(e).splitlines()[0]}"
        ) from None
    return pre, net.to(device).eval()


def _need_path(name: str, path: Path | None) -> Path:
    if path is None:
        raise BackendError(f"the {name} back-end takes its model from a local path: {name}:PATH")
    return path


# ---- ASR --------------------------------------------------------------------------------------


class ASR:
    """An ASR back-end: `transcribe` hears one wave; `transcribe_all` several, one by one unless
    the back-end batches them (an utterance's ground truth, resynthesis and N samples go together)."""

    def transcribe(self, wave: np.ndarray) -> str:
        raise NotImplementedError

    def transcribe_all(self, waves: list[np.ndarray]) -> list[str]:
        return [self.transcribe(w) for w in waves]


class PocketSphinx(ASR):
    def __init__(self, path: Path | None = None):
        from pocketsphinx import Decoder

        if path is None:
            self.decoder = Decoder(samprate=RATE)
            model = "en-us model shipped in its wheel"
        else:  # a folder laid out as the shipped model: acoustic model folder, .lm.bin, .dict
            self.decoder = Decoder(
                samprate=RATE,
                hmm=str(_one(path, "*", dirs=True)),
                lm=str(_one(path, "*.lm.bin")),
                dict=str(_one(path, "*.dict")),
            )
            model = f"model {path}"
        self.description = f"pocketsphinx {_version('pocketsphinx')} ({model}; far below the papers' ASR)"

    def transcribe(self, wave: np.ndarray) -> str:
        pcm = (np.clip(wave, -1, 1) * 32767).astype(np.int16).tobytes()
        # Its feature front end keeps state from wave to wave (the cepstral mean among it): reset
        # it, so a wave is heard exactly as a fresh decoder hears it, whatever came before (50 us;
        # a new Decoder costs 0.25 s). Restoring the initial CMN with set_cmn is not enough.
        self.decoder.reinit_feat()
        self.decoder.start_utt()
        self.decoder.process_raw(pcm, full_utt=True)
        self.decoder.end_utt()
        hyp = self.decoder.hyp()
        return hyp.hypstr if hyp is not None else ""


def _one(folder: Path, pattern: str, dirs: bool = False) -> Path:
    found = sorted(p for p in folder.glob(pattern) if p.is_dir() == dirs)
    if len(found) != 1:
        raise BackendError(
            f"pocketsphinx:{folder}: expected one {pattern}{' folder' if dirs else ''}, found {len(found)}"
        )
    return found[0]


class HuggingFaceCTC(ASR):
    """HuBERT / wav2vec2 CTC models saved with save_pretrained (processor + model)."""

    def __init__(self, path: Path, device: str = "cpu"):
        self.processor, self.model = _saved_pretrained("hubert", path, device, "AutoProcessor", "AutoModelForCTC")
        self.device = device
        self.description = f"{self.model.config.model_type} CTC {path.name} (transformers {_version('transformers')})"

    def transcribe(self, wave: np.ndarray) -> str:
        import torch

        inputs = self.processor(wave, sampling_rate=RATE, return_tensors="pt").input_values.to(self.device)
        with torch.inference_mode():
            ids = self.model(inputs).logits.argmax(-1)
        return self.processor.batch_decode(ids, skip_special_tokens=True)[0]


class Whisper(ASR):
    def __init__(self, path: Path, device: str = "cpu"):
        self.processor, self.model = _saved_pretrained(
            "whisper", path, device, "AutoProcessor", "WhisperForConditionalGeneration"
        )
        self.device = device
        self.description = f"whisper {path.name} (transformers {_version('transformers')})"

    def transcribe(self, wave: np.ndarray) -> str:
        import torch

        features = self.processor(wave, sampling_rate=RATE, return_tensors="pt").input_features.to(self.device)
        with torch.inference_mode():
            ids = self.model.generate(features, language="en", task="transcribe")
        return self.processor.batch_decode(ids, skip_special_tokens=True)[0]


class NeMo(ASR):
    def __init__(self, path: Path, device: str = "cpu"):
        if not path.is_file() or path.suffix != ".nemo":
            raise BackendError(f"nemo:{path} is not a .nemo file; give a NeMo ASR model's .nemo archive")
        _require("nemo", "nemo", "'nemo_toolkit[asr]' (valle-corpus's nemo extra)")
        from nemo.collections.asr.models import ASRModel
        from nemo.utils import logging as nemo_logging

        nemo_logging.setLevel(nemo_logging.ERROR)  # else every restore and transcribe logs its set-up
        try:
            self.model = ASRModel.restore_from(str(path), map_location=device).eval()
        except Exception as e:  # NeMo raises many kinds for a broken archive
            raise BackendError(
                f"nemo:{path} cannot be restored as a NeMo ASR model ({type(e).__name__}: {e})"
            ) from None
        self.description = f"NeMo {path.name} (nemo_toolkit {_version('nemo_toolkit')})"

    def transcribe(self, wave: np.ndarray) -> str:
        return self.transcribe_all([wave])[0]

    def transcribe_all(self, waves: list[np.ndarray]) -> list[str]:
        # One call for all: NeMo sets up a data loader per call, which costs more than a tiny
        # model's forward pass (7 waves of 4-10 s on CPU: 0.78 s one by one, 0.31 s at once).
        if not waves:
            return []
        out = self.model.transcribe(list(waves), batch_size=len(waves), verbose=False)
        hypotheses = out[0] if isinstance(out, tuple) else out
        return [getattr(h, "text", h) for h in hypotheses]


def asr_backend(spec: str, device: str = "cpu"):
    name, path = parse(spec, ASR_BACKENDS)
    if name == "pocketsphinx":
        return PocketSphinx(path)
    cls = {"hubert": HuggingFaceCTC, "whisper": Whisper, "nemo": NeMo}[name]
    return cls(_need_path(name, path), device)


# ---- speaker ----------------------------------------------------------------------------------


class Resemblyzer:
    def __init__(self, path: Path | None = None, device: str = "cpu"):
        with warnings.catch_warnings():  # webrtcvad imports pkg_resources, which warns
            warnings.simplefilter("ignore")
            from resemblyzer import VoiceEncoder, preprocess_wav
        # torch.load inside defaults to weights_only=True on the torch releases we support.
        self.encoder = VoiceEncoder(device, verbose=False, **({"weights_fpath": path} if path else {}))
        self.preprocess = preprocess_wav
        where = f"weights {path}" if path else "weights shipped in its wheel"
        self.description = f"resemblyzer {_version('resemblyzer')} GE2E ({where})"

    def embed(self, wave: np.ndarray) -> np.ndarray:
        trimmed = self.preprocess(wave, source_sr=RATE)  # volume-normalized, long silences cut
        return self.encoder.embed_utterance(trimmed if len(trimmed) > RATE // 4 else wave)


class WavLMSpeaker:
    def __init__(self, path: Path, device: str = "cpu"):
        self.extractor, self.model = _saved_pretrained("wavlm", path, device, "AutoFeatureExtractor", "WavLMForXVector")
        self.device = device
        self.description = f"WavLM x-vector {path.name} (transformers {_version('transformers')})"

    def embed(self, wave: np.ndarray) -> np.ndarray:
        import torch

        inputs = self.extractor(wave, sampling_rate=RATE, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            return self.model(**inputs).embeddings[0].float().cpu().numpy()


def speaker_backend(spec: str, device: str = "cpu"):
    name, path = parse(spec, SPEAKER_BACKENDS)
    if name == "resemblyzer":
        return Resemblyzer(path, device)
    return WavLMSpeaker(_need_path(name, path), device)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


# ---- quality ----------------------------------------------------------------------------------


class DNSMOS:
    def __init__(self):
        _require("onnxruntime", "dnsmos")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from speechmos import dnsmos
        self.run = dnsmos.run
        self.description = f"DNSMOS P.808 via speechmos {_version('speechmos')} (ONNX models shipped in its wheel)"

    def score(self, wave: np.ndarray) -> dict[str, float]:
        """P.808 MOS and P.835 OVRL, SIG, BAK (each 1-5) of float32 16 kHz audio."""
        out = self.run(np.clip(wave, -1, 1), sr=RATE)
        names = {"p808": "p808_mos", "ovrl": "ovrl_mos", "sig": "sig_mos", "bak": "bak_mos"}
        return {ours: float(out[theirs]) for ours, theirs in names.items()}
