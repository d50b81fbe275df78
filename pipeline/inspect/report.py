"""Report: what a finished corpus holds, for a person to look at before spending GPU weeks on it.

In: a corpus with index.json, lengths.parquet, rejects.jsonl and shards: a folder, or an
http(s):// or s3:// location read through schemas.reading and storage.remote, as the trainer
reads it. Out:
`collect(location)`, the numbers (a JSON-able dict, also written to report.json);
`write_report(location, folder)` adds index.html with PNG plots (pipeline.inspect.report_plots) in
`folder` (default OUT/report for a folder); `summary_text(stats)` is the short text printed by
`valle-prep report`.

Everything is streamed and memory stays flat in corpus size: lengths.parquet a batch of shards
at a time into fixed-size histograms, rejects.jsonl line by line, codes shard by shard through
the formats' readers (schemas.reading.read_shard, the one place that decodes codes) into one
(codebooks x the recorded codebook size) count table. What grows is one number per speaker (~7 k
in Libriheavy) and the set of speakers and books of each subset. Durations are the samples' codec
frames / the frame rate index.json records of the codec (75 for EnCodec, 12.5 for Mimi).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from schemas.codes import CodesSpace
from schemas.reading import index_shards, read_index, read_shard
from storage.files import write_json_atomic
from storage.remote import is_remote, join, open_random_access, open_text

# Fixed histogram bins: the last bin of each also counts everything above it.
DURATION_BINS = np.arange(0.0, 40.5, 0.5)  # seconds
TOKEN_BINS = np.arange(0, 404, 4)  # BPE tokens
CER_BINS = np.round(np.arange(0.0, 1.01, 0.01), 2)
EXAMPLES_PER_REASON = 3
TOP_CODES = 8
TOP_SPEAKERS = 10
FRAMES_PER_ENTRY = 100  # below this many frames per codebook entry, unused entries say little


class ReportError(ValueError):
    """OUT is not a finished corpus; the message says what to do."""


def report_dir(location) -> Path:
    """Where the report goes by default: OUT/report for a folder, ./report for a remote corpus."""
    return Path("report") if is_remote(location) else Path(location) / "report"


def collect(out, *, code_shards: int | None = None, progress: bool = True) -> dict:
    """Every number of the report for the corpus at `out` (a folder or a URL). `code_shards`:
    read codes from that many shards, spread evenly over the corpus (None: all of them); the
    other figures always cover every sample."""
    out = str(out)
    index = read_index(out, ReportError)
    roles = {name: s["role"] for name, s in index["subsets"].items()}
    stats = {
        "out": str(out),
        "provenance": {**index["provenance"], "dag": index["dag"], "pipeline_version": index["pipeline_version"]},
        "subsets": {
            name: {"role": s["role"], "samples": s["samples"], "hours": s["hours"]}
            for name, s in index["subsets"].items()
        },
    }
    stats.update(_lengths_stats(out, index, roles))
    stats["rejects"] = _reject_stats(out, index)
    stats["codes"] = _code_stats(out, index, code_shards, progress)
    stats["warnings"] = _warnings(stats)
    return stats


def write_report(out, folder: Path | None = None, *, code_shards: int | None = None, progress: bool = True) -> dict:
    """Collect, then write {report.json, index.html, *.png} into `folder` (default:
    `report_dir(out)`); returns the numbers."""
    from pipeline.inspect import report_html, report_plots

    stats = collect(out, code_shards=code_shards, progress=progress)
    folder = Path(folder) if folder is not None else report_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    plots = report_plots.draw_all(stats, folder)
    write_json_atomic(folder / "report.json", stats)
    report_html.write_page(stats, plots, folder / "index.html")
    return stats


# ------------------------------------------------------------------------------------- inputs


def _histogram(values: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """Counts per bin [bins[i], bins[i+1]); the last bin also takes everything above."""
    clipped = np.minimum(values, bins[-1])
    counts = np.bincount(
        np.clip(np.searchsorted(bins, clipped, side="right") - 1, 0, len(bins) - 1), minlength=len(bins)
    )
    counts[-2] += counts[-1]  # values at or above the last edge
    return counts[:-1]


def _lengths_stats(out: str, index: dict, roles: dict[str, str]) -> dict:
    with open_random_access(join(out, index["lengths"]["path"])) as source:
        return _lengths_of(pq.ParquetFile(source), index, roles)


def has_books(index: dict) -> bool:
    """Whether the corpus's recordings are LibriLight chapters, whose folder names their book:
    Libriheavy's (an index without `provenance.source` predates the other kinds)."""
    return index["provenance"].get("source", {}).get("kind", "libriheavy") == "libriheavy"


