"""Read what a training run logged: the Trainer's per-step dicts, from trainer_state.json or the log."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from runner import early_stopping as es
from runner.layout import StageLayout

DICT_RE = re.compile(r"\{'(?:loss|eval_loss|train_runtime|train_loss|epoch|rewards/|log_odds|nll_loss|kl)[^{}]*\}")


# What TRL's preference trainers log per step (log key, summary name, what it says), as the manifest and the
# report name them: DPO, SimPO (CPO) and ORPO log reward margins and accuracies, ORPO its log-odds ratio and the
# NLL of the chosen answer, KTO its KL estimate and the rewards of desirable and undesirable examples.
PREFERENCE_METRICS = (
    ("rewards/margins", "reward_margin", "reward margin (chosen - rejected)"),
    ("rewards/accuracies", "reward_accuracy", "reward accuracy (share of pairs with chosen > rejected)"),
    ("rewards/chosen", "reward_chosen", "reward of the chosen / desirable answers"),
    ("rewards/rejected", "reward_rejected", "reward of the rejected / undesirable answers"),
    ("log_odds_ratio", "log_odds_ratio", "ORPO log-odds ratio term, log sigmoid(log odds chosen - rejected)"),
    ("log_odds_chosen", "log_odds_chosen", "ORPO log odds of chosen over rejected"),
    ("nll_loss", "nll_loss", "NLL of the chosen answer (ORPO's SFT term, CPO's behaviour cloning)"),
    ("kl", "kl", "KTO's KL estimate between the trained and the reference model"),
)


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def from_log(log: Path) -> list[dict]:
    """Every metrics dict the HF Trainer printed into a log (it prints Python dict reprs)."""
    if not log.is_file():
        return []
    out = []
    text = log.read_text(errors="replace").replace("\r", "\n")
    for m in DICT_RE.finditer(text):
        try:
            d = ast.literal_eval(m.group(0))
        except (ValueError, SyntaxError):
            continue
        out.append({k: _num(v) for k, v in d.items()})
    return out


def checkpoints(output_dir: Path) -> list[Path]:
    """The Trainer's checkpoint-N folders in an output dir, oldest step first."""
    cks = [p for p in output_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(cks, key=lambda p: int(p.name.split("-")[-1]))


def _states(output_dir: Path) -> list[Path]:
    return [c / "trainer_state.json" for c in checkpoints(output_dir) if (c / "trainer_state.json").is_file()]


def from_trainer_state(output_dir: Path) -> list[dict]:
    """log_history of the latest checkpoint's trainer_state.json."""
    states = _states(output_dir)
    if not states:
        return []
    return json.loads(states[-1].read_text()).get("log_history", [])


def history(stage_dir: Path) -> list[dict]:
    """The fuller of the two sources (the log also covers steps after the last checkpoint; the state
    survives a log that was rotated)."""
    paths = StageLayout(Path(stage_dir))
    a = from_log(paths.log)
    b = from_trainer_state(paths.output)
    return a if len(a) >= len(b) else b


def summary(hist: list[dict]) -> dict:
    """First/last/min train loss, eval losses, the preference methods' metrics (first and last), steps."""
    losses = [h["loss"] for h in hist if isinstance(h.get("loss"), float)]
    evals = [h["eval_loss"] for h in hist if isinstance(h.get("eval_loss"), float)]
    out = {}
    if losses:
        out.update(train_loss_first=losses[0], train_loss_last=losses[-1], train_loss_min=min(losses),
                   logged_steps=len(losses))
    if evals:
        # JSON has no NaN (tunebook's readers refuse it, and the manifest is read back): a diverged epoch is null.
        finite = [e for e in evals if es.finite(e)]
        out.update(eval_loss=[e if es.finite(e) else None for e in evals])
        if finite:
            out.update(eval_loss_best=min(finite))
    for key, name, _ in PREFERENCE_METRICS:
        vals = [h[key] for h in hist if isinstance(h.get(key), float) and es.finite(h[key])]
        if vals:
            out.update({f"{name}_first": vals[0], f"{name}_last": vals[-1]})
    tok = [h for h in hist if isinstance(h.get("tokens/total"), (int, float)) and h.get("tokens/total")]
    if tok:
        # tokens/total counts every input id computed (padding included); trainable ones carry a label.
        out.update(tokens_trainable=int(tok[-1].get("tokens/trainable", 0)), tokens_total=int(tok[-1]["tokens/total"]),
                   trained_share=round(float(tok[-1].get("tokens/trainable", 0)) / float(tok[-1]["tokens/total"]), 4))
    end = [h for h in hist if "train_runtime" in h]
    if end:
        out.update(train_runtime_s=end[-1]["train_runtime"], train_loss=end[-1].get("train_loss"))
    return out


def best_epoch(output_dir: Path, tolerance: float = 0.02) -> dict | None:
    """The epoch to keep: the latest one whose validation loss is within `tolerance` (relative) of the
    lowest. Validation loss flattens while a model is still memorising facts, so among epochs that are
    equally good by it the later one is kept; a real rise (overfitting) loses. An epoch whose loss is NaN or
    infinite (diverged) is never kept. Only the epochs that ran count: a stage the early-stopping rule cut short
    has fewer checkpoints than epochs planned, and its last checkpoint's log has them all."""
    states = _states(output_dir)
    if not states:
        return None
    state = json.loads(states[-1].read_text())
    saved = {int(p.parent.name.split("-")[-1]) for p in states}
    evals = [h for h in state.get("log_history", []) if "eval_loss" in h and h.get("step") in saved]
    finite = [h for h in evals if es.finite(h["eval_loss"])]
    if not finite:
        return None
    lowest = min(h["eval_loss"] for h in finite)
    pick = [h for h in finite if h["eval_loss"] <= lowest * (1 + tolerance)][-1]
    return {"epoch": round(float(pick.get("epoch", 0)), 2), "step": int(pick["step"]),
            "checkpoint": f"checkpoint-{int(pick['step'])}", "eval_loss": float(pick["eval_loss"]),
            "lowest_eval_loss": float(lowest), "tolerance": tolerance,
            "epochs_run": round(float(state.get("epoch", 0)), 2),
            "eval_loss_per_epoch": [round(float(h["eval_loss"]), 4) if es.finite(h["eval_loss"]) else None
                                    for h in evals]}
