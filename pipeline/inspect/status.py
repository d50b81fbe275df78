"""Status: how far a corpus build has got, from the plans and the ledger alone (no Ray).

In: OUT. Out: per subset the units planned / with committed codes / with committed shards,
planned and encoded hours, samples written, rejects by reason, and whether the index exists.
"Committed" is as of the settings of the last run; `valle-prep run` decides what is current.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from pipeline.output import ledger
from tokens.codec_settings import describe_stack


def corpus_status(out: Path) -> dict:
    plan_dir = out / "plan"
    if not plan_dir.is_dir():
        raise FileNotFoundError(f"{out} has no plan/: nothing has run there yet")
    subsets, reasons, stacks = {}, Counter(), {}
    for plan_file in sorted(plan_dir.glob("*.json")):
        plan = json.loads(plan_file.read_text())
        row = {
            "role": plan["role"],
            "units": len(plan["units"]),
            "codes_done": 0,
            "shards_done": 0,
            "hours_planned": round(sum(u["seconds"] for u in plan["units"]) / 3600, 4),
            "hours_encoded": 0.0,
            "samples": 0,
        }
        reasons.update(r["reason"] for r in plan["rejects"])
        for unit in plan["units"]:
            entry = ledger.read_entry(out, unit["name"])
            if entry.get("codes"):
                row["codes_done"] += 1
                stack = entry["codes"].get("stack")  # None: encoded before stacks were recorded
                key = json.dumps(stack, sort_keys=True)
                stacks.setdefault(key, {"stack": stack, "units": 0})["units"] += 1
                row["hours_encoded"] += entry["codes"]["seconds"] / 3600
                reasons.update(r["reason"] for r in entry["codes"]["rejects"])
            if entry.get("shards"):
                row["shards_done"] += 1
                row["samples"] += entry["shards"]["samples"]
                reasons.update(r["reason"] for r in entry["shards"]["rejects"])
        row["hours_encoded"] = round(row["hours_encoded"], 4)
        subsets[plan["subset"]] = row
    return {
        "out": str(out),
        "complete": (out / "index.json").is_file(),
        "subsets": subsets,
        "rejects": dict(sorted(reasons.items())),
        "stacks": list(stacks.values()),
    }


def format_status(status: dict) -> str:
    lines = [
        f"corpus {status['out']}: {'complete (index.json written)' if status['complete'] else 'incomplete'}",
        f"{'subset':<18}{'role':<7}{'codes':>12}{'shards':>12}{'hours':>20}{'samples':>10}",
    ]
    for name, r in status["subsets"].items():
        lines.append(
            f"{name:<18}{r['role']:<7}{r['codes_done']:>6}/{r['units']:<5}"
            f"{r['shards_done']:>6}/{r['units']:<5}"
            f"{r['hours_encoded']:>9.3f}/{r['hours_planned']:<10.3f}{r['samples']:>10}"
        )
    total = sum(status["rejects"].values())
    lines.append(f"rejects: {total}" + "".join(f"\n  {k}: {v}" for k, v in status["rejects"].items()))
    if status["stacks"]:
        lines.append("codes made on:")
        lines += [
            f"  {describe_stack(s['stack']) if s['stack'] else 'a stack not recorded (an older version)'}: "
            f"{s['units']} unit(s)"
            for s in status["stacks"]
        ]
    return "\n".join(lines)