def _lengths_of(lengths: pq.ParquetFile, index: dict, roles: dict[str, str]) -> dict:
    subset_of = {s["id"]: s["subset"] for s in index["shards"]}
    names = set(lengths.schema_arrow.names)
    columns = [c for c in ("shard", "frames", "text_tokens", "speaker", "recording_id", "text_cer") if c in names]
    durations = defaultdict(lambda: np.zeros(len(DURATION_BINS) - 1, np.int64))  # by role
    tokens = defaultdict(lambda: np.zeros(len(TOKEN_BINS) - 1, np.int64))
    cer_hist, cer_missing, cer_sum, cer_count = np.zeros(len(CER_BINS) - 1, np.int64), 0, 0.0, 0
    speaker_seconds: dict[str, float] = defaultdict(float)  # training speakers
    speakers = defaultdict(set)  # by subset; books too, where recordings are LibriLight chapters
    books = defaultdict(set) if has_books(index) else None
    longest = {"seconds": 0.0, "tokens": 0}
    frame_rate = CodesSpace.of_index(index).frame_rate
    for batch in lengths.iter_batches(batch_size=8, columns=columns):
        for row in batch.to_pylist():
            subset = subset_of.get(row["shard"])
            if subset is None:
                raise ReportError(
                    f"{index['lengths']['path']}: shard {row['shard']} is not in index.json; run valle-prep verify"
                )
            role = roles[subset]
            seconds = np.asarray(row["frames"], np.float64) / frame_rate
            n_tokens = np.asarray(row["text_tokens"], np.int64)
            durations[role] += _histogram(seconds, DURATION_BINS)
            tokens[role] += _histogram(n_tokens, TOKEN_BINS)
            longest = {
                "seconds": max(longest["seconds"], float(seconds.max())),
                "tokens": max(longest["tokens"], int(n_tokens.max())),
            }
            if "text_cer" in row:
                cers = np.array([c for c in row["text_cer"] if c is not None], np.float64)
                cer_missing += len(row["text_cer"]) - len(cers)
                cer_hist += _histogram(cers, CER_BINS)
                cer_sum, cer_count = cer_sum + float(cers.sum()), cer_count + len(cers)
            if "speaker" in row:
                speakers[subset].update(row["speaker"])
                if books is not None:
                    books[subset].update(book_of(r) for r in row["recording_id"])
                if role == "train":
                    for speaker, s in zip(row["speaker"], seconds.tolist()):
                        speaker_seconds[speaker] += s
    return {
        "durations": {
            "bins": DURATION_BINS.tolist(),
            "by_role": {r: h.tolist() for r, h in durations.items()},
            "longest_s": round(longest["seconds"], 3),
        },
        "text_tokens": {
            "bins": TOKEN_BINS.tolist(),
            "by_role": {r: h.tolist() for r, h in tokens.items()},
            "longest": longest["tokens"],
        },
        "cer": (
            {
                "bins": CER_BINS.tolist(),
                "accepted": cer_hist.tolist(),
                "without_asr_text": cer_missing,
                "mean": round(cer_sum / cer_count, 4) if cer_count else None,
                "quantiles": _quantiles(cer_hist, CER_BINS, (0.5, 0.9, 0.99)),
            }
            if "text_cer" in names
            else None
        ),
        "speakers": _speaker_stats(speaker_seconds, speakers, books, roles) if "speaker" in names else None,
    }


