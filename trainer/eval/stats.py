"""How far valle-eval's numbers can move: per-utterance mean WER beside the pooled one, 95 %
bootstrap intervals over utterances, and the paired bootstrap that compares two runs.

A row's scores are one dict per utterance with "errors", "words", "sim" and, when DNSMOS ran,
"dnsmos". Its statistics:
  wer       pooled: errors summed over the utterances over their words summed (jiwer's corpus WER)
  wer_mean  the mean over utterances of errors / words (what F5-TTS and seed-tts-eval report)
  sim, dnsmos  means over utterances
A bootstrap resample draws as many utterances as the row has, with replacement, and recomputes
each statistic on them (pooled WER as a ratio of the resample's sums); the interval is the 2.5th
and 97.5th percentile over RESAMPLES resamples drawn from a generator seeded SEED, so the same
scores give the same interval. Every statistic of a row (and both runs of a paired comparison)
uses the same resamples.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

SEED = 0
RESAMPLES = 1000
LEVEL = 0.95
METRICS = ("wer", "wer_mean", "sim", "dnsmos")
_CHUNK_ENTRIES = 1 << 21  # drawn indices held at once (16 MiB of int64), whatever the row's size


def settings() -> dict:
    """What the intervals are, as results.json records it."""
    return {"level": LEVEL, "over": "utterances", "seed": SEED, "resamples": RESAMPLES}


def columns(scored: list[dict]) -> dict[str, np.ndarray]:
    """The scores as arrays, one entry per utterance; dnsmos only when every utterance has it."""
    errors = np.array([s["errors"] for s in scored], dtype=np.float64)
    words = np.array([s["words"] for s in scored], dtype=np.float64)
    out = {
        "errors": errors,
        "words": words,
        # an utterance without reference words counts as wrong if anything was heard (WordErrors.wer)
        "wer": np.divide(errors, words, out=(errors > 0).astype(np.float64), where=words > 0),
        "sim": np.array([s["sim"] for s in scored], dtype=np.float64),
    }
    if scored and all("dnsmos" in s for s in scored):
        out["dnsmos"] = np.array([s["dnsmos"] for s in scored], dtype=np.float64)
    return out


def _statistics(cols: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    """Each statistic for every resample: idx is (R, n) utterance indices; returns (R,) arrays."""
    errors, words = cols["errors"][idx].sum(axis=1), cols["words"][idx].sum(axis=1)
    out = {
        "wer": np.divide(errors, words, out=np.zeros_like(errors), where=words > 0),
        "wer_mean": cols["wer"][idx].mean(axis=1),
        "sim": cols["sim"][idx].mean(axis=1),
    }
    if "dnsmos" in cols:
        out["dnsmos"] = cols["dnsmos"][idx].mean(axis=1)
    return out


def _resamples(n: int, seed: int, resamples: int) -> Iterator[np.ndarray]:
    """The bootstrap's index matrices, in chunks of rows so memory stays flat in n."""
    rng = np.random.default_rng(seed)
    per_chunk = max(1, _CHUNK_ENTRIES // max(n, 1))
    for start in range(0, resamples, per_chunk):
        yield rng.integers(0, n, size=(min(per_chunk, resamples - start), n))


def _bootstrap(cols_list: list[dict[str, np.ndarray]], seed: int, resamples: int) -> list[dict[str, np.ndarray]]:
    """Every statistic of each of the (equally long, aligned) score sets, on the same resamples."""
    n = len(cols_list[0]["errors"])
    chunks = [[_statistics(cols, idx) for cols in cols_list] for idx in _resamples(n, seed, resamples)]
    return [{k: np.concatenate([c[i][k] for c in chunks]) for k in chunks[0][i]} for i in range(len(cols_list))]


def _interval(values: np.ndarray) -> list[float]:
    tail = 100 * (1 - LEVEL) / 2
    return [float(v) for v in np.percentile(values, [tail, 100 - tail])]


def describe(scored: list[dict], seed: int = SEED, resamples: int = RESAMPLES) -> dict:
    """A row's statistics (wer, wer_mean, sim and, when every utterance has it, dnsmos), its
    `utterances`, and the 95 % `interval` of each statistic."""
    cols = columns(scored)
    point = _statistics(cols, np.arange(len(scored))[None])
    (boot,) = _bootstrap([cols], seed, resamples)
    return {k: float(v[0]) for k, v in point.items()} | {
        "utterances": len(scored),
        "interval": {k: _interval(v) for k, v in boot.items()},
    }


def paired(a: list[dict], b: list[dict], seed: int = SEED, resamples: int = RESAMPLES) -> dict[str, dict]:
    """Run B against run A on the same utterances (a[i] and b[i] score one utterance): per
    statistic, A, B, B - A and the 95 % interval of B - A from resampling utterances (the pair
    together). It `differs` when the interval leaves out 0."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired scores need the same utterances on both sides ({len(a)} vs {len(b)})")
    cols_a, cols_b = columns(a), columns(b)
    whole = np.arange(len(a))[None]
    point_a, point_b = _statistics(cols_a, whole), _statistics(cols_b, whole)
    boot_a, boot_b = _bootstrap([cols_a, cols_b], seed, resamples)
    out = {}
    for k in METRICS:
        if k in point_a and k in point_b:
            lo, hi = _interval(boot_b[k] - boot_a[k])
            va, vb = float(point_a[k][0]), float(point_b[k][0])
            out[k] = {"a": va, "b": vb, "diff": vb - va, "interval": [lo, hi], "differs": lo > 0 or hi < 0}
    return out
