"""`valle-synth`: an AR and a NAR checkpoint, a text and a speaker prompt in; a wav out at the codec's rate.

    valle-synth --ar AR.pt --nar NAR.pt --text "..." --prompt-audio P.wav --prompt-text "..." \
        --out OUT.wav [--data CORPUS | --bpe bpe.model] [--top-p 0.8 --window 10 --threshold 0.1 \
        --temperature 1.0 --seed 0 --max-seconds 30] [--codec-weights pretrained|random|PATH] \
        [--min-seconds-per-token 0.0533 --max-seconds-per-token 0.533] [--decoder encodec|vocos --vocos DIR]

Steps (VALL-E inference):
  1. the prompt audio is mono-mixed, resampled to the codec's rate (soxr HQ, as the pipeline does) and
     encoded by the corpus's codec with its settings (EnCodec, DAC or Mimi), which the
     checkpoints' provenance names;
  2. the text the models read is the BPE of normalize(prompt_text + " " + text), tokenized as
     the corpus's were (the same normalization, no BOS/EOS);
  3. the AR model continues codebook 1 after the prompt (KV cache, repetition-aware sampling,
     `trainer.sampling.generate_ar_samples`), held to a length guard relative to the text: no
     EOS before --min-seconds-per-token of speech a BPE token of --text, cut at
     --max-seconds-per-token (`LengthGuard`, in frames at the codec's frame rate); the NAR model
     fills codebooks 2..K greedily;
  4. the generated frames only (not the prompt) go through the decoder (the codec's own, or Vocos
     from a local folder for EnCodec: tokens.vocoder) to a 16-bit mono wav at the codec's sample
     rate, one hop of samples per frame (EnCodec 320, Mimi 1,920 at 24 kHz).

Everything that decides what the tokens mean must agree, or synthesis refuses: the AR and NAR
checkpoints' provenance (codec and BPE; a corpus given with --data of another codec than theirs
is one error naming both), the BPE model file's sha256, and the loaded codec weights' sha256.
Synthesis reuses the pipeline's text normalization and codec loader so that the prompt is turned
into tokens exactly as the corpus was.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import torch

from schemas.reading import read_index
from storage.remote import join, read_bytes
from tokens.audio import read_audio, write_wav
from tokens.codec import CodecEncoder, codec_for
from tokens.codec_weights import WeightsUnavailable
from tokens.codecs import DEFAULT_CODEC
from tokens.text import NORMALIZATION, Tokenizer, normalize_text
from tokens.vocoder import DECODERS, VocoderError, decoder_for
from trainer.corpus import provenance_key, two_codecs
from trainer.models import ARModel, NARModel
from trainer.models.config import ModelConfig
from trainer.sampling import LengthGuard, SamplingConfig, generate_ar_samples

LEGACY_PROMPT_SECONDS = (1.5, 3.0)  # what NAR checkpoints saved before the range was recorded trained on


class SynthError(ValueError):
    """Synthesis cannot run as asked; the message says why and what to do."""


def load_checkpoint(path: str, kind: type, device: torch.device):
    """(model in eval mode on `device`, provenance) from a `valle-train` checkpoint of `kind`."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SynthError(f"checkpoint {path} does not exist") from None
    except Exception as e:  # not a torch file, or objects beyond tensors and plain data
        raise SynthError(f"{path} cannot be read as a valle-train checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(saved, dict) or not {"model", "model_kind", "model_config", "provenance"} <= saved.keys():
        raise SynthError(f"{path} is not a valle-train checkpoint (no model/model_kind/model_config/provenance)")
    if saved["model_kind"] != kind.__name__:
        raise SynthError(f"{path} holds a {saved['model_kind']}, expected a {kind.__name__}")
    config = dict(saved["model_config"])
    config["prompt_seconds"] = tuple(config.get("prompt_seconds", LEGACY_PROMPT_SECONDS))
    model = kind(ModelConfig(**config))
    model.load_state_dict(saved["model"])
    return model.to(device).eval(), saved["provenance"]


def load_bpe(bpe: str | None, data: str | None, provenance: dict) -> Tokenizer:
    """The BPE model (`bpe`, else the corpus's from `data`), checked against the checkpoints."""
    if bpe:
        raw = _read(bpe, "BPE model")
        where = bpe
    elif data:
        index = read_index(data, SynthError)
        check_made_like(data, provenance_key(index), provenance, "use the corpus they were trained on")
        where = join(data, index["provenance"]["bpe"]["model"])
        raw = _read(where, "BPE model")
    else:
        raise SynthError("give --data CORPUS (its BPE model is used) or --bpe PATH")
    sha = hashlib.sha256(raw).hexdigest()
    if sha != provenance["bpe_sha256"]:
        raise SynthError(
            f"BPE model {where} has sha256 {sha}, but the checkpoints were trained with "
            f"{provenance['bpe_sha256']}; use the BPE model of their corpus"
        )
    return Tokenizer(where, raw)  # the model the checkpoints were trained with: it parses


def check_made_like(where: str, key: dict, provenance: dict, fix: str) -> None:
    """Refuse a corpus or evaluation set (`where`, its `provenance_key`) whose tokens are not
    those of checkpoints of `provenance`: another codec first, as one error naming both codecs."""
    codecs = two_codecs("the checkpoints' corpus", provenance, where, key)
    if codecs:
        raise SynthError(f"checkpoints and codes of two codecs: {codecs}; its codes mean nothing to them; {fix}")
    if key != provenance:
        raise SynthError(
            f"{where} was made with other codec/BPE/text settings than the checkpoints ({key} vs {provenance}); {fix}"
        )


def _read(uri: str, what: str) -> bytes:
    try:
        return read_bytes(uri)
    except OSError as e:
        raise SynthError(f"cannot read the {what} {uri}: {e}") from None


def load_codec(weights: str, provenance: dict, device: str) -> CodecEncoder:
    """The codec the provenance names, with the corpus's codebooks; refuses weights other than
    those the corpus used."""
    try:
        return codec_for(provenance["codec"], weights, device)
    except (WeightsUnavailable, ValueError) as e:
        raise SynthError(f"--codec-weights {weights}: {e}") from None


def pick_device(name: str) -> torch.device:
    device = torch.device(name if name != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SynthError(f"--device {name}: CUDA is not available here; use auto or cpu")
    return device


class Synthesizer:
    """An AR and a NAR model with the BPE, codec and decoder of their corpus: text and prompt codes
    in, codes and audio out. Built from checkpoints (`load`) or from models in memory (training)."""

    def __init__(self, ar: ARModel, nar: NARModel, provenance: dict, bpe: Tokenizer, codec: CodecEncoder, decoder=None):
        K, known = provenance["codec"]["codebooks"], codec.spec
        if nar.cfg.n_codebooks != K:
            raise SynthError(f"the NAR predicts {nar.cfg.n_codebooks} codebooks, the codec uses {K}")
        for name, model in (("AR", ar), ("NAR", nar)):
            if (model.cfg.codebook_size, model.cfg.frame_rate) != (known.codebook_size, known.frame_rate):
                raise SynthError(
                    f"the {name} model has {model.cfg.codebook_size} codes at {model.cfg.frame_rate:g} frames/s; "
                    f"its provenance's codec {known.name} has {known.codebook_size} at {known.frame_rate:g}"
                )
        if provenance["text"]["normalization"] != NORMALIZATION:
            raise SynthError(
                f"the corpus normalized text as {provenance['text']['normalization']!r}; this "
                f"pipeline version does {NORMALIZATION!r}"
            )
        self.ar, self.nar, self.provenance, self.bpe, self.codec = ar, nar, provenance, bpe, codec
        self.decoder = decoder or codec
        self.device = next(ar.parameters()).device

    @classmethod
    def load(
        cls,
        ar_path: str,
        nar_path: str,
        *,
        bpe=None,
        data=None,
        codec_weights="pretrained",
        device="auto",
        decoder="encodec",
        vocos=None,
        given: tuple[str, dict] | None = None,
    ) -> Synthesizer:
        """`given`: (name, provenance key) of an evaluation set whose codes the models will be
        given; refused, before anything else loads, unless its tokens are theirs."""
        dev = pick_device(device)
        ar, ar_prov = load_checkpoint(ar_path, ARModel, dev)
        nar, nar_prov = load_checkpoint(nar_path, NARModel, dev)
        codecs = two_codecs(f"the AR's ({ar_path})", ar_prov, f"the NAR's ({nar_path})", nar_prov)
        if codecs:
            raise SynthError(f"AR and NAR checkpoints of two codecs: {codecs}; train both on one corpus")
        if ar_prov != nar_prov:
            raise SynthError(
                f"the AR and NAR checkpoints were trained on corpora with different codec/BPE "
                f"provenance ({ar_prov} vs {nar_prov}); their tokens do not mean the same thing"
            )
        if given is not None:
            check_made_like(*given, ar_prov, "make the set from the checkpoints' corpus")
        tokenizer = load_bpe(bpe, data, ar_prov)
        codec = load_codec(codec_weights, ar_prov, str(dev))
        if decoder == "vocos" and codec.spec.name != DEFAULT_CODEC:
            raise SynthError(
                f"--decoder vocos decodes {DEFAULT_CODEC} codes; these checkpoints are {codec.spec.name}'s: "
                "use --decoder encodec (the codec's own decoder)"
            )
        try:
            out = decoder_for(decoder, codec, ar_prov["codec"]["bandwidth_kbps"], vocos, str(dev))
        except VocoderError as e:
            raise SynthError(str(e)) from None
        return cls(ar, nar, ar_prov, tokenizer, codec, out)

    @property
    def max_text_tokens(self) -> int:
        return min(self.ar.cfg.max_text_len, self.nar.cfg.max_text_len)

    @property
    def frame_rate(self) -> float:
        """Code frames per second of the codec (the models were trained at it)."""
        return self.codec.spec.frame_rate

    @property
    def sample_rate(self) -> int:
        """Samples per second of the audio the codec takes and `decode` gives."""
        return self.codec.spec.sample_rate

    def frames(self, seconds: float) -> int:
        """Code frames in `seconds` of audio, rounded."""
        return self.codec.spec.frames(seconds)

    @property
    def max_audio_frames(self) -> int:
        return min(self.ar.cfg.max_audio_frames, self.nar.cfg.max_audio_frames)

    def tokens(self, text: str) -> list[int]:
        """BPE ids of a text, tokenized as the corpus's were (normalized, no BOS/EOS)."""
        return self.bpe.encode(normalize_text(text))

    def encode_prompt(self, audio: np.ndarray) -> np.ndarray:
        """(K, P) codes of float32 mono prompt audio at the codec's rate, made as the corpus's were."""
        return self.codec.encode([audio])[0].astype(np.int64)

    def generate(
        self,
        text_ids: list[int],
        prompt: np.ndarray,
        sampling: SamplingConfig,
        seeds: list[int],
    ) -> list[np.ndarray]:
        """One (K, T_i) code array per seed: codebook 1 by the AR (the samples decoded as one batch,
        sample i from a generator seeded `seeds[i]`), codebooks 2..K by the NAR, batched too."""
        if len(text_ids) > self.max_text_tokens:
            raise SynthError(f"the text is {len(text_ids)} BPE tokens; the models take at most {self.max_text_tokens}")
        P = prompt.shape[1]
        if self.ar.cfg.group_size > P or self.max_audio_frames - P < 1:
            raise SynthError(
                f"the prompt is {P / self.frame_rate:.2f} s ({P} frames); it must be at least "
                f"{self.ar.cfg.group_size} frames and leave room in the models' {self.max_audio_frames} frames"
            )
        text = torch.tensor([text_ids], dtype=torch.long, device=self.device)  # (1, S)
        codes = torch.from_numpy(np.asarray(prompt, dtype=np.int64))[None].to(self.device)  # (1, K, P)
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        firsts = generate_ar_samples(self.ar, text, codes[:, 0], sampling, generators)
        done = [c for c in firsts if c.numel()]
        with torch.inference_mode():
            full = iter(self.nar.predict_samples(text, codes, [c.to(self.device) for c in done]) if done else [])
        K = codes.shape[1]
        return [next(full).cpu().numpy() if c.numel() else np.zeros((K, 0), np.int64) for c in firsts]

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """(K, T) codes -> float32 mono audio at `sample_rate`, T x the codec's hop samples."""
        return self.decoder.decode(codes) if codes.shape[1] else np.zeros(0, np.float32)


def synthesize(args) -> tuple[np.ndarray, int]:
    """Run the four steps; returns (float32 waveform at the codec's rate, generated frames, that rate)."""
    if not args.max_seconds > 0:
        raise SynthError(f"--max-seconds {args.max_seconds}: must be > 0")
    synth = Synthesizer.load(
        args.ar,
        args.nar,
        bpe=args.bpe,
        data=args.data,
        codec_weights=args.codec_weights,
        device=args.device,
        decoder=args.decoder,
        vocos=args.vocos,
    )
    if not normalize_text(args.text):
        raise SynthError("--text is empty")
    text_ids = synth.tokens(f"{args.prompt_text} {args.text}")  # the prompt's transcript, then the text
    try:
        prompt_audio = read_audio(args.prompt_audio, synth.sample_rate)
    except ValueError as e:
        raise SynthError(f"--prompt-audio: {e}") from None
    prompt = synth.encode_prompt(prompt_audio)
    P = prompt.shape[1]
    warn_prompt_range(P / synth.frame_rate, synth.nar.cfg.prompt_seconds)
    guard = LengthGuard(args.min_seconds_per_token, args.max_seconds_per_token)
    room = min(synth.frames(args.max_seconds), max(1, synth.max_audio_frames - P))
    low, high = guard.bounds(len(synth.tokens(args.text)), synth.frame_rate, room=room)
    sampling = SamplingConfig(
        top_p=args.top_p,
        window=args.window,
        repetition_threshold=args.threshold,
        temperature=args.temperature,
        max_frames=high,
        min_frames=low,
    )
    torch.manual_seed(args.seed)
    codes = synth.generate(text_ids, prompt, sampling, [args.seed])[0]
    if codes.shape[1] == 0:
        raise SynthError("the AR model stopped at once (EOS first); nothing to decode; try another --seed")
    return synth.decode(codes), codes.shape[1], synth.sample_rate


def warn_prompt_range(seconds: float, trained: tuple[float, float]) -> None:
    """The NAR has only seen prompts of `trained` seconds; say so when this one is outside."""
    low, high = trained
    if not low <= seconds <= high:
        print(
            f"valle-synth: warning: the prompt is {seconds:.2f} s, but the NAR checkpoint was trained on "
            f"{low:g}-{high:g} s prompts (model.prompt_seconds); quality may suffer. Use a prompt in that "
            "range, or train the NAR with a range that covers it.",
            file=sys.stderr,
        )


def add_guard_options(parser: argparse.ArgumentParser) -> None:
    """The length guard's options (valle-synth, valle-eval): seconds of speech per BPE token."""
    parser.add_argument(
        "--min-seconds-per-token",
        type=float,
        default=LengthGuard.min_per_token,
        help="length guard: no EOS before this many seconds of speech per BPE token of the text (default 4/75)",
    )
    parser.add_argument(
        "--max-seconds-per-token",
        type=float,
        default=LengthGuard.max_per_token,
        help="length guard: output cut at this many seconds of speech per BPE token of the text (default 40/75)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="valle-synth", description=__doc__.split("\n")[0])
    parser.add_argument("--ar", required=True, help="AR checkpoint (valle-train)")
    parser.add_argument("--nar", required=True, help="NAR checkpoint (valle-train)")
    parser.add_argument("--text", required=True, help="what to say")
    parser.add_argument("--prompt-audio", required=True, help="speaker prompt: a wav/flac file")
    parser.add_argument("--prompt-text", required=True, help="transcript of the prompt audio")
    parser.add_argument("--out", required=True, help="output wav (mono, 16-bit PCM, at the codec's sample rate)")
    parser.add_argument("--data", help="the corpus the checkpoints were trained on (folder or URL): its BPE model")
    parser.add_argument("--bpe", help="the BPE model file, instead of --data")
    parser.add_argument("--codec-weights", default="pretrained", help="pretrained | random | PATH")
    parser.add_argument("--top-p", type=float, default=0.8)
    parser.add_argument("--window", type=int, default=10, help="repetition-aware sampling window K")
    parser.add_argument("--threshold", type=float, default=0.1, help="repetition ratio t_r")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=30.0, help="longest output if no EOS")
    add_guard_options(parser)
    parser.add_argument(
        "--decoder",
        default="encodec",
        choices=DECODERS,
        help="codes to audio: encodec (the codec's own decoder, whichever codec) | vocos (EnCodec's codes only)",
    )
    parser.add_argument("--vocos", help="folder with a Vocos EnCodec checkpoint (config.yaml, pytorch_model.bin)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    args = parser.parse_args(argv)
    try:
        wave, frames, rate = synthesize(args)
    except (SynthError, ValueError) as err:  # LengthGuard and SamplingConfig check their values
        print(f"valle-synth: {err}", file=sys.stderr)
        return 2
    if not np.isfinite(wave).all():
        print("valle-synth: the decoder produced NaN/inf samples", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_wav(out, wave, rate)
    print(f"wrote {out}: {frames} frames, {len(wave) / rate:.2f} s at {rate} Hz")
    return 0


if __name__ == "__main__":
    sys.exit(main())
