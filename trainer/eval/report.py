"""What valle-eval writes: results.json (everything, per utterance), results.md (one table per
task) and index.html (the tables, then per-utterance audio players: prompt, ground truth,
resynthesis, single sample, best of N, with text and scores). Every table names its back-ends,
its WER text normalization and what WER is scored against (the set's source.reference)."""

from __future__ import annotations

import html
import json
from pathlib import Path

from schemas.evalset import TRAINED_ON
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
    paths = {"json": out / "results.json", "markdown": out / "results.md", "html": out / "index.html"}
    write_json_atomic(paths["json"], results)
    write_bytes_atomic(paths["markdown"], markdown(results).encode())
    write_bytes_atomic(paths["html"], page(results).encode())
    return paths


METRICS = ("WER %", "mean WER %", "SIM", "DNSMOS")  # a summary table's columns after the row's label
GENERATED_METRICS = ("WER %", "mean WER %", "SIM", "utterances")  # the generated part's: no DNSMOS


def _label(name: str, entry: dict) -> str:
    return ROW_NAMES[name].format(n=entry.get("n", "N"))


def _md_table(columns: tuple[str, ...], rows) -> list[str]:
    """A markdown table: the row label, then `columns` (right-aligned), one line per row of cells."""
    lines = ["| row | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    return lines + ["| " + " | ".join(cells) + " |" for cells in rows]


def _html_table(css_class: str, columns: tuple[str, ...], rows) -> str:
    """The same table for the page: the label escaped, the numbers right-aligned."""
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in ("row", *columns))
    body = "".join(
        f"<tr><td>{e(label)}</td>" + "".join(f"<td class='num'>{n}</td>" for n in numbers) + "</tr>"
        for label, *numbers in rows
    )
    return f"<table class='{css_class}'><tr>{head}</tr>{body}</table>"


def _number(entry: dict, key: str, digits: int, scale: float = 1.0) -> str:
    """A statistic with its interval when it has one: `12.3 [10.1, 14.8]`; "-" when missing."""
    if key not in entry:
        return "-"
    text = f"{scale * entry[key]:.{digits}f}"
    if key in entry.get("interval", {}):
        lo, hi = entry["interval"][key]
        text += f" [{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]"
    return text


def _summary(body: dict):
    """A task's summary table, row by row: label, WER %, mean WER %, SIM, DNSMOS, utterances (as text)."""
    for name in ROWS:
        entry = body["summary"].get(name)
        if entry:
            yield (
                _label(name, entry),
                _number(entry, "wer", 1, 100),
                _number(entry, "wer_mean", 1, 100),
                _number(entry, "sim", 3),
                _number(entry, "dnsmos", 2),
                str(entry["utterances"]),
            )


def _notes(body: dict) -> list[str]:
    """What a task's table does not hold: utterances left out and trials failed, by reason."""
    notes = []
    if body["skipped"]:
        notes.append("Left out: " + "; ".join(f"{n} ({why})" for why, n in body["skipped"].items()))
    if body.get("failed"):
        over = f" (trials of all {len(body['runs'])} sampling runs)" if "runs" in body else ""
        notes.append(f"Failed{over}: " + "; ".join(f"{n} ({why})" for why, n in body["failed"].items()))
    return notes


def _across(body: dict):
    """The spread over K sampling runs, row by row: label, then mean (min-max) of WER %, mean WER %,
    SIM, DNSMOS."""

    def cell(metrics: dict, metric: str, scale: float, digits: int) -> str:
        if metric not in metrics:
            return "-"
        m = {k: f"{scale * v:.{digits}f}" for k, v in metrics[metric].items()}
        return f"{m['mean']} ({m['min']}-{m['max']})"

    for name, metrics in body["across_runs"].items():
        label = _label(name, body["runs"][0]["summary"][name])
        yield (
            label,
            cell(metrics, "wer", 100, 1),
            cell(metrics, "wer_mean", 100, 1),
            cell(metrics, "sim", 1, 3),
            cell(metrics, "dnsmos", 1, 2),
        )


def _across_title(body: dict) -> str:
    return f"Across {len(body['runs'])} sampling runs: mean (min-max) of the runs' values; the table above is run 0's"


def _intervals(results: dict) -> str:
    """The line under the tables saying what the WERs and the intervals are."""
    line = "WER % pools every utterance's errors over all their words; mean WER % is the mean of per-utterance WERs."
    b = results.get("bootstrap")
    if b:
        line += (
            f" In brackets: the {100 * b['level']:g} % interval, bootstrap over {b['over']} "
            f"({b['resamples']} resamples, seed {b['seed']})."
        )
    return line


