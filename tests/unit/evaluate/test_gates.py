"""Eval gates: checked against aggregates and forgetting rows, worded for the error and the report."""
from __future__ import annotations

import json

from runner.evaluate.gates import GateFailed, check_gates, describe_gate, failed_gates

HELD = {"gate": "f1", "kind": "held_out", "value": 0.41234, "threshold": 0.5, "passed": False}
FORGOT = {"gate": "forgetting:gk", "kind": "forgetting", "task": "gk", "metric": "acc", "value": 7.5,
          "threshold": 5, "base": 60.0, "tuned": 52.5, "passed": False}


def _settings(gates, forgetting=None):
    return {"gates": gates, "forgetting": forgetting or {}}


def test_describe_gate_words_both_kinds():
    assert describe_gate(HELD) == "held-out f1 = 0.412, needs >= 0.5"
    assert describe_gate(FORGOT) == "forgetting on gk: acc dropped 7.5 points (60.0 -> 52.5), allowed drop 5"
    assert "rose 2.0 points" in describe_gate({**FORGOT, "value": -2.0})


def test_held_out_gates_pass_at_the_threshold_and_fail_without_a_value():
    gates = check_gates(_settings({"f1": 0.5, "contains": 0.9}), {"f1": 0.5}, None)
    assert [(g["gate"], g["passed"]) for g in gates] == [("f1", True), ("contains", False)]
    assert failed_gates(gates) == [gates[1]]


def test_forgetting_limits_gate_once_max_drop_is_set_unless_made_advisory():
    rows = {"tasks": {"gk": {"metric": "acc", "base": 60.0, "tuned": 52.5, "drop": 7.5, "max_drop": 5, "ok": False},
                      "other": {"metric": "acc", "base": 1.0, "tuned": 1.0, "drop": None, "max_drop": None}}}
    fg = {"tasks": ["gk", "other"], "max_drop": {"gk": 5}}
    gates = check_gates(_settings({}, fg), {}, rows)
    assert gates == [FORGOT]
    assert check_gates(_settings({"forgetting": False}, fg), {}, rows) == []
    assert check_gates(_settings({}, {"tasks": ["gk"]}), {}, rows) == []  # no max_drop: advisory


def test_gate_failed_says_what_failed_and_where_the_report_is(tmp_path):
    exc = GateFailed([HELD, FORGOT], where="runs/x/eval/metrics.json", report="runs/x/report.md")
    assert exc.exit_code == 1 and exc.gate_failed
    assert exc.failed == [describe_gate(HELD), describe_gate(FORGOT)]
    assert str(exc.what).startswith("eval gate failed: held-out f1 = 0.412")
    assert "runs/x/report.md" in exc.fix
    m = tmp_path / "metrics.json"
    m.write_text(json.dumps({"gates": [HELD, {**HELD, "gate": "stops", "passed": True}]}))
    assert GateFailed.from_metrics(m).gates == [HELD]
    m.write_text(json.dumps({"gates": []}))
    assert GateFailed.from_metrics(m) is None

