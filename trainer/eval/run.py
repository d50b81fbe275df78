"""Zero-shot evaluation as VALL-E 2 reports it: tasks, rows, best-of-N, scores.

Tasks, for each utterance u of the set:
  continuation    the first `prompt_seconds` (3 s) of u's codes are the prompt and u's whole text
                  the text; the output is prompt + continuation, scored on the whole utterance
                  (as VALL-E 2 scores it); SIM against the 3 s prompt's audio.
  cross           cross-sentence: another utterance p of u's speaker (the set's prompt_id: the
                  previous one in id order, as VALL-E 2 pairs them) is the prompt, whole, with its
                  text before u's; the output is the generated speech
                  only; SIM against p's audio. Speakers with one utterance are left out (counted).
Rows: ground_truth (u's audio), resynthesis (u's codes through the decoder: the codec's ceiling),
single (the first of N samples), best_of_n (N samples decoded as one batch, one kept for VALL-E 2's
"sort on SIM and WER": the lowest WER, then the highest SIM, see best_of) and metric_wise (VALL-E
2's "metric-wise maximization": each metric's best over the N). As in the paper, both select with
the evaluation's own ASR and speaker models, so they measure what sampling can reach, not what one
draw gives.
WER is errors over reference words summed over the set; SIM and DNSMOS are means.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from schemas.evalset import EvalSet, Utterance
from tokens.audio import write_wav
from tokens.constants import FRAME_RATE, HOP, SAMPLE_RATE
from trainer.eval.backends import cosine, to_16k
from trainer.eval.generated import split_reference, summarize_generated
from trainer.eval.wer import NORMALIZATION, WordErrors, corpus_wer, normalize, word_errors
from trainer.sampling import LengthGuard, SamplingConfig
from trainer.synth import SynthError, Synthesizer

TASKS = ("continuation", "cross")
ROWS = ("ground_truth", "resynthesis", "single", "best_of_n", "metric_wise")
RATE_MIN = 1600  # 0.1 s at 16 kHz: shorter output has no voice to compare (SIM 0)


@dataclass
class EvalConfig:
    tasks: tuple[str, ...] = TASKS
    samples: int = 5  # N of best-of-N (the papers' 5); 1 gives no best_of_n row
    prompt_seconds: float = 3.0  # continuation prompt
    max_utterances: int | None = None  # N of the set, spread over its speakers (EvalSet.first)
    seed: int = 0  # sample k of every utterance draws from a generator seeded seed + k
    page_utterances: int = 24  # utterances per task with audio on the HTML page
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # its frame bounds come from `guard`
    guard: LengthGuard = field(default_factory=LengthGuard)

    def __post_init__(self) -> None:
        unknown = set(self.tasks) - set(TASKS)
        if unknown or not self.tasks:
            raise ValueError(f"tasks {sorted(unknown) or '[]'}: choose from {', '.join(TASKS)}")
        if self.samples < 1:
            raise ValueError(f"samples={self.samples}: at least 1")
        if not self.prompt_seconds > 0:
            raise ValueError(f"prompt_seconds={self.prompt_seconds}: must be > 0")


class Scorer:
    """ASR, speaker and (optional) DNSMOS back-ends together."""

    def __init__(self, asr, speaker, dnsmos=None):
        self.asr, self.speaker, self.dnsmos = asr, speaker, dnsmos

    def describe(self) -> dict:
        return {
            "asr": self.asr.description,
            "speaker": self.speaker.description,
            "dnsmos": self.dnsmos.description if self.dnsmos else None,
            "wer_normalization": NORMALIZATION,
        }

    def embed(self, wave24: np.ndarray) -> np.ndarray:
        return self.speaker.embed(to_16k(wave24, SAMPLE_RATE))

    def measure(self, wave24: np.ndarray, reference: str) -> dict:
        return self.measure_all([wave24], reference)[0]

    def measure_all(self, waves24: list[np.ndarray], reference: str) -> list[dict]:
        """What does not depend on the prompt, for renditions of one text: what the ASR heard
        (all in one call), its word errors, DNSMOS, and the speaker embedding (None for audio too
        short to carry a voice). `against` adds SIM."""
        waves = [to_16k(w, SAMPLE_RATE) for w in waves24]
        heard = iter(self.asr.transcribe_all([w for w in waves if len(w)]))
        measured = []
        for wave in waves:
            hypothesis = next(heard) if len(wave) else ""
            errors = word_errors(reference, hypothesis)
            out = {"hypothesis": hypothesis, "errors": errors.errors, "words": errors.words}
            out["embedding"] = self.speaker.embed(wave) if len(wave) > RATE_MIN else None
            if self.dnsmos and len(wave):
                out["dnsmos"] = self.dnsmos.score(wave)["p808"]
            measured.append(out)
        return measured


def against(measured: dict, prompt_embedding: np.ndarray) -> dict:
    """A measured output's scores with its SIM to one prompt (0 when it has no voice)."""
    scores = {k: v for k, v in measured.items() if k != "embedding"}
    embedding = measured["embedding"]
    scores["sim"] = cosine(embedding, prompt_embedding) if embedding is not None else 0.0
    return scores


