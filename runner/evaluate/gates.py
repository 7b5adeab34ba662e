"""Eval gates: the thresholds of `eval.gates` checked against an eval stage's results, and their wording.

A gate is a dict as metrics.json records it: `{"gate", "kind": "held_out" | "forgetting", "value", "threshold",
"passed"}` (forgetting gates add task, metric, base and tuned). The eval stage checks them and raises GateFailed
after everything is written; the pipeline marks the lock and stops before the stages that would ship the model;
the report words the verdict with describe_gate. Nothing here runs a model.
"""
from __future__ import annotations

import json
from pathlib import Path

from runner.errors import TunebookError


def describe_gate(g: dict) -> str:
    """One gate in words, e.g. `held-out f1 = 0.412, needs >= 0.5`."""
    if g.get("kind") == "forgetting":
        moved = f"dropped {g['value']:.1f} points" if g["value"] >= 0 else f"rose {-g['value']:.1f} points"
        return (f"forgetting on {g['task']}: {g['metric']} {moved} ({g['base']:.1f} -> {g['tuned']:.1f}), "
                f"allowed drop {g['threshold']:g}")
    return f"held-out {g['gate']} = {g['value']:.3f}, needs >= {g['threshold']:g}"


def failed_gates(gates: list[dict] | None) -> list[dict]:
    """The gates that did not pass."""
    return [g for g in gates or [] if not g.get("passed")]


class GateFailed(TunebookError):
    """One or more eval gates failed (exit code 1). `failed`: one line per failed gate (metric, value,
    threshold); `gates`: the same as dicts, as in metrics.json; `gate_failed` tells the pipeline to mark the lock."""

    gate_failed = True

    def __init__(self, failed: list[dict], where: str | None = None, recorded: str | None = None,
                 report: str | None = None):
        self.gates = failed
        self.failed = [describe_gate(g) for g in failed]
        what = "eval gate failed: " + "; ".join(self.failed)
        if recorded:
            what += f" (recorded {recorded}; inputs unchanged since)"
        fix = ("The pipeline stopped at the eval stage: the stages after it (merge, export, serve) did not run. "
               f"Read {report or 'the report (runs/<recipe>/report.md)'}, then improve the data or training, "
               "or change eval.gates in the recipe.")
        super().__init__(what, where=where, fix=fix, exit_code=1)

    @classmethod
    def from_metrics(cls, path: Path, recorded: str | None = None) -> "GateFailed | None":
        """The failure recorded in a metrics.json, or None when its gates passed."""
        data = json.loads(Path(path).read_text())
        failed = failed_gates(data.get("gates"))
        return cls(failed, where=str(path), recorded=recorded) if failed else None


def check_gates(settings: dict, tuned_agg: dict, forgetting: dict | None) -> list[dict]:
    """Every gate of `settings["gates"]` (eval_settings) against the fine-tuned model's aggregate held-out scores
    and the forgetting check's rows; passed or not, in the recipe's order, forgetting gates last."""
    gates = settings["gates"]
    out = []
    for name, thr in gates.items():
        if name == "forgetting":
            continue
        value = tuned_agg.get(name)
        out.append({"gate": name, "kind": "held_out", "value": value, "threshold": thr,
                    "passed": value is not None and value >= thr - 1e-12})
    # Forgetting limits gate by default once max_drop is given; `gates: {forgetting: false}` makes them advisory.
    if forgetting and gates.get("forgetting", bool(settings["forgetting"].get("max_drop"))):
        for task, row in forgetting["tasks"].items():
            if row.get("max_drop") is None or row.get("drop") is None:
                continue
            out.append({"gate": f"forgetting:{task}", "kind": "forgetting", "task": task, "metric": row["metric"],
                        "value": row["drop"], "threshold": row["max_drop"], "base": row["base"],
                        "tuned": row["tuned"], "passed": bool(row["ok"])})
    return out
