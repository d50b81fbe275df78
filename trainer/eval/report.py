"""What valle-eval writes: results.json (everything, per utterance), results.md (one table per
task) and index.html (the tables, then per-utterance audio players: prompt, ground truth,
resynthesis, single sample, best of N, with text and scores). Every table names its back-ends."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

from storage.files import write_bytes_atomic, write_json_atomic
from trainer.eval.run import ROWS

ROW_NAMES = {
    "ground_truth": "ground truth",
    "resynthesis": "codec resynthesis",
    "single": "model, single sampling",
    "best_of_n": "model, best of {n} (sort on SIM and WER)",
    "metric_wise": "model, best of {n} (metric-wise)",
}
TASK_NAMES = {"continuation": "Continuation", "cross": "Cross-sentence"}


def write(results: dict, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    for task in results["tasks"].values():  # audio paths relative to the page
        for row in task["utterances"]:
            if "audio" in row:
                row["audio"] = {k: os.path.relpath(v, out) for k, v in row["audio"].items()}
    paths = {"json": out / "results.json", "markdown": out / "results.md", "html": out / "index.html"}
    write_json_atomic(paths["json"], results)
    write_bytes_atomic(paths["markdown"], markdown(results).encode())
    write_bytes_atomic(paths["html"], page(results).encode())
    return paths


def _label(name: str, entry: dict) -> str:
    return ROW_NAMES[name].format(n=entry.get("n", "N"))


def _summary(body: dict):
    """A task's summary table, row by row: label, WER %, SIM, DNSMOS, utterances (as text)."""
    for name in ROWS:
        entry = body["summary"].get(name)
        if entry:
            dnsmos = f"{entry['dnsmos']:.2f}" if "dnsmos" in entry else "-"
            yield (
                _label(name, entry),
                f"{100 * entry['wer']:.1f}",
                f"{entry['sim']:.3f}",
                dnsmos,
                str(entry["utterances"]),
            )


def _generated(body: dict):
    """A continuation's generated-part table, row by row: label, WER %, SIM, utterances (none for
    cross-sentence; no DNSMOS, see run.add_generated)."""
    for name in ROWS:
        entry = body["summary"].get(name, {}).get("generated")
        if entry:
            yield (
                ROW_NAMES[name].format(n=body["summary"][name].get("n", "N")),
                "-" if entry["wer"] is None else f"{100 * entry['wer']:.1f}",
                f"{entry['sim']:.3f}",
                str(entry["utterances"]),
            )


def _generated_note(results: dict) -> str:
    return (
        f"The output after the prompt's {results['settings']['prompt_seconds']:g} s, for every row; WER against the "
        "reference words after those the ASR heard in the ground truth's prompt (docs/evaluation.md), SIM against "
        "the prompt."
    )


def _backends(results: dict) -> list[str]:
    b = results["backends"]
    lines = [f"ASR: {b['asr']}; WER text normalization {b['wer_normalization']}", f"Speaker: {b['speaker']}"]
    if b.get("dnsmos"):
        lines.append(f"Quality: {b['dnsmos']}")
    return lines


