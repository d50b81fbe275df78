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
WER is errors over reference words summed over the set (wer_mean: the mean of per-utterance
WERs); SIM and DNSMOS are means; each with its 95 % bootstrap interval over utterances (stats.py).
Sampling runs (EvalConfig.seeds = K): the model rows K times with distinct seeds, the ground truth
and resynthesis measured once; the tables are run 0's, beside each run's summary and their spread.
A back-end raising on a wave fails that trial alone: counted by reason, the run goes on.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from schemas.evalset import EvalSet, Utterance
from tokens.audio import write_wav
from trainer.eval import stats
from trainer.eval.backends import cosine, to_16k
from trainer.eval.generated import split_reference, summarize_generated
from trainer.eval.store import RowStore
from trainer.eval.wer import NORMALIZATION, WordErrors, normalizer_named, word_errors
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
    seed: int = 0  # sample k of every utterance draws from a generator seeded seed + k (in run 0)
    seeds: int = 1  # K independent sampling runs: run r's sample k is seeded seed + r * samples + k
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
        if self.seeds < 1:
            raise ValueError(f"seeds={self.seeds}: at least 1")


class BackendFailed(Exception):
    """A back-end raised on a wave: its trial is counted as failed and the run goes on."""

    def __init__(self, backend: str, err: Exception):
        said = (str(err).strip().splitlines() or [""])[0][:200]
        super().__init__(f"{backend}: {type(err).__name__}" + (f": {said}" if said else ""))


def _calling(backend: str, fn, *args):
    """fn(*args), its exception (whatever its kind) a BackendFailed naming the back-end."""
    try:
        return fn(*args)
    except Exception as err:
        raise BackendFailed(backend, err) from err


class Scorer:
    """ASR, speaker and (optional) DNSMOS back-ends together, and the WER text normalization.
    `rate`: the sample rate of the waves it is given (the codec's; 24 kHz for every codec here),
    resampled to 16 kHz for the back-ends."""

    def __init__(self, asr, speaker, dnsmos=None, normalizer: str = NORMALIZATION, rate: int = 24000):
        self.asr, self.speaker, self.dnsmos, self.rate = asr, speaker, dnsmos, rate
        normalizer_named(normalizer)("")  # an unknown name or a missing package fails here, not mid-run
        self.normalizer = normalizer

    def describe(self) -> dict:
        return {
            "asr": self.asr.description,
            "speaker": self.speaker.description,
            "dnsmos": self.dnsmos.description if self.dnsmos else None,
            "wer_normalization": self.normalizer,
        }

    def embed(self, wave: np.ndarray) -> np.ndarray:
        return _calling("speaker", self.speaker.embed, to_16k(wave, self.rate))

    def measure(self, wave: np.ndarray, reference: str) -> dict:
        return self.measure_all([wave], reference)[0]

    def measure_all(self, waves_in: list[np.ndarray], reference: str, quality: bool = True) -> list[dict]:
        """What does not depend on the prompt, for renditions of one text: what the ASR heard
        (all in one call), its word errors, DNSMOS (unless `quality` is off), and the speaker
        embedding (None for audio too short to carry a voice). `against` adds SIM."""
        waves = [to_16k(w, self.rate) for w in waves_in]
        heard = iter(_calling("asr", self.asr.transcribe_all, [w for w in waves if len(w)]))
        measured = []
        for wave in waves:
            hypothesis = next(heard) if len(wave) else ""
            errors = word_errors(reference, hypothesis, self.normalizer)
            out = {"hypothesis": hypothesis, "errors": errors.errors, "words": errors.words}
            out["embedding"] = _calling("speaker", self.speaker.embed, wave) if len(wave) > RATE_MIN else None
            if quality and self.dnsmos and len(wave):
                out["dnsmos"] = _calling("dnsmos", self.dnsmos.score, wave)["p808"]
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
    prompt_audio: np.ndarray  # float32 at the codec's rate: the voice SIM compares with
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
        P = synth.frames(cfg.prompt_seconds)
        if codes.shape[1] < P + int(synth.frame_rate / 2):
            return "shorter than the prompt + 0.5 s"
        audio = evalset.audio(u)[: P * synth.codec.spec.hop]
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
    synth: Synthesizer,
    evalset: EvalSet,
    scorer: Scorer,
    cfg: EvalConfig,
    audio_dir: Path | None = None,
    progress=True,
    store: RowStore | None = None,
) -> dict:
    """Run every task on the set, cfg.seeds times; returns the results (see report.py for what is
    written). Rows already in `store` are taken as they are; each new one is added to it as made.
    The tables are sampling run 0's; with more runs, each run's summary and their spread too."""
    utterances = evalset.first(cfg.max_utterances)
    store = store if store is not None else RowStore(None, {})
    truth: dict[str, list] = {}  # per utterance: ground truth and resynthesis measured (each model once)
    results: dict = {"tasks": {}, "timing": {"synthesis_s": 0.0, "generated_s": 0.0, "trials": 0}}
    for task in cfg.tasks:
        runs = [
            _sampling_run(task, run, utterances, synth, evalset, scorer, cfg, truth, audio_dir, store, progress)
            for run in range(cfg.seeds)
        ]
        summaries = [summarize(run["rows"], cfg.samples) for run in runs]
        results["tasks"][task] = {
            "summary": summaries[0],
            "skipped": runs[0]["skipped"],
            "failed": _count(reason for run in runs for reason in run["failed"]),
            "utterances": runs[0]["rows"],
        }
        if cfg.seeds > 1:
            results["tasks"][task] |= across_runs(runs, summaries)
        for row in (row for run in runs for row in run["rows"]):
            for key, value in row["timing"].items():
                results["timing"][key] += value
            results["timing"]["trials"] += 1
    t = results["timing"]
    t["seconds_per_trial"] = t["synthesis_s"] / t["trials"] if t["trials"] else None
    t["real_time_factor"] = t["synthesis_s"] / t["generated_s"] if t["generated_s"] else None
    results["set"] = {"utterances": len(utterances), "speakers": len({u.speaker for u in utterances})}
    results["length_guard"] = guard_check(utterances, cfg.guard)
    results["bootstrap"] = stats.settings()  # what the summaries' intervals are
    results["settings"] = {**asdict(cfg), "tasks": list(cfg.tasks)}
    for bound in ("max_frames", "min_frames"):  # set per utterance by the guard, not by these
        results["settings"]["sampling"].pop(bound)
    return results


