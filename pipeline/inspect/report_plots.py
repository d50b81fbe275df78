"""Report plots: the numbers of pipeline.inspect.report drawn as PNG files, headless.

In: the dict `pipeline.inspect.report.collect` returns and a folder. Out: one PNG per figure in that
folder, and {figure name: (file name, caption)} for the page. matplotlib's Agg backend draws
without a display, so this runs on any server; figures are closed as soon as they are saved.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ROLE_COLORS = {"train": "#4C72B0", "dev": "#DD8452", "test": "#55A868"}
DPI = 110


def draw_all(stats: dict, folder: Path) -> dict[str, tuple[str, str]]:
    plots = {}
    for name, draw in (
        ("durations", _durations),
        ("text_tokens", _text_tokens),
        ("speaker_hours", _speaker_hours),
        ("codebooks", _codebooks),
        ("code_frequencies", _code_frequencies),
        ("cer", _cer),
        ("rejects", _rejects),
    ):
        caption = draw(stats, folder / f"{name}.png")
        if caption:
            plots[name] = (f"{name}.png", caption)
    return plots


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, metadata={"Software": None})  # no version stamp in the file
    plt.close(fig)


def _role_histograms(ax, hist: dict, bins: list, xlabel: str) -> None:
    edges = np.asarray(bins, float)
    for role, counts in hist.items():
        ax.stairs(
            counts,
            edges,
            label=role,
            color=ROLE_COLORS.get(role),
            fill=role == "train",
            alpha=0.6 if role == "train" else 1.0,
            linewidth=1.5,
        )
    used = [i for counts in hist.values() for i, c in enumerate(counts) if c]
    if used:  # the fixed bins reach far past most corpora: show the part that holds data
        ax.set_xlim(edges[0], min(edges[-1], max(edges[max(used) + 1] * 1.15, edges[len(edges) // 4])))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("utterances")
    ax.legend(title="role")
    ax.grid(alpha=0.3)


def _durations(stats: dict, path: Path) -> str:
    d = stats["durations"]
    _length_plot(d, path, "Utterance durations", "utterance duration (s); the last bin holds all longer")
    return f"Utterance durations in 0.5 s bins (longest {d['longest_s']:.1f} s)."


def _text_tokens(stats: dict, path: Path) -> str:
    t = stats["text_tokens"]
    _length_plot(t, path, "Text length", "BPE tokens per utterance; the last bin holds all longer")
    return f"Text tokens per utterance in bins of 4 (longest {t['longest']})."


def _length_plot(hist: dict, path: Path, title: str, xlabel: str) -> None:
    fig, ax = plt.subplots(figsize=(5.6, 3.5))
    _role_histograms(ax, hist["by_role"], hist["bins"], xlabel)
    ax.set_title(title)
    _save(fig, path)


def _speaker_hours(stats: dict, path: Path) -> str | None:
    speakers = stats["speakers"]
    if not speakers or not speakers["train_hours"]:
        return None
    hours = np.asarray(speakers["train_hours"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    left.hist(hours, bins=min(40, max(5, len(hours) // 5)), color=ROLE_COLORS["train"])
    left.set_xlabel("hours of a training speaker")
    left.set_ylabel("speakers")
    left.set_title("Hours per speaker")
    left.grid(alpha=0.3)
    right.plot(np.arange(1, len(hours) + 1), np.cumsum(hours) / hours.sum(), color=ROLE_COLORS["train"])
    right.set_xlabel("speakers, most hours first")
    right.set_ylabel("share of training hours")
    right.set_ylim(0, 1.02)
    right.set_title("Cumulative share")
    right.grid(alpha=0.3)
    _save(fig, path)
    return (
        f"{len(hours)} training speakers; median {speakers['median_hours']:.3g} h each. "
        "Right: how much of the training audio the top speakers hold."
    )


def _codebooks(stats: dict, path: Path) -> str | None:
    per = stats["codes"]["per_codebook"]
    if not stats["codes"]["frames"]:
        return None
    names, size = [c["codebook"] for c in per], stats["codes"]["codebook_size"]
    bits = np.log2(size)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax in (left, right):
        ax.set_xticks(names)
    left.bar(names, [100 * c["utilization"] for c in per], color="#4C72B0")
    left.set_ylim(0, 105)
    left.set_ylabel(f"% of {size:,} entries used")
    left.set_xlabel("codebook")
    left.set_title("Utilization")
    right.bar(names, [c["entropy_bits"] for c in per], color="#8172B2")
    right.axhline(bits, color="grey", linestyle="--", linewidth=1)
    right.set_ylim(0, bits + 0.5)
    right.set_ylabel(f"bits ({bits:g}: all entries equally used)")
    right.set_xlabel("codebook")
    right.set_title("Entropy")
    _save(fig, path)
    return f"Share of each codebook's {size:,} entries that occur, and the entropy of its code distribution."


def _code_frequencies(stats: dict, path: Path) -> str | None:
    codes = stats["codes"]
    if not codes["frames"]:
        return None
    fig, ax = plt.subplots(figsize=(5.6, 3.5))
    cmap = plt.get_cmap("viridis")
    n = len(codes["sorted_frequencies"])
    for k, counts in enumerate(codes["sorted_frequencies"]):
        share = np.asarray(counts, float) / max(codes["frames"], 1)
        used = share[share > 0]
        ax.plot(np.arange(1, len(used) + 1), used, color=cmap(k / max(n - 1, 1)), label=f"{k + 1}")
    ax.axhline(1 / codes["codebook_size"], color="grey", linestyle="--", linewidth=1, label="uniform")
    ax.set_yscale("log")
    ax.set_xlim(0, codes["codebook_size"])
    ax.set_xlabel("code rank (most frequent first)")
    ax.set_ylabel("share of frames")
    ax.set_title("Code frequencies by rank")
    ax.legend(title="codebook", ncol=3, fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)
    return (
        "Each codebook's codes from most to least frequent. A healthy codec gives long, gently "
        "falling curves; a collapsed one a few codes holding almost everything."
    )


def _cer(stats: dict, path: Path) -> str | None:
    cer = stats["cer"]
    if not cer:
        return None
    edges = np.asarray(cer["bins"], float)
    fig, ax = plt.subplots(figsize=(5.6, 3.5))
    ax.stairs(cer["accepted"], edges, fill=True, alpha=0.7, color="#4C72B0", label="kept")
    rejected = stats["rejects"]["text_mismatch_cer"]
    if any(rejected):
        ax.stairs(rejected, edges, fill=True, alpha=0.7, color="#C44E52", label="rejected (text_mismatch)")
    limit = stats["provenance"].get("filter", {}).get("max_text_cer")
    if limit is not None:
        ax.axvline(limit, color="black", linestyle="--", linewidth=1, label=f"max_text_cer {limit:g}")
    ax.set_yscale("symlog", linthresh=1)
    ax.set_xlabel("CER, book text vs ASR text; last bin: 1 and above")
    ax.set_ylabel("utterances")
    ax.set_title("Transcript agreement")
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, path)
    return "Character error rate between each cut's book text and its ASR text, in bins of 0.01."


def _rejects(stats: dict, path: Path) -> str | None:
    by_reason = stats["rejects"]["by_reason"]
    if not by_reason:
        return None
    reasons = list(by_reason)[::-1]
    fig, ax = plt.subplots(figsize=(5.6, 1.0 + 0.4 * len(reasons)))
    bars = ax.barh(reasons, [by_reason[r] for r in reasons], color="#C44E52")
    ax.bar_label(bars, padding=3)
    ax.set_xlabel("cuts")
    ax.set_title("Rejected cuts by reason")
    ax.margins(x=0.15)
    _save(fig, path)
    return "Cuts dropped by the pipeline, by reason (OUT/rejects.jsonl)."