def book_of(recording_id: str) -> str:
    """The LibriVox book of a LibriLight chapter <subset>/<speaker>/<book>/<chapter>: its folder
    name, so that one book read by two speakers, or found in two subsets, is one book."""
    parts = recording_id.split("/")
    return parts[-2] if len(parts) >= 2 else recording_id


def _quantiles(hist: np.ndarray, bins: np.ndarray, qs) -> dict[str, float]:
    """Upper edges of the bins holding each quantile (within one bin width)."""
    total = int(hist.sum())
    if not total:
        return {}
    cumulative = np.cumsum(hist)
    return {
        f"p{round(q * 100)}": float(bins[min(int(np.searchsorted(cumulative, q * total)) + 1, len(bins) - 1)])
        for q in qs
    }


def _speaker_stats(seconds: dict[str, float], speakers, books, roles) -> dict:
    """Hours per training speaker, and each subset's speakers (and books, None where the source
    has none) also found in training."""
    ranked = sorted(seconds.items(), key=lambda kv: (-kv[1], kv[0]))
    hours = np.array([s for _, s in ranked]) / 3600
    train = [subset for subset, role in roles.items() if role == "train"]
    train_speakers = set().union(*(speakers[s] for s in train))
    train_books = set().union(*(books[s] for s in train)) if books is not None else None
    leaks = {}
    for subset, role in roles.items():
        if role != "train":
            leaks[subset] = {
                "speakers": sorted(speakers[subset] & train_speakers),
                "books": sorted(books[subset] & train_books) if books is not None else None,
            }
    return {
        "per_subset": {
            s: {"speakers": len(speakers[s]), "books": len(books[s]) if books is not None else None} for s in roles
        },
        "train_hours": [round(float(h), 6) for h in hours],  # one per training speaker, most first
        "top": [[name, round(s / 3600, 6)] for name, s in ranked[:TOP_SPEAKERS]],
        "bottom": [[name, round(s / 3600, 6)] for name, s in ranked[-TOP_SPEAKERS:]][::-1],
        "median_hours": round(float(np.median(hours)), 6) if len(hours) else None,
        "leakage": leaks,
    }


def _reject_stats(out: str, index: dict) -> dict:
    counts, examples = Counter(), defaultdict(list)
    mismatch_cer = np.zeros(len(CER_BINS) - 1, np.int64)
    with open_text(join(out, index["rejects"]["path"])) as lines:
        for line in lines:
            row = json.loads(line)
            reason = row["reason"]
            counts[reason] += 1
            if len(examples[reason]) < EXAMPLES_PER_REASON:
                examples[reason].append({k: row.get(k, "") for k in ("subset", "cut_id", "detail")})
            if row.get("text_cer") is not None:
                mismatch_cer += _histogram(np.array([row["text_cer"]]), CER_BINS)
    return {
        "total": sum(counts.values()),
        "by_reason": dict(counts.most_common()),
        "examples": dict(examples),
        "text_mismatch_cer": mismatch_cer.tolist(),
    }


def _code_stats(out: str, index: dict, code_shards: int | None, progress: bool) -> dict:
    shards = index_shards(out, index, error=ReportError) if index["shards"] else []  # the format the trainer reads
    fmt, shards_total = (shards[0].format if shards else "parquet"), len(shards)
    if code_shards is not None and code_shards < len(shards):
        shards = [shards[i] for i in np.linspace(0, len(shards) - 1, code_shards).round().astype(int)]
    codebooks, size = index["codes"]["codebooks"], CodesSpace.of_index(index).codebook_size
    counts = np.zeros(codebooks * size, np.int64)
    offsets = (np.arange(codebooks, dtype=np.int64) * size)[:, None]  # codebook k -> row k
    samples = 0
    for shard in tqdm(shards, desc="report: codes", unit="shard", disable=not progress):
        for _, _, codes in read_shard(shard):
            counts += np.bincount((codes + offsets).ravel(), minlength=counts.size)
            samples += 1
    counts = counts.reshape(codebooks, size)
    per_codebook = []
    for k in range(codebooks):
        total = int(counts[k].sum())
        p = counts[k][counts[k] > 0] / max(total, 1)
        top = np.argsort(-counts[k], kind="stable")[:TOP_CODES]
        per_codebook.append(
            {
                "codebook": k + 1,
                "used": int((counts[k] > 0).sum()),
                "utilization": round(float((counts[k] > 0).mean()), 6),
                "entropy_bits": round(float(-(p * np.log2(p)).sum()), 4),
                "top": [[int(c), round(float(counts[k][c]) / max(total, 1), 6)] for c in top if counts[k][c]],
            }
        )
    return {
        "format": fmt,
        "shards_read": len(shards),
        "shards_total": shards_total,
        "samples": samples,
        "codebook_size": size,  # the codec's, as index.json records it
        "frames": int(counts[0].sum()) if codebooks else 0,
        "per_codebook": per_codebook,
        "sorted_frequencies": [np.sort(counts[k])[::-1].tolist() for k in range(codebooks)],
    }