def _sampling_run(task, run, utterances, synth, evalset, scorer, cfg, truth, audio_dir, store, progress) -> dict:
    """One task's trials drawing run `run`'s seeds: its rows in set order (those in `store` as
    they are, the others made and stored), what was skipped and what failed, by reason."""
    seeds = [cfg.seed + run * cfg.samples + k for k in range(cfg.samples)]
    rows, skipped, failed = [], [], []
    desc = task if cfg.seeds == 1 else f"{task}, run {run}"
    for n, u in enumerate(tqdm(utterances, desc=desc, unit="utt", disable=not progress)):
        row = store.get(run, task, u.id)
        if row is None:
            trial = make_trial(task, u, evalset, synth, cfg)
            if isinstance(trial, str):
                skipped.append(trial)
                continue
            on_page = audio_dir is not None and run == 0 and n < cfg.page_utterances  # its audio for the page
            try:
                row = _run_trial(trial, task, synth, evalset, scorer, cfg, seeds, truth, on_page)
            except SynthError as err:  # the models cannot take it (text or prompt too long)
                skipped.append(str(err))
                continue
            except BackendFailed as err:  # counted; not stored, so the next run tries it again
                failed.append(str(err))
                continue
            if on_page:  # saved before the row is stored: a resumed run's page plays it
                row["audio"] = _save(audio_dir, Path(task, f"{n:04d}"), row.pop("waves"), synth.sample_rate)
            store.add(run, task, row)
        rows.append(row)
    return {"seeds": seeds, "rows": rows, "skipped": _count(skipped), "failed": failed}


def _count(reasons) -> dict[str, int]:
    return dict(Counter(reasons))


def across_runs(runs: list[dict], summaries: list[dict]) -> dict:
    """K sampling runs of one task: each run's seeds, summary, failures (and rows, run 0's being
    the task's `utterances`), and per model row and metric the mean, standard deviation (ddof 1),
    min and max of the runs' values."""
    spread = {}
    for name in ("single", "best_of_n", "metric_wise"):
        entries = [s[name] for s in summaries if name in s]
        if len(entries) == len(runs):
            metrics = [m for m in ("wer", "wer_mean", "sim", "dnsmos") if all(m in e for e in entries)]
            spread[name] = {m: _spread([e[m] for e in entries]) for m in metrics}
    listed = [
        {"seeds": run["seeds"], "summary": summary, "failed": _count(run["failed"])}
        | ({"utterances": run["rows"]} if r else {})
        for r, (run, summary) in enumerate(zip(runs, summaries))
    ]
    return {"runs": listed, "across_runs": spread}


def _spread(values: list[float]) -> dict:
    return {
        "mean": float(np.mean(values)),
        "std": float(np.std(values, ddof=1)),
        "min": float(min(values)),
        "max": float(max(values)),
    }


