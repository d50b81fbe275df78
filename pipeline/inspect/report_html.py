"""Report page: the numbers of pipeline.inspect.report and the plots of pipeline.inspect.report_plots as one
self-contained HTML file (OUT/report/index.html; the PNGs sit beside it). Every value from the
corpus is HTML-escaped: cut ids and texts come from manifests."""

from __future__ import annotations

import math
from html import escape
from pathlib import Path

from storage.files import write_bytes_atomic
from tokens.codec_settings import describe_stack

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.7em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.warn { background: #fff3cd; border: 1px solid #e0c060; padding: 0.6em 1em; margin: 0.4em 0; border-radius: 4px; }
.ok { color: #2d7a2d; } figure { margin: 1em 0; } figcaption { color: #555; font-size: 0.9em; }
img { max-width: 100%; border: 1px solid #eee; } code { font-size: 0.9em; word-break: break-all; }
.cols { display: flex; gap: 1.5em; flex-wrap: wrap; align-items: flex-start; }
.cols figure { flex: 1 1 480px; margin: 0.5em 0; } .cols > div { flex: 0 0 auto; }
"""


def write_page(stats: dict, plots: dict[str, tuple[str, str]], path: Path) -> None:
    body = [f"<h1>Corpus report</h1><p><code>{escape(stats['out'])}</code></p>"]
    body += [f'<div class="warn">&#9888; {escape(w)}</div>' for w in stats["warnings"]]
    body += _overview(stats, plots)
    body += _speakers(stats, plots)
    body += _codes(stats, plots)
    body += _transcripts(stats, plots)
    body += _rejects(stats, plots)
    body += _provenance(stats)
    html = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Corpus report: {escape(stats['provenance']['dag']['name'])}</title>"
        f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
    write_bytes_atomic(path, html.encode())


def _table(header: list[str], rows: list[list], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    lines = [
        "".join(
            f'<td class="num">{escape(str(v))}</td>' if i in numeric else f"<td>{escape(str(v))}</td>"
            for i, v in enumerate(row)
        )
        for row in rows
    ]
    return f"<table><tr>{head}</tr>" + "".join(f"<tr>{line}</tr>" for line in lines) + "</table>"


def _figure(plots: dict, name: str) -> list[str]:
    if name not in plots:
        return []
    file, caption = plots[name]
    return [
        f'<figure><img src="{escape(file)}" alt="{escape(caption)}"><figcaption>{escape(caption)}</figcaption></figure>'
    ]


_BOOKS = (
    "<p>Speakers and books of each subset; a book is the LibriLight book folder, whoever "
    "reads it and in whichever subset.</p>"
)
_NO_BOOKS = "<p>Speakers of each subset (books: only where the recordings are LibriLight chapters).</p>"


def _or_na(value) -> str:
    return "n/a" if value is None else value


def _overview(stats: dict, plots: dict) -> list[str]:
    per = (stats["speakers"] or {}).get("per_subset", {})
    rows = [
        [
            name,
            s["role"],
            f"{s['hours']:,.3f}",
            f"{s['samples']:,}",
            per.get(name, {}).get("speakers", "n/a"),
            _or_na(per.get(name, {}).get("books")),
        ]
        for name, s in stats["subsets"].items()
    ]
    total_h = sum(s["hours"] for s in stats["subsets"].values())
    total_n = sum(s["samples"] for s in stats["subsets"].values())
    rows.append(["all", "", f"{total_h:,.3f}", f"{total_n:,}", "", ""])
    return (
        [
            "<h2>Subsets</h2>",
            _table(["subset", "role", "hours", "utterances", "speakers", "books"], rows, {2, 3, 4, 5}),
            _NO_BOOKS if any(p.get("books", 0) is None for p in per.values()) else _BOOKS,
            '<div class="cols">',
        ]
        + _figure(plots, "durations")
        + _figure(plots, "text_tokens")
        + ["</div>"]
    )


def _speakers(stats: dict, plots: dict) -> list[str]:
    speakers = stats["speakers"]
    if not speakers:
        return ["<h2>Speakers</h2><p>No speaker column in lengths.parquet (a corpus from an older version).</p>"]
    out = ["<h2>Speakers</h2>"] + _figure(plots, "speaker_hours")
    out.append(
        '<div class="cols"><div><h3>Most hours (training)</h3>'
        + _table(["speaker", "hours"], [[n, f"{h:.3f}"] for n, h in speakers["top"]], {1})
        + "</div><div><h3>Fewest hours (training)</h3>"
        + _table(["speaker", "hours"], [[n, f"{h:.3f}"] for n, h in speakers["bottom"]], {1})
        + "</div></div>"
    )
    out.append("<h3>Dev/test overlap with training</h3>")
    if not speakers["leakage"]:
        out.append("<p>No dev or test subsets.</p>")
    for subset, leak in speakers["leakage"].items():
        if not leak["speakers"] and not leak["books"]:
            also = "speaker or book" if leak["books"] is not None else "speaker"
            out.append(f'<p class="ok">{escape(subset)}: no {also} also in training data.</p>')
        for kind in ("speakers", "books"):
            if leak[kind]:
                shown = ", ".join(leak[kind][:20]) + (" ..." if len(leak[kind]) > 20 else "")
                out.append(
                    f'<div class="warn">&#9888; {escape(subset)}: {kind} also in training data '
                    f"({len(leak[kind])}): {escape(shown)}</div>"
                )
    return out


def _codes(stats: dict, plots: dict) -> list[str]:
    codes = stats["codes"]
    rows = [
        [
            c["codebook"],
            f"{c['used']:,}",
            f"{c['utilization']:.1%}",
            f"{c['entropy_bits']:.2f}",
            ", ".join(f"{code} ({share:.1%})" for code, share in c["top"][:5]),
        ]
        for c in codes["per_codebook"]
    ]
    size = codes["codebook_size"]
    scope = (
        f"{codes['frames']:,} frames of {codes['samples']:,} utterances, read from "
        f"{codes['shards_read']} of {codes['shards_total']} {codes['format']} shards"
    )
    return (
        [
            "<h2>Codebooks</h2>",
            f"<p>{escape(scope)}. Entropy is at most {math.log2(size):g} bits ({size:,} entries).</p>",
            _table(
                ["codebook", "entries used", "utilization", "entropy (bits)", "most frequent codes"], rows, {0, 1, 2, 3}
            ),
        ]
        + _figure(plots, "codebooks")
        + ['<div class="cols">']
        + _figure(plots, "code_frequencies")
        + ["</div>"]
    )


def _transcripts(stats: dict, plots: dict) -> list[str]:
    cer = stats["cer"]
    out = ["<h2>Transcript agreement</h2>"]
    if not cer:
        return out + ["<p>No text_cer column in lengths.parquet (a corpus from an older version).</p>"]
    limit = stats["provenance"].get("filter", {}).get("max_text_cer")
    kept = sum(cer["accepted"])
    text = (
        f"Kept utterances: {kept:,} with a CER, {cer['without_asr_text']:,} without an ASR text. "
        f"filter.max_text_cer: {'off' if limit is None else limit}."
    )
    if cer["mean"] is not None:
        q = cer["quantiles"]
        text += (
            f" Mean CER {cer['mean']:.3f}; half are at most {q['p50']:.2f}, 90% at most {q['p90']:.2f}, "
            f"99% at most {q['p99']:.2f}."
        )
    return out + [f"<p>{escape(text)}</p>", '<div class="cols">'] + _figure(plots, "cer") + ["</div>"]


def _rejects(stats: dict, plots: dict) -> list[str]:
    rejects = stats["rejects"]
    out = (
        ["<h2>Rejected cuts</h2>", f"<p>{rejects['total']:,} cuts dropped.</p>", '<div class="cols">']
        + _figure(plots, "rejects")
        + ["</div>"]
    )
    rows = [
        [reason, f"{count:,}", example["subset"], example["cut_id"], example["detail"]]
        for reason, count in rejects["by_reason"].items()
        for example in rejects["examples"].get(reason, [])
    ]
    if rows:
        out.append(_table(["reason", "count", "subset", "example cut", "detail"], rows, {1}))
    return out


def _provenance(stats: dict) -> list[str]:
    p = stats["provenance"]
    codec, bpe = p["codec"], p["bpe"]
    rows = [
        [
            "codec",
            f"{codec['model']}, {codec['bandwidth_kbps']:g} kbps, {codec['codebooks']} codebooks x "
            f"{codec['codebook_size']}, {codec['frame_rate']} frames/s, precision {codec.get('precision', 'exact')}",
        ],
        ["codec weights", f"{codec['weights']} (sha256 {codec['weights_sha256']}) from {codec['weights_source']}"],
        [
            "codes made on",
            "; ".join(f"{describe_stack(s)}: {s['units']} unit(s)" for s in codec["stacks"])
            if "stacks" in codec
            else "not recorded (older corpus)",
        ],
        ["BPE", f"{bpe['model_type']}, {bpe['vocab_size']} pieces, {bpe['model']} (sha256 {bpe['sha256']})"],
        ["text", f"field {p['text']['field']}, normalization {p['text']['normalization']}"],
        [
            "transcript filter",
            (
                f"max_text_cer {p['filter']['max_text_cer']}, {p['filter']['agreement']}"
                if "filter" in p
                else "not recorded (older corpus)"
            ),
        ],
        ["DAG", f"{p['dag']['name']} (fingerprint {p['dag']['fingerprint']})"],
        ["pipeline", p["pipeline_version"]],
    ]
    return ["<h2>Provenance</h2>", _table(["what", "value"], rows)]
