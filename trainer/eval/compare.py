"""`valle-eval compare A B [--out FILE.md]`: is B's difference from A outside the noise?

A and B are results.json files of valle-eval (or the folders holding them) on the same set, scored
with the same back-ends and text normalization; anything else is refused (exit 2), since their
numbers would differ for reasons other than the models. Utterances are paired on id (only those
scored in both runs count; the table says how many). For each task and model row (ground truth
and resynthesis only where they differ between A and B), each statistic (pooled WER, mean WER,
SIM, DNSMOS) is given for A and B on the paired utterances, with B - A and its 95 % paired
bootstrap interval (stats.paired: the same utterances drawn for both runs). B "differs" from A
when that interval leaves out 0. Prints a markdown table; --out writes it too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from storage.files import write_bytes_atomic
from trainer.eval import stats
from trainer.eval.report import ROW_NAMES, TASK_NAMES
from trainer.eval.run import ROWS

REFERENCE_ROWS = ("ground_truth", "resynthesis")  # the same in two runs unless the decoder or set changed
SCORES = ("errors", "words", "sim", "dnsmos")
# (label, digits, scale, higher is better)
SHOWN = {
    "wer": ("WER %", 2, 100, False),
    "wer_mean": ("mean WER %", 2, 100, False),
    "sim": ("SIM", 3, 1, True),
    "dnsmos": ("DNSMOS", 3, 1, True),
}


class CompareError(ValueError):
    pass


def load(path: str | Path) -> dict:
    """A valle-eval results.json, given as the file or the folder holding it."""
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        raise CompareError(f"{path}: no results.json there (valle-eval --out DIR writes DIR/results.json)")
    try:
        results = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CompareError(f"{file}: not JSON ({err})") from None
    if not isinstance(results, dict) or not all(isinstance(results.get(k), dict) for k in ("set", "backends", "tasks")):
        raise CompareError(f"{file}: not valle-eval results (no set, backends or tasks)")
    for task, body in results["tasks"].items():
        rows = body.get("utterances") if isinstance(body, dict) else None
        if not isinstance(rows, list) or not all(isinstance(r, dict) and "id" in r and "reference" in r for r in rows):
            raise CompareError(f"{file}: task {task} has no per-utterance scores (utterances with id and reference)")
    results["path"] = str(file)
    return results


def check(a: dict, b: dict) -> None:
    """Refuse two runs whose numbers are not comparable: another set, back-end or normalization."""
    for key in ("name", "source"):
        if a["set"].get(key) != b["set"].get(key):
            raise CompareError(
                f"A and B are on different sets ({key} {a['set'].get(key)!r} vs {b['set'].get(key)!r}); "
                "compare runs on the same set"
            )
    for key in sorted(set(a["backends"]) | set(b["backends"])):
        va, vb = a["backends"].get(key), b["backends"].get(key)
        if va != vb and not (key == "dnsmos" and None in (va, vb)):  # one run without DNSMOS: not compared
            raise CompareError(f"A and B were scored differently ({key}: {va!r} vs {vb!r}); score both alike")
    tasks = [t for t in a["tasks"] if t in b["tasks"]]
    if not tasks:
        raise CompareError(f"A and B have no task in common (A: {', '.join(a['tasks'])}; B: {', '.join(b['tasks'])})")
    for task in tasks:
        refs_a = {r["id"]: r["reference"] for r in a["tasks"][task]["utterances"]}
        refs_b = {r["id"]: r["reference"] for r in b["tasks"][task]["utterances"]}
        common = refs_a.keys() & refs_b.keys()
        if not common:
            raise CompareError(f"{task}: A and B scored no utterance in common; they are not on the same set")
        other = sorted(i for i in common if refs_a[i] != refs_b[i])
        if other:
            raise CompareError(f"{task}: {other[0]} has another reference text in A than in B; not the same set")


def _same(xs: list[dict], ys: list[dict]) -> bool:
    return all(x.get(k) == y.get(k) for x, y in zip(xs, ys) for k in SCORES)


def compare(a: dict, b: dict, seed: int = stats.SEED, resamples: int = stats.RESAMPLES) -> dict:
    """Per task in both: the utterances paired, and per row shown its paired statistics."""
    check(a, b)
    out = {}
    for task in (t for t in a["tasks"] if t in b["tasks"]):
        by_id = {r["id"]: r for r in b["tasks"][task]["utterances"]}
        pairs = [(r, by_id[r["id"]]) for r in a["tasks"][task]["utterances"] if r["id"] in by_id]
        rows, alike = {}, []
        for name in ROWS:
            scored = [(ra[name], rb[name]) for ra, rb in pairs if name in ra and name in rb]
            if not scored:
                continue
            xs, ys = [x for x, _ in scored], [y for _, y in scored]
            if name in REFERENCE_ROWS and _same(xs, ys):
                alike.append(name)
                continue
            rows[name] = {"utterances": len(scored), **stats.paired(xs, ys, seed, resamples)}
        out[task] = {
            "paired": len(pairs),
            "a": len(a["tasks"][task]["utterances"]),
            "b": len(b["tasks"][task]["utterances"]),
            "rows": rows,
            "alike": alike,
        }
    return out


def _verdict(metric: str, s: dict) -> str:
    if not s["differs"]:
        return "no"
    better = (s["diff"] > 0) == SHOWN[metric][3]
    return "yes, B better" if better else "yes, B worse"


def _settings_differ(a: dict, b: dict) -> list[str]:
    """Top-level settings (and sampling's) that are not the same in A and B."""
    sa, sb = a.get("settings", {}), b.get("settings", {})
    flat_a = {**sa, **{f"sampling.{k}": v for k, v in sa.get("sampling", {}).items()}}
    flat_b = {**sb, **{f"sampling.{k}": v for k, v in sb.get("sampling", {}).items()}}
    keys = sorted((flat_a.keys() | flat_b.keys()) - {"sampling"})
    return [f"{k} {flat_a.get(k)} vs {flat_b.get(k)}" for k in keys if flat_a.get(k) != flat_b.get(k)]


def markdown(a: dict, b: dict, comparison: dict, resamples: int = stats.RESAMPLES, seed: int = stats.SEED) -> str:
    def checkpoints(r: dict) -> str:
        c = r.get("checkpoints", {})
        return f"{r['path']} (AR {c.get('ar', '?')}, NAR {c.get('nar', '?')})"

    samples = {r.get("settings", {}).get("samples", "N") for r in (a, b)}
    n = samples.pop() if len(samples) == 1 else "N"
    lines = [
        "# valle-eval compare",
        "",
        f"- A: {checkpoints(a)}",
        f"- B: {checkpoints(b)}",
        f"- Set: {a['set'].get('name')}; ASR {a['backends'].get('asr')}, "
        f"normalization {a['backends'].get('wer_normalization')}",
    ]
    if a["set"].get("folder") != b["set"].get("folder"):
        lines[-1] += f" (A read it from {a['set'].get('folder')}, B from {b['set'].get('folder')})"
    differ = _settings_differ(a, b)
    if differ:
        lines.append(f"- Settings that differ: {'; '.join(differ)}")
    lines += [
        "",
        f"A and B on the utterances scored in both; B - A with its {100 * stats.LEVEL:g} % interval, paired "
        f"bootstrap over utterances ({resamples} resamples, seed {seed}). B differs from A when the interval "
        "leaves out 0.",
        "",
    ]
    for task, body in comparison.items():
        lines += [
            f"## {TASK_NAMES.get(task, task)}: {body['paired']} utterances scored in both "
            f"(A {body['a']}, B {body['b']})",
            "",
            "| row | metric | A | B | B - A [95 % interval] | differs |",
            "|---|---|---:|---:|---:|---|",
        ]
        for name, row in body["rows"].items():
            label = ROW_NAMES[name].format(n=n)
            if row["utterances"] != body["paired"]:
                label += f" ({row['utterances']} utterances)"
            for metric, (shown, digits, scale, _) in SHOWN.items():
                if metric in row:
                    s = row[metric]
                    a_, b_, diff, lo, hi = (scale * v for v in (s["a"], s["b"], s["diff"], *s["interval"]))
                    lines.append(
                        f"| {label} | {shown} | {a_:.{digits}f} | {b_:.{digits}f} | "
                        f"{diff:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}] | {_verdict(metric, s)} |"
                    )
        if body["alike"]:
            lines += ["", "The same in A and B (not shown): " + ", ".join(ROW_NAMES[r] for r in body["alike"]) + "."]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="valle-eval compare", description=__doc__.split("\n")[0])
    parser.add_argument("a", help="A: results.json of valle-eval, or the folder holding it")
    parser.add_argument("b", help="B: the run to compare with A, on the same set")
    parser.add_argument("--out", help="also write the comparison to this markdown file")
    args = parser.parse_args(argv)
    try:
        a, b = load(args.a), load(args.b)
        text = markdown(a, b, compare(a, b))
    except CompareError as err:
        print(f"valle-eval compare: {err}", file=sys.stderr)
        return 2
    print(text, end="")
    if args.out:
        write_bytes_atomic(Path(args.out), text.encode())
        print(f"wrote {args.out}")
    return 0