def markdown(results: dict) -> str:
    s = results["set"]
    lines = [
        f"# valle-eval: {s['name']} ({s['utterances']} utterances, {s['speakers']} speakers)",
        "",
        f"Checkpoints: AR {results['checkpoints']['ar']}, NAR {results['checkpoints']['nar']}; "
        f"decoder {results['checkpoints']['decoder']}.",
        "",
        *[f"- {line}" for line in _backends(results)],
        "- Scores from other back-ends (the papers' ASR and speaker models) are not comparable with these.",
        "",
    ]
    for task, body in results["tasks"].items():
        lines += [
            f"## {TASK_NAMES[task]}",
            "",
            "| row | WER % | SIM | DNSMOS | utterances |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += ["| " + " | ".join(cells) + " |" for cells in _summary(body)]
        generated = list(_generated(body))
        if generated:
            lines += ["", f"### {TASK_NAMES[task]}, generated part alone", "", _generated_note(results), ""]
            lines += ["| row | WER % | SIM | utterances |", "|---|---:|---:|---:|"]
            lines += ["| " + " | ".join(cells) + " |" for cells in generated]
        if body["skipped"]:
            lines += ["", "Left out: " + "; ".join(f"{n} ({why})" for why, n in body["skipped"].items())]
        lines.append("")
    t = results["timing"]
    if t.get("seconds_per_trial") is not None:
        lines.append(
            f"Synthesis: {t['seconds_per_trial']:.2f} s per utterance for {results['settings']['samples']} "
            f"sample(s) on {results['device']} ({t['real_time_factor']:.2f} s per second of audio made)."
        )
    g = results.get("length_guard")
    if g:
        f = g["frames_per_token"]
        lines.append(
            f"Length guard {g['guard'][0]:g}-{g['guard'][1]:g} frames a token; the ground truth speaks "
            f"{f['min']:.1f}-{f['max']:.1f} (median {f['median']:.1f}); {g['outside']} utterance(s) outside."
        )
    return "\n".join(lines) + "\n"


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right}audio{width:200px}.hyp{color:#555;font-size:90%}
table.utterances td:first-child{max-width:260px}.id{font-size:80%;color:#444;word-break:break-all}
"""


def page(results: dict) -> str:
    e = html.escape
    s = results["set"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>valle-eval: {e(s['name'])}</title><style>{_STYLE}</style></head><body>",
        f"<h1>valle-eval: {e(s['name'])}</h1>",
        f"<p>{s['utterances']} utterances, {s['speakers']} speakers. AR {e(str(results['checkpoints']['ar']))}, "
        f"NAR {e(str(results['checkpoints']['nar']))}, decoder {e(results['checkpoints']['decoder'])}.</p>",
        "<ul>" + "".join(f"<li>{e(line)}</li>" for line in _backends(results)) + "</ul>",
    ]
    for task, body in results["tasks"].items():
        parts.append(f"<h2 id='{task}'>{TASK_NAMES[task]}</h2>")
        parts.append("<table class='summary'><tr><th>row</th><th>WER %</th><th>SIM</th><th>DNSMOS</th><th>n</th></tr>")
        for label, *numbers in _summary(body):
            parts.append(f"<tr><td>{e(label)}</td>" + "".join(f"<td class='num'>{n}</td>" for n in numbers) + "</tr>")
        parts.append("</table>")
        parts += _generated_html(results, task, body)
        heard = [r for r in body["utterances"] if "audio" in r]
        if heard:
            names = [n for n in ("prompt", *ROWS) if n in heard[0]["audio"]]
            parts.append("<table class='utterances'><tr><th>utterance</th>")
            parts += [f"<th>{e(n.replace('_', ' '))}</th>" for n in names]
            parts.append("</tr>")
            for row in heard:
                parts.append(f"<tr><td><div class='id'>{e(row['id'])}</div>{e(row['reference'])}{_split(row)}</td>")
                for n in names:
                    cell = f"<audio controls preload='none' src='{e(row['audio'][n])}'></audio>"
                    if n in row:
                        sc = row[n]
                        wer = f"{100 * sc['errors'] / sc['words']:.0f}%" if sc["words"] else "-"
                        cell += f"<br>WER {wer} SIM {sc['sim']:.2f}<div class='hyp'>{e(sc['hypothesis'])}</div>"
                        cell += _generated_cell(sc.get("generated"))
                    parts.append(f"<td>{cell}</td>")
                parts.append("</tr>")
            parts.append("</table>")
    parts.append(f"<pre>{e(json.dumps(results['settings'], indent=1))}</pre></body></html>")
    return "\n".join(parts)


def _generated_html(results: dict, task: str, body: dict) -> list[str]:
    """The page's generated-part table of a continuation, under its whole-utterance one."""
    generated = list(_generated(body))
    if not generated:
        return []
    e = html.escape
    parts = [f"<h3>{TASK_NAMES[task]}, generated part alone</h3><p>{e(_generated_note(results))}</p>"]
    parts.append("<table class='summary'><tr><th>row</th><th>WER %</th><th>SIM</th><th>n</th></tr>")
    for label, *numbers in generated:
        parts.append(f"<tr><td>{e(label)}</td>" + "".join(f"<td class='num'>{n}</td>" for n in numbers) + "</tr>")
    return parts + ["</table>"]


def _split(row: dict) -> str:
    if "split" not in row:
        return ""
    s = row["split"]
    return f"<div class='hyp'>{s['prompt_words']} of {s['words']} words in the prompt</div>"


def _generated_cell(scores: dict | None) -> str:
    """The generated part's scores under a continuation player's whole-utterance ones."""
    if not scores:
        return ""
    wer = f"{100 * scores['errors'] / scores['words']:.0f}%" if scores["words"] else "-"
    return f"<div>after the prompt: WER {wer} SIM {scores['sim']:.2f}</div>"
