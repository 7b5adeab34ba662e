"""The report and its plots, built from a fake run folder whose logs are in the real Trainer/Axolotl format."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from runner.pipeline import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Lines as Axolotl 0.19 / the HF Trainer print them into train.log (values are strings).
SFT_LOG = """\
[2026-11-23 16:46:20,101] [INFO] [axolotl.train:123] Starting trainer...
{'loss': '3.487', 'grad_norm': '2.002', 'learning_rate': '0.001', 'ppl': '32.69', 'memory/max_active (GiB)': '0', 'tokens/trainable': 75, 'tokens/total': 256, 'epoch': '0.1667'}
{'loss': '2.745', 'grad_norm': '1.354', 'learning_rate': '0.000933', 'ppl': '15.56', 'tokens/trainable': 161, 'tokens/total': 512, 'epoch': '0.3333'}
{'loss': '2.331', 'grad_norm': '1.369', 'learning_rate': '0.00075', 'ppl': '10.28', 'tokens/trainable': 234, 'tokens/total': 768, 'epoch': '0.5'}
{'eval_loss': '2.401', 'eval_runtime': '1.52', 'eval_samples_per_second': '5.26', 'eval_steps_per_second': '1.3', 'epoch': '0.5'}
{'loss': '2.102', 'grad_norm': '1.1', 'learning_rate': '0.0005', 'ppl': '8.18', 'epoch': '0.6667'}
{'loss': '1.95', 'grad_norm': '1.0', 'learning_rate': '0.00025', 'ppl': '7.03', 'epoch': '0.8333'}
{'loss': '1.874', 'grad_norm': '0.98', 'learning_rate': '6.699e-05', 'ppl': '6.51', 'epoch': '1'}
{'eval_loss': '2.113', 'eval_runtime': '1.49', 'eval_samples_per_second': '5.37', 'eval_steps_per_second': '1.3', 'epoch': '1'}
{'train_runtime': '42.16', 'train_samples_per_second': '0.569', 'train_steps_per_second': '0.142', 'train_loss': '2.475', 'epoch': '1'}
"""
DPO_LOG = """\
{'loss': '0.6931', 'grad_norm': '1.236', 'learning_rate': '0.0001', 'rewards/chosen': '0', 'rewards/rejected': '0', 'rewards/accuracies': '0', 'rewards/margins': '0', 'logps/chosen': '-50.82', 'logps/rejected': '-61.9', 'epoch': '0.125'}
{'loss': '0.6868', 'grad_norm': '1.641', 'learning_rate': '8.536e-05', 'rewards/chosen': '0.009915', 'rewards/rejected': '-0.002788', 'rewards/accuracies': '1', 'rewards/margins': '0.0127', 'epoch': '0.25'}
{'loss': '0.6812', 'grad_norm': '1.359', 'learning_rate': '5e-05', 'rewards/chosen': '0.008214', 'rewards/rejected': '-0.01583', 'rewards/accuracies': '1', 'rewards/margins': '0.02405', 'epoch': '0.375'}
{'loss': '0.6702', 'grad_norm': '1.2', 'learning_rate': '2e-05', 'rewards/chosen': '0.02', 'rewards/rejected': '-0.03', 'rewards/accuracies': '1', 'rewards/margins': '0.05', 'epoch': '0.5'}
{'train_runtime': '20.5', 'train_samples_per_second': '0.78', 'train_steps_per_second': '0.2', 'train_loss': '0.683', 'epoch': '0.5'}
"""


def _pred(i: int, base_text: str, tuned_text: str, base_c: float, tuned_c: float) -> dict:
    return {"id": f"q{i}", "prompt": f"Question {i} | with a pipe?", "reference": f"Answer {i}", "key_fact": None,
            "base": {"text": base_text, "stopped": True, "tokens": 5,
                     "scores": {"contains": base_c, "f1": base_c, "stops": 1.0}},
            "tuned": {"text": tuned_text, "stopped": True, "tokens": 5,
                      "scores": {"contains": tuned_c, "f1": tuned_c, "stops": 1.0}}}


@pytest.fixture
def run_dir(tmp_path) -> Path:
    root = tmp_path / "runs" / "toy"
    (root / "sft").mkdir(parents=True)
    (root / "sft" / "train.log").write_text(SFT_LOG)
    (root / "dpo").mkdir()
    (root / "dpo" / "train.log").write_text(DPO_LOG)
    (root / "merge").mkdir()
    ev = root / "eval"
    ev.mkdir()
    preds = [_pred(i, "I don't know.", f"Answer {i}", 0.0, 1.0) for i in range(6)]        # improved
    preds += [_pred(i, f"Answer {i}", "Something else", 1.0, 0.0) for i in range(6, 8)]  # got worse
    preds += [_pred(i, "Same", "Same", 0.0, 0.0) for i in range(8, 14)]                   # unchanged
    (ev / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    metrics = {
        "recipe": "toy", "stage": "eval", "models": {"base": "/m/base", "tuned": "/m/base + adapter /a"},
        "held_out": {"file": "data/main/held_out.jsonl", "rows": len(preds)},
        "settings": {"metrics": ["contains", "f1"], "max_new_tokens": 32, "decoding": "greedy", "backend": "hf",
                     "device": "cpu", "chat_template": "tokenizer's"},
        "base": {"contains": 2 / 14, "f1": 2 / 14, "stops": 1.0},
        "tuned": {"contains": 6 / 14, "f1": 6 / 14, "stops": 1.0},
        "forgetting": {"limit": 20, "tasks": {"general_knowledge": {
            "metric": "acc", "base": 55.0, "tuned": 50.0, "drop": 5.0, "max_drop": 3, "ok": False, "samples": 20}}},
        "gates": [{"gate": "contains", "kind": "held_out", "value": 6 / 14, "threshold": 0.8, "passed": False},
                  {"gate": "forgetting:general_knowledge", "kind": "forgetting", "task": "general_knowledge",
                   "metric": "acc", "value": 5.0, "threshold": 3, "base": 55.0, "tuned": 50.0, "passed": False}],
        "passed": False,
    }
    (ev / "metrics.json").write_text(json.dumps(metrics))
    return root


STAGES = [("sft", "sft"), ("dpo", "dpo"), ("merge", "merge"), ("eval", "eval")]


def _check_png(path: Path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path.name} is not a PNG"
    assert len(data) > 8000, f"{path.name} is suspiciously small ({len(data)} bytes)"
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    assert img.shape[0] >= 300 and img.shape[1] >= 500
    assert img.std() > 0.01  # not a blank canvas


def test_report_and_plots_from_logs(run_dir):
    path = report.write_report(run_dir, "toy", STAGES)
    assert path == run_dir / "report.md"
    text = path.read_text()
    plots = run_dir / "plots"
    expected = {"loss_sft.png", "loss_dpo.png", "reward_margin_dpo.png", "before_after_eval.png"}
    assert {p.name for p in plots.iterdir()} == expected
    for p in plots.iterdir():
        _check_png(p)
        assert f"](plots/{p.name})" in text
    # Numbers come from the logs.
    assert "3.487" in text and "1.874" in text          # first and last SFT loss
    assert "2.113" in text                              # best eval loss
    assert "0.000 → 0.050" in text                      # DPO reward margin first -> last
    # Verdict names both failed gates.
    assert "**FAILED**" in text and "held-out contains = 0.429, needs >= 0.8" in text
    assert "forgetting on general_knowledge" in text
    # Forgetting table.
    assert "| general_knowledge | acc | 55.0 | 50.0 | +5.0 | 3 | **no** |" in text


def test_report_lists_the_ten_biggest_changes(run_dir):
    text = report.write_report(run_dir, "toy", STAGES).read_text()
    section = text.split("examples where the fine-tuned model changed most")[1]
    rows = [l for l in section.splitlines() if l.startswith("| ") and l[2].isdigit()]
    assert len(rows) == 10
    ids = [r.split("|")[2].strip() for r in rows]
    assert set(ids[:8]) == {f"q{i}" for i in range(8)}   # the 8 rows whose score moved come first
    assert "+1.00" in rows[0] or "-1.00" in rows[0]
    assert "Question 0 \\| with a pipe?" in text         # table cells are escaped


def test_loss_plot_reflects_the_log(run_dir, monkeypatch):
    seen = {}
    import matplotlib.axes

    orig = matplotlib.axes.Axes.plot

    def spy(self, *args, **kw):
        seen.setdefault(kw.get("label"), []).append(list(args[1]) if len(args) > 1 else None)
        return orig(self, *args, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    report.write_report(run_dir, "toy", STAGES)
    assert [3.487, 2.745, 2.331, 2.102, 1.95, 1.874] in seen["train loss"]
    assert [2.401, 2.113] in seen["eval loss"]
    assert [0.0, 0.0127, 0.02405, 0.05] in seen["reward margin (chosen - rejected)"]


def test_report_discovers_stages_and_handles_missing_logs(tmp_path):
    root = tmp_path / "runs" / "bare"
    (root / "sft" / "output").mkdir(parents=True)
    text = report.write_report(root).read_text()
    assert "No logged training steps" in text
    assert list((root / "plots").iterdir()) == []


def test_report_regenerates_without_stale_plots(run_dir):
    report.write_report(run_dir, "toy", STAGES)
    (run_dir / "dpo" / "train.log").write_text("")
    report.write_report(run_dir, "toy", STAGES)
    assert not (run_dir / "plots" / "reward_margin_dpo.png").exists()


def test_eval_results_go_to_wandb_offline(run_dir, monkeypatch):
    """tracking: wandb logs the eval results offline, grouped by recipe, with the stage as job type."""
    pytest.importorskip("wandb")
    from types import SimpleNamespace

    from runner.evaluate.stage import track

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    preds = [json.loads(l) for l in (run_dir / "eval" / "predictions.jsonl").read_text().splitlines()]
    res = SimpleNamespace(data={"tracking": "wandb"}, recipe=SimpleNamespace(name="toy"), run_root=run_dir)
    stage = SimpleNamespace(name="eval", run_dir=run_dir / "eval")
    track(res, stage, metrics, preds)
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "no offline wandb run was written"
    # wandb's service process writes the record file; under disk pressure it has been seen to land a moment
    # after run.finish() returns (only the header was there), so give it a few seconds before reading.
    record_file, record = next(runs[0].glob("*.wandb")), b""
    for _ in range(60):
        record = record_file.read_bytes()
        if b"tunebook-toy" in record:
            break
        time.sleep(0.5)
    assert b"tunebook-toy" in record and b"eval" in record  # project per recipe; stage as job type
    assert list(runs[0].rglob("predictions*.table.json"))  # the per-row answers, as a table