def best_of(scores: list[dict]) -> int:
    """The index of the sample kept for "sort on SIM and WER": the lowest WER, of equal WER the
    highest SIM, of equal both the earlier sample. VALL-E 2's sentence stating its rule was not
    at hand (docs/evaluation.md says so); of the two orders, WER first is the one its Table 1
    comes closer to (see the docs)."""

    def key(i: int):
        s = scores[i]
        return (WordErrors(s["errors"], s["words"]).wer, -s["sim"], i)

    return min(range(len(scores)), key=key)


def metric_wise(scores: list[dict]) -> dict:
    """VALL-E 2's "metric-wise maximization": each metric's best over the samples on its own
    (the lowest WER, the highest SIM and DNSMOS, possibly from different samples)."""
    fewest = min(scores, key=lambda s: WordErrors(s["errors"], s["words"]).wer)
    out = {"errors": fewest["errors"], "words": fewest["words"], "sim": max(s["sim"] for s in scores)}
    if all("dnsmos" in s for s in scores):
        out["dnsmos"] = max(s["dnsmos"] for s in scores)
    return out


@dataclass
class Trial:
    """One utterance under one task: what the models are given and what is scored against."""

    utterance: Utterance
    text_ids: list[int]
    prompt: np.ndarray  # (K, P) codes
    prompt_audio: np.ndarray  # float32 24 kHz: the voice SIM compares with
    given: int  # frames of the output already there (the continuation's prompt)
    target_tokens: int  # BPE tokens of the text to be spoken (the length guard's measure)


def make_trial(task: str, u: Utterance, evalset: EvalSet, synth: Synthesizer, cfg: EvalConfig) -> Trial | str:
    """The trial of `u` under `task`, or the reason it is left out."""
    if not u.text.strip() or not u.text_tokens:
        return "empty text"
    if not word_errors(u.reference, "").words:
        return "no words in the reference (WER undefined)"
    codes = evalset.codes(u).astype(np.int64)
    if task == "continuation":
        P = round(cfg.prompt_seconds * FRAME_RATE)
        if codes.shape[1] < P + FRAME_RATE // 2:
            return "shorter than the prompt + 0.5 s"
        audio = evalset.audio(u)[: P * HOP]
        return Trial(u, list(u.text_tokens), codes[:, :P], audio, P, len(u.text_tokens))
    if u.prompt_id is None:
        return "no other utterance of its speaker"
    p = evalset.by_id[u.prompt_id]
    return Trial(
        u,
        synth.tokens(f"{p.text} {u.text}"),
        evalset.codes(p).astype(np.int64),
        evalset.audio(p),
        0,
        len(u.text_tokens),
    )


