"""Watching a run: every `synth_eval.every` steps (default: run.eval_every) the model being
trained synthesizes a few fixed utterances of an evaluation set, and their WER, SIM and audio go
to TensorBoard (`synth/wer`, `synth/sim`, `synth/audio_<n>`) and log.jsonl.

A run trains one model, so the other comes from a checkpoint (`synth_eval.partner`: a NAR for an
AR run, an AR for a NAR run). Without one, an AR run's audio is its codebook 1 alone through the
decoder (intelligible, thin), and a NAR run's is the ground truth's codebook 1 with the NAR's
codebooks 2..K: each model can be watched on its own, and the label says which it was.

Cost is bounded: a round is skipped (logged `synth_eval_skipped`) when, costing what the last one
did, it would bring the time spent on these rounds above `synth_eval.max_share` of the run's wall
time (default 5 %); the first round always runs (it measures the cost), and every round logs the
share so far (`synth_eval_share`). It runs on the first rank only; the others wait for it
at the next step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from schemas.evalset import EvalSet
from tokens.codec import codec_for
from trainer.eval.backends import asr_backend, speaker_backend
from trainer.eval.run import Scorer, against
from trainer.eval.wer import WordErrors, corpus_wer
from trainer.sampling import LengthGuard, SamplingConfig, generate_ar_samples
from trainer.synth import SynthError, check_made_like, load_checkpoint


@dataclass
class WatchSettings:
    set: str
    utterances: int = 4
    prompt_seconds: float = 3.0
    max_seconds: float = 20.0
    partner: str | None = None
    asr: str = "pocketsphinx"
    speaker: str = "resemblyzer"
    codec_weights: str | None = None
    max_share: float = 0.05
    seed: int = 0


class TrainingEval:
    def __init__(self, settings: WatchSettings, kind: str, provenance: dict, device: torch.device):
        from trainer.corpus import provenance_key, two_codecs
        from trainer.models import ARModel, NARModel

        self.settings, self.kind, self.device = settings, kind, device
        self.evalset = EvalSet(settings.set)
        set_key = provenance_key({"provenance": self.evalset.provenance})
        check_made_like(f"synth_eval.set {settings.set}", set_key, provenance, "make the set from the corpus")
        self.utterances = self.evalset.first(settings.utterances)
        self.prompt_embeddings: dict[str, np.ndarray] = {}  # the prompts never change: embedded once
        self.codec = codec_for(self.evalset.provenance["codec"], settings.codec_weights, "cpu")
        self.partner = None
        if settings.partner:
            wanted = NARModel if kind == "ar" else ARModel
            self.partner, partner_prov = load_checkpoint(settings.partner, wanted, device)
            codecs = two_codecs(f"synth_eval.partner {settings.partner}", partner_prov, "the corpus", provenance)
            if codecs:
                raise SynthError(f"a partner and a corpus of two codecs: {codecs}; train the partner on this corpus")
            if partner_prov != provenance:
                raise SynthError(f"synth_eval.partner {settings.partner} was trained on a corpus of other codes")
        speaker = speaker_backend(settings.speaker)
        self.scorer = Scorer(asr_backend(settings.asr), speaker, rate=self.codec.spec.sample_rate)
        self.spent, self.last, self.started = 0.0, 0.0, time.perf_counter()
        self.label = "AR + NAR" if self.partner else ("codebook 1 only" if kind == "ar" else "ground-truth codebook 1")

    def due(self) -> bool:
        """Whether one more round (costing what the last one did) keeps these rounds within
        max_share of the run's time. The first round always runs: it measures the cost."""
        elapsed = time.perf_counter() - self.started
        return (self.spent + self.last) / max(1e-9, elapsed + self.last) <= self.settings.max_share

    @torch.no_grad()
    def __call__(self, model, step: int, writer) -> dict:
        if not self.due():
            return {"step": step, "synth_eval_skipped": 1}
        start = time.perf_counter()
        was_training = model.training
        model.eval()
        try:
            counts, sims = [], []
            for n, u in enumerate(self.utterances):
                wave, prompt_audio = self._synthesize(model, u)
                if u.id not in self.prompt_embeddings:
                    self.prompt_embeddings[u.id] = self.scorer.embed(prompt_audio)
                measured = self.scorer.measure(wave, u.reference)
                counts.append(WordErrors(measured["errors"], measured["words"]))
                sims.append(against(measured, self.prompt_embeddings[u.id])["sim"])
                heard = measured["hypothesis"]
                if writer is not None:
                    rate = self.codec.spec.sample_rate
                    writer.add_audio(f"synth/audio_{n}", torch.from_numpy(wave)[None], step, sample_rate=rate)
                    writer.add_text(f"synth/heard_{n}", f"{u.reference} -> {heard}", step)
        finally:
            model.train(was_training)
        took = time.perf_counter() - start
        self.spent += took
        self.last = took
        record = {
            "step": step,
            "synth_wer": corpus_wer(counts),
            "synth_sim": float(np.mean(sims)),
            "synth_eval_seconds": took,
            "synth_eval_share": self.spent / max(1e-9, time.perf_counter() - self.started),
        }
        if writer is not None:
            writer.add_text("synth/setup", f"{self.label}; {self.scorer.describe()}", step)
        return record

    def _synthesize(self, model, u) -> tuple[np.ndarray, np.ndarray]:
        """Continuation of u from its first prompt_seconds: (whole output, the prompt's audio)."""
        codes = torch.from_numpy(self.evalset.codes(u).astype(np.int64)).to(self.device)  # (K, T)
        spec = self.codec.spec
        P = min(spec.frames(self.settings.prompt_seconds), codes.shape[1] - 1)
        text = torch.tensor([list(u.text_tokens)], device=self.device)
        ar = model if self.kind == "ar" else self.partner
        nar = model if self.kind == "nar" else self.partner
        if ar is not None:
            room = min(spec.frames(self.settings.max_seconds), ar.cfg.max_audio_frames) - P
            low, high = LengthGuard().bounds(len(u.text_tokens), spec.frame_rate, given=P, room=max(1, room))
            cfg = SamplingConfig(max_frames=high, min_frames=low)
            gen = torch.Generator().manual_seed(self.settings.seed)
            codes1 = generate_ar_samples(ar, text, codes[None, 0, :P], cfg, [gen])[0].to(self.device)
        else:
            codes1 = codes[0, P:]  # the ground truth's codebook 1
        if nar is not None and codes1.numel():
            rest = nar.predict(text, codes[None, :, :P], codes1[None])  # (K, T)
            out = torch.cat([codes[:, :P], rest], dim=1)
        else:
            out = torch.cat([codes[:1, :P], codes1[None]], dim=1)  # codebook 1 alone
        wave = self.codec.decode(out.cpu().numpy())
        prompt_audio = self.evalset.audio(u)[: P * spec.hop]
        return wave, prompt_audio


def settings_from(section) -> WatchSettings:
    """The config's synth_eval section as WatchSettings."""
    return WatchSettings(
        set=section.set,
        utterances=section.utterances,
        prompt_seconds=section.prompt_seconds,
        max_seconds=section.max_seconds,
        partner=section.partner,
        asr=section.asr,
        speaker=section.speaker,
        codec_weights=section.codec_weights,
        max_share=section.max_share,
    )