def _warnings(stats: dict) -> list[str]:
    out, codec = [], CodesSpace.of_record(stats["provenance"]["codec"])
    if stats["provenance"]["codec"]["weights"] == "random":
        out.append(
            f"The codes come from a RANDOM-INIT {codec.model} codec (an offline test build): they carry no speech."
        )
    for subset, leak in ((stats["speakers"] or {}).get("leakage") or {}).items():
        for kind in ("speakers", "books"):
            if leak[kind]:  # books: None where the source has none
                shown = ", ".join(leak[kind][:5]) + (" ..." if len(leak[kind]) > 5 else "")
                out.append(f"Leakage: {kind} of {subset} that also occur in training data ({len(leak[kind])}): {shown}")
    frames = stats["codes"]["frames"]
    for cb in stats["codes"]["per_codebook"]:
        # Too few frames leave entries unused in any codec; one code holding most frames does not.
        enough = frames >= FRAMES_PER_ENTRY * codec.codebook_size
        if (enough and cb["utilization"] < 0.5) or (cb["top"] and cb["top"][0][1] > 0.5):
            out.append(
                f"Codebook {cb['codebook']}: {cb['used']} of {codec.codebook_size} entries used, the most "
                f"frequent code in {cb['top'][0][1]:.0%} of frames: a collapsed codec?"
            )
    if stats["speakers"] is None:
        out.append(
            "lengths.parquet has no speaker column (a corpus from an older version): "
            "no speaker, book or leakage figures."
        )
    return out


def summary_text(stats: dict) -> str:
    """A few lines for the terminal: totals, codebooks, rejects, warnings."""
    lines = [f"corpus {stats['out']}"]
    for name, s in stats["subsets"].items():
        extra = ""
        if stats["speakers"]:
            per = stats["speakers"]["per_subset"][name]
            books = f", {per['books']} books" if per["books"] is not None else ""
            extra = f", {per['speakers']} speakers{books}"
        lines.append(f"  {name:<16} {s['role']:<5} {s['hours']:>10.3f} h {s['samples']:>10} utterances{extra}")
    codes = stats["codes"]
    lines.append(
        f"codebooks ({codes['frames']} frames of {codes['shards_read']}/{codes['shards_total']} shards): "
        + "  ".join(
            f"{c['codebook']}: {c['utilization']:.0%} used, {c['entropy_bits']:.2f} bits" for c in codes["per_codebook"]
        )
    )
    if stats["cer"] and stats["cer"]["mean"] is not None:
        q = stats["cer"]["quantiles"]
        lines.append(
            f"transcript CER of kept cuts: mean {stats['cer']['mean']:.3f}, "
            f"median <= {q['p50']:.2f}, 99% <= {q['p99']:.2f} "
            f"(filter.max_text_cer: {stats['provenance'].get('filter', {}).get('max_text_cer', 'n/a')})"
        )
    rejects = stats["rejects"]
    lines.append(f"rejects: {rejects['total']}" + "".join(f", {k} {v}" for k, v in rejects["by_reason"].items()))
    lines += [f"WARNING: {w}" for w in stats["warnings"]]
    return "\n".join(lines)