def evaluate(
    synth: Synthesizer, evalset: EvalSet, scorer: Scorer, cfg: EvalConfig, audio_dir: Path | None = None, progress=True
) -> dict:
    """Run every task on the set; returns the results (see report.py for what is written)."""
    utterances = evalset.first(cfg.max_utterances)
    seeds = [cfg.seed + k for k in range(cfg.samples)]
    truth: dict[str, list] = {}  # per utterance: ground truth and resynthesis measured (each model once)
    results: dict = {"tasks": {}, "timing": {"synthesis_s": 0.0, "generated_s": 0.0, "trials": 0}}
    for task in cfg.tasks:
        rows, skipped = [], {}
        for n, u in enumerate(tqdm(utterances, desc=task, unit="utt", disable=not progress)):
            trial = make_trial(task, u, evalset, synth, cfg)
            if isinstance(trial, str):
                skipped[trial] = skipped.get(trial, 0) + 1
                continue
            on_page = audio_dir is not None and n < cfg.page_utterances  # keep its audio for the page
            try:
                row = _run_trial(trial, task, synth, evalset, scorer, cfg, seeds, truth, results["timing"], on_page)
            except SynthError as err:  # the models cannot take it (text or prompt too long)
                skipped[str(err)] = skipped.get(str(err), 0) + 1
                continue
            if on_page:
                row["audio"] = _save(audio_dir / task / f"{n:04d}", row.pop("waves"))
            rows.append(row)
        results["tasks"][task] = {"summary": summarize(rows, cfg.samples), "skipped": skipped, "utterances": rows}
    t = results["timing"]
    t["seconds_per_trial"] = t["synthesis_s"] / t["trials"] if t["trials"] else None
    t["real_time_factor"] = t["synthesis_s"] / t["generated_s"] if t["generated_s"] else None
    results["set"] = {"utterances": len(utterances), "speakers": len({u.speaker for u in utterances})}
    results["length_guard"] = guard_check(utterances, cfg.guard)
    results["settings"] = {**asdict(cfg), "tasks": list(cfg.tasks)}
    for bound in ("max_frames", "min_frames"):  # set per utterance by the guard, not by these
        results["settings"]["sampling"].pop(bound)
    return results


def _run_trial(trial, task, synth, evalset, scorer, cfg, seeds, truth, timing, keep_audio: bool) -> dict:
    u = trial.utterance
    room = max(1, synth.max_audio_frames - trial.prompt.shape[1])
    low, high = cfg.guard.bounds(trial.target_tokens, given=trial.given, room=room)
    sampling = replace(cfg.sampling, max_frames=high, min_frames=low)
    start = time.perf_counter()
    samples = synth.generate(trial.text_ids, trial.prompt, sampling, seeds)
    if trial.given:  # continuation: the output is the prompt and what follows it
        samples = [np.concatenate([trial.prompt, s], axis=1) for s in samples]
    waves = [synth.decode(s) for s in samples]
    timing["synthesis_s"] += time.perf_counter() - start
    timing["generated_s"] += made_seconds(samples, trial.given)
    timing["trials"] += 1

    first = u.id not in truth
    if first or keep_audio or trial.given:  # only scores are kept across tasks: memory stays flat in the set's size
        gt, resynth = evalset.audio(u), synth.decode(evalset.codes(u).astype(np.int64))
    if first:
        truth[u.id] = scorer.measure_all([gt, resynth], u.reference)
    prompt_embedding = scorer.embed(trial.prompt_audio)
    row = {
        "id": u.id,
        "speaker": u.speaker,
        "reference": u.reference,
        "prompt_id": u.prompt_id if task == "cross" else None,
    }
    for name, measured in zip(("ground_truth", "resynthesis"), truth[u.id]):
        row[name] = against(measured, prompt_embedding)
    scores = [against(m, prompt_embedding) for m in scorer.measure_all(waves, u.reference)]
    for s, codes in zip(scores, samples):
        s["frames"] = int(codes.shape[1])
        s["cut_at_max"] = int(codes.shape[1]) - trial.given >= high
    best = best_of(scores)
    row["single"] = scores[0]
    if len(scores) > 1:
        row["best_of_n"] = {**scores[best], "sample": best}
        row["metric_wise"] = metric_wise(scores)
    row["samples"] = [{k: s[k] for k in ("errors", "words", "sim", "frames")} for s in scores]
    if trial.given:
        add_generated(row, scorer, [gt, resynth, *waves], trial.given * HOP, prompt_embedding)
    if keep_audio:
        row["waves"] = {
            "prompt": trial.prompt_audio,
            "ground_truth": gt,
            "resynthesis": resynth,
            "single": waves[0],
            **({"best_of_n": waves[best]} if len(waves) > 1 else {}),
        }
    return row