def _generated(body: dict):
    """A continuation's generated-part table, row by row: label, WER %, mean WER %, SIM (with their
    intervals), utterances (none for cross-sentence; no DNSMOS, see run.add_generated)."""
    for name in ROWS:
        entry = body["summary"].get(name, {}).get("generated")
        if entry:
            yield (
                _label(name, body["summary"][name]),
                "-" if entry["wer"] is None else _number(entry, "wer", 1, 100),
                _number(entry, "wer_mean", 1, 100),
                _number(entry, "sim", 3),
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
    lines = [
        f"ASR: {b['asr']}; WER text normalization {b['wer_normalization']}{_reference(results)}",
        f"Speaker: {b['speaker']}",
    ]
    if b.get("dnsmos"):
        lines.append(f"Quality: {b['dnsmos']}")
    return lines


def set_warning(results: dict) -> str | None:
    """What the set's source warns of (valle-prep evalset: made from a training subset, or with
    speakers heard in training), to show above the tables; None for a held-out set or an older one."""
    source = results["set"].get("source") or {}
    if source.get("trained_on") and not source.get("warning"):
        return TRAINED_ON
    return source.get("warning")


def _reference(results: dict) -> str:
    """What WER was scored against (the set's source.reference)."""
    ref = results["set"].get("reference")
    if not ref:
        return ""
    fallbacks = f" ({ref['fallbacks']} utterance(s) without it: against their text)" if ref["fallbacks"] else ""
    return f"; WER reference {ref['field']}{fallbacks}"


def markdown(results: dict) -> str:
    s = results["set"]
    voices = f"{s['speakers']} speaker" + ("s" if s["speakers"] != 1 else "")
    lines = [
        f"# valle-eval: {s['name']} ({s['utterances']} utterances, {voices})",
        "",
        f"Checkpoints: AR {results['checkpoints']['ar']}, NAR {results['checkpoints']['nar']}; "
        f"decoder {results['checkpoints']['decoder']}.",
        "",
        *[f"- {line}" for line in _backends(results)],
        "- Scores from other back-ends (the papers' ASR and speaker models) are not comparable with these.",
        "",
    ]
    if warning := set_warning(results):
        lines += [f"> **Warning:** {warning}", ""]
    for task, body in results["tasks"].items():
        lines += [f"## {TASK_NAMES[task]}", "", *_md_table((*METRICS, "utterances"), _summary(body))]
        generated = list(_generated(body))
        if generated:
            lines += ["", f"### {TASK_NAMES[task]}, generated part alone", "", _generated_note(results), ""]
            lines += _md_table(GENERATED_METRICS, generated)
        for note in _notes(body):
            lines += ["", note]
        if body.get("across_runs"):
            lines += ["", _across_title(body) + ":", "", *_md_table(METRICS, _across(body))]
        lines.append("")
    lines += [_intervals(results), ""]
    t = results["timing"]
    if t.get("seconds_per_trial") is not None:
        lines.append(
            f"Synthesis: {t['seconds_per_trial']:.2f} s per utterance for {results['settings']['samples']} "
            f"sample(s) on {results['device']} ({t['real_time_factor']:.2f} s per second of audio made)."
        )
    g = results.get("length_guard")
    if g:
        f = {k: 1000 * v for k, v in g["seconds_per_token"].items()}
        lines.append(
            f"Length guard {1000 * g['guard'][0]:.0f}-{1000 * g['guard'][1]:.0f} ms a token; the ground truth "
            f"speaks {f['min']:.0f}-{f['max']:.0f} (median {f['median']:.0f}); {g['outside']} utterance(s) outside."
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
    if warning := set_warning(results):
        parts.append(f"<p style='background:#fdd;padding:8px'><strong>Warning:</strong> {e(warning)}</p>")
    for task, body in results["tasks"].items():
        parts.append(f"<h2 id='{task}'>{TASK_NAMES[task]}</h2>")
        parts.append(_html_table("summary", (*METRICS, "n"), _summary(body)))
        parts.append(f"<p>{e(_intervals(results))}</p>")
        parts += _generated_html(results, task, body)
        parts += [f"<p>{e(note)}</p>" for note in _notes(body)]
        if body.get("across_runs"):
            parts.append(f"<p>{e(_across_title(body))}:</p>")
            parts.append(_html_table("across", METRICS, _across(body)))
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
    return [
        f"<h3>{TASK_NAMES[task]}, generated part alone</h3><p>{e(_generated_note(results))}</p>",
        _html_table("summary", (*GENERATED_METRICS[:-1], "n"), generated),
    ]


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
