"""The eval stage on the real SmolLM2 with real Axolotl on CPU: a failing gate stops the pipeline before merge,
a passing one lets it through; metrics, predictions, the report and its plots are written either way.

One project is shared by the tests of this module (they build on each other, in file order): the SFT stage is
trained once, by the first run, whose gate is set to fail."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO, make_project, run_cli

pytestmark = pytest.mark.e2e

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

RECIPE = """\
base_model: {model}
data: {{train: data/train.jsonl, format: alpaca, held_out: data/held_out.jsonl}}
training: {{max_steps: 4, learning_rate: 1.0e-3, micro_batch_size: 4, sequence_len: 256}}
stages: [sft, eval, merge]
eval:
  metrics: [exact_match, f1, rouge_l, contains]
  max_new_tokens: 32
  limit: 4
{extra}"""

# A 4-step LoRA cannot answer every held-out question word for word.
FAIL_EVAL = "  gates: {exact_match: 1.0}\n"
PASS_EVAL = """\
  forgetting: {tasks: [general_knowledge], max_drop: {general_knowledge: 50}, limit: 20}
  gates: {stops: 0.25, f1: 0.02}
"""


@pytest.fixture(scope="module")
def proj(tmp_path_factory, smollm2):
    root = tmp_path_factory.mktemp("evalproj")
    data = REPO / "recipes" / "data" / "ci-mini"
    make_project(root, {"gate": RECIPE.format(model=smollm2, extra=FAIL_EVAL)},
                 {"data/train.jsonl": (data / "train.jsonl").read_text(),
                  "data/held_out.jsonl": (data / "held_out.jsonl").read_text()})
    return root


def _set_eval(root: Path, extra: str, smollm2: Path):
    (root / "recipes" / "gate.yaml").write_text(RECIPE.format(model=smollm2, extra=extra))


def test_eval_needs_a_trained_model_first(proj):
    r = run_cli("eval", "gate", cwd=proj)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "make train RECIPE=gate" in r.stderr and "Traceback" not in r.stderr


def test_failed_gate_stops_the_pipeline_before_merge(proj):
    r = run_cli("train", "gate", "--quiet", cwd=proj)
    assert r.returncode == 1, r.stderr[-3000:]
    err = r.stderr
    assert "Traceback" not in err
    assert "eval gate failed: held-out exact_match = " in err and "needs >= 1" in err
    run = proj / "runs" / "gate"
    assert (run / "sft" / "output" / "adapter_model.safetensors").is_file()
    assert not (run / "merge" / "merged").exists(), "merge ran although the gate failed"
    m = json.loads((run / "eval" / "metrics.json").read_text())
    assert m["passed"] is False
    assert m["gates"] == [{"gate": "exact_match", "kind": "held_out", "value": m["tuned"]["exact_match"],
                           "threshold": 1.0, "passed": False}]
    preds = [json.loads(l) for l in (run / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 4 and all(p["base"]["text"] is not None and p["tuned"]["text"] for p in preds)
    assert set(preds[0]["tuned"]["scores"]) == {"exact_match", "f1", "rouge_l", "contains", "stops"}
    assert (run / "eval" / "base_predictions.json").is_file()
    text = (run / "report.md").read_text()
    assert "**FAILED**" in text and "exact_match" in text
    # Running again with nothing changed fails the same way: a failed gate is never skipped over.
    r = run_cli("train", "gate", "--quiet", cwd=proj)
    assert r.returncode == 1 and "eval gate failed" in r.stderr, r.stderr[-3000:]
    assert not (run / "merge" / "merged").exists()


def test_passing_gate_runs_merge_and_writes_the_report(proj, smollm2):
    _set_eval(proj, PASS_EVAL, smollm2)
    r = run_cli("train", "gate", "--quiet", cwd=proj)
    assert r.returncode == 0, r.stderr[-3000:]
    run = proj / "runs" / "gate"
    assert "sft: up to date" in r.stderr                      # only eval (and merge) ran again
    assert "base model's answers from cache" in r.stderr       # the base model was not asked again
    assert (run / "merge" / "merged" / "model.safetensors").is_file()
    m = json.loads((run / "eval" / "metrics.json").read_text())
    assert m["passed"] is True and {g["gate"] for g in m["gates"]} == {"stops", "f1", "forgetting:general_knowledge"}
    fg = m["forgetting"]["tasks"]["general_knowledge"]
    assert fg["metric"] == "acc" and fg["samples"] == 20 and 0 <= fg["base"] <= 100 and 0 <= fg["tuned"] <= 100
    assert fg["drop"] == pytest.approx(fg["base"] - fg["tuned"]) and fg["ok"] is True
    for who in ("base", "tuned"):
        assert set(m[who]) == {"exact_match", "f1", "rouge_l", "contains", "stops"}
        assert all(0.0 <= v <= 1.0 for v in m[who].values())
    report = (run / "report.md").read_text()
    assert "**passed**" in report and "general_knowledge" in report
    pngs = sorted((run / "plots").glob("*.png"))
    assert {p.name for p in pngs} == {"loss_sft.png", "before_after_eval.png"}
    for p in pngs:
        data = p.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 8000
        assert f"plots/{p.name}" in report
    lock = json.loads((run / "tunebook.lock").read_text())
    assert {"sft", "eval", "merge"} <= set(lock["stages"])


def test_report_command_regenerates_the_report(proj):
    run = proj / "runs" / "gate"
    (run / "report.md").unlink()
    r = run_cli("report", "gate", cwd=proj)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (run / "report.md").is_file() and "report at runs/gate/report.md" in r.stdout


def test_hub_task_offline_fails_clearly_before_generating(proj, smollm2):
    _set_eval(proj, "  forgetting: {tasks: [gsm8k], max_drop: {gsm8k: 3}}\n", smollm2)
    r = run_cli("eval", "gate", "--quiet", cwd=proj, env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 1, r.stderr[-3000:]
    assert "dataset of lm-eval task 'gsm8k' isn't available offline" in r.stderr
    assert "general_knowledge" in r.stderr and "Traceback" not in r.stderr
    assert "answering" not in r.stderr  # failed before any model generated anything