def add_generated(row: dict, scorer: Scorer, waves: list[np.ndarray], cut: int, prompt_embedding) -> None:
    """Every row of a continuation gains `generated`: its audio after the prompt's `cut` samples
    scored alone, WER against the reference words after the prompt (the split, recorded in
    `row["split"]`, see generated.py) and SIM against the prompt. `waves`: the ground truth, the
    resynthesis and the N samples, whole."""
    plain = copy.copy(scorer)
    plain.dnsmos = None  # DNSMOS of the parts would double the scoring time (about 2 s of CPU a wave)
    gt = waves[0]
    heard_prompt, *parts = plain.measure_all([gt[:cut], *(w[cut:] for w in waves)], row["reference"])  # one batch
    words = normalize(row["reference"]).split()
    heard = [normalize(m["hypothesis"]).split() for m in (heard_prompt, parts[0])]
    k = split_reference(words, *heard, share=cut / len(gt))
    row["split"] = {"prompt_words": k, "words": len(words), "heard_in_prompt": heard_prompt["hypothesis"]}
    rest = " ".join(words[k:])

    def alone(scores: dict) -> dict:
        errors = word_errors(rest, scores["hypothesis"])
        return {**scores, "errors": errors.errors, "words": errors.words}

    truth, resynthesis, *samples = (alone(against(m, prompt_embedding)) for m in parts)
    row["ground_truth"]["generated"], row["resynthesis"]["generated"] = truth, resynthesis
    row["single"]["generated"] = samples[0]
    if "best_of_n" in row:  # the sample kept on the whole utterance, as VALL-E 2 keeps it
        row["best_of_n"]["generated"] = samples[row["best_of_n"]["sample"]]
        row["metric_wise"]["generated"] = metric_wise(samples)


def made_seconds(samples: list[np.ndarray], given: int) -> float:
    """Seconds of audio the model made in `samples` (K, T) codes: a continuation's first `given`
    frames are its prompt, not made."""
    return sum(s.shape[1] - given for s in samples) * HOP / SAMPLE_RATE


def _save(folder: Path, waves: dict[str, np.ndarray]) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, wave in waves.items():
        write_wav(folder / f"{name}.wav", wave)
        paths[name] = str(folder / f"{name}.wav")
    return paths


def summarize(rows: list[dict], samples: int) -> dict:
    out = {}
    for name in ROWS:
        scored = [r[name] for r in rows if name in r]
        if not scored:
            continue
        entry = {
            "wer": corpus_wer([WordErrors(s["errors"], s["words"]) for s in scored]),
            "sim": float(np.mean([s["sim"] for s in scored])),
            "utterances": len(scored),
        }
        if all("dnsmos" in s for s in scored):
            entry["dnsmos"] = float(np.mean([s["dnsmos"] for s in scored]))
        if name in ("single", "best_of_n"):
            entry["cut_at_max"] = sum(bool(s.get("cut_at_max")) for s in scored)
        out[name] = entry
    for name in ("best_of_n", "metric_wise"):
        if name in out:
            out[name]["n"] = samples
    summarize_generated(rows, out)
    return out


def guard_check(utterances: list[Utterance], guard: LengthGuard) -> dict:
    """The ground truth's frames per text token, against the length guard's bounds."""
    ratios = np.array([round(u.duration * FRAME_RATE) / max(1, len(u.text_tokens)) for u in utterances])
    if not len(ratios):
        return {}
    outside = int(((ratios < guard.min_per_token) | (ratios > guard.max_per_token)).sum())
    return {
        "frames_per_token": {
            "min": float(ratios.min()),
            "median": float(np.median(ratios)),
            "max": float(ratios.max()),
        },
        "guard": [guard.min_per_token, guard.max_per_token],
        "outside": outside,
    }