def _run_trial(trial, task, synth, evalset, scorer, cfg, seeds, truth, keep_audio: bool) -> dict:
    u = trial.utterance
    room = max(1, synth.max_audio_frames - trial.prompt.shape[1])
    low, high = cfg.guard.bounds(trial.target_tokens, synth.frame_rate, given=trial.given, room=room)
    sampling = replace(cfg.sampling, max_frames=high, min_frames=low)
    start = time.perf_counter()
    samples = synth.generate(trial.text_ids, trial.prompt, sampling, seeds)
    if trial.given:  # continuation: the output is the prompt and what follows it
        samples = [np.concatenate([trial.prompt, s], axis=1) for s in samples]
    waves = [synth.decode(s) for s in samples]
    made = made_seconds(samples, trial.given, synth.frame_rate)
    timing = {"synthesis_s": time.perf_counter() - start, "generated_s": made}

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
        "timing": timing,  # kept with the row: a resumed run's speed counts every trial once
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
        add_generated(row, scorer, [gt, resynth, *waves], trial.given * synth.codec.spec.hop, prompt_embedding)
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
    gt, normalize = waves[0], normalizer_named(scorer.normalizer)
    pieces = [gt[:cut], *(w[cut:] for w in waves)]
    # One batch; no DNSMOS: the parts' would double the scoring time (about 2 s of CPU a wave).
    heard_prompt, *parts = scorer.measure_all(pieces, row["reference"], quality=False)
    words = normalize(row["reference"]).split()
    heard = [normalize(m["hypothesis"]).split() for m in (heard_prompt, parts[0])]
    k = split_reference(words, *heard, share=cut / len(gt))
    row["split"] = {"prompt_words": k, "words": len(words), "heard_in_prompt": heard_prompt["hypothesis"]}
    rest = " ".join(words[k:])

    def alone(scores: dict) -> dict:
        errors = word_errors(rest, scores["hypothesis"], scorer.normalizer)
        return {**scores, "errors": errors.errors, "words": errors.words}

    truth, resynthesis, *samples = (alone(against(m, prompt_embedding)) for m in parts)
    row["ground_truth"]["generated"], row["resynthesis"]["generated"] = truth, resynthesis
    row["single"]["generated"] = samples[0]
    if "best_of_n" in row:  # the sample kept on the whole utterance, as VALL-E 2 keeps it
        row["best_of_n"]["generated"] = samples[row["best_of_n"]["sample"]]
        row["metric_wise"]["generated"] = metric_wise(samples)


def made_seconds(samples: list[np.ndarray], given: int, frame_rate: float) -> float:
    """Seconds of audio the model made in `samples` (K, T) codes at `frame_rate` frames/s: a
    continuation's first `given` frames are its prompt, not made."""
    return sum(s.shape[1] - given for s in samples) / frame_rate


def _save(audio_dir: Path, sub: Path, waves: dict[str, np.ndarray], rate: int) -> dict[str, str]:
    """Write the waves under audio_dir/sub; their paths relative to the page (audio_dir's parent),
    so the stored rows hold the same paths whatever folder a run or its resumption started in."""
    (audio_dir / sub).mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, wave in waves.items():
        write_wav(audio_dir / sub / f"{name}.wav", wave, rate)
        paths[name] = str(Path(audio_dir.name, sub, f"{name}.wav"))
    return paths


def summarize(rows: list[dict], samples: int) -> dict:
    out = {}
    for name in ROWS:
        scored = [r[name] for r in rows if name in r]
        if not scored:
            continue
        entry = stats.describe(scored)  # pooled and mean WER, SIM, DNSMOS, each with its 95 % interval
        if name in ("single", "best_of_n"):
            entry["cut_at_max"] = sum(bool(s.get("cut_at_max")) for s in scored)
        out[name] = entry
    for name in ("best_of_n", "metric_wise"):
        if name in out:
            out[name]["n"] = samples
    summarize_generated(rows, out)
    return out


def guard_check(utterances: list[Utterance], guard: LengthGuard) -> dict:
    """The ground truth's seconds of speech per text token, against the length guard's bounds."""
    ratios = np.array([u.duration / max(1, len(u.text_tokens)) for u in utterances])
    if not len(ratios):
        return {}
    outside = int(((ratios < guard.min_per_token) | (ratios > guard.max_per_token)).sum())
    return {
        "seconds_per_token": {
            "min": float(ratios.min()),
            "median": float(np.median(ratios)),
            "max": float(ratios.max()),
        },
        "guard": [guard.min_per_token, guard.max_per_token],
        "outside": outside,
    }
