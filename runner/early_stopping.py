"""The early-stopping rule of a training stage, and the record it leaves.

After each epoch the stage's validation loss (eval_strategy epoch) is judged: training stops once the model has
learned the set, or once the loss has stopped improving. Pure: losses in, a verdict with its reason out. Three
places use it: `tunebook resolve` shows the rule (runner.recipe.resolve), the Axolotl plugin applies it inside
the trainer (runner.train.early_stop_plugin), and the record it writes (early_stop.json in the stage folder:
how many epochs ran and why training stopped) is what `tunebook train` reports and the manifest keeps.

The rule, after epoch k (epochs counted by evaluation, 1-based), never before `min_epochs`:
  learned:  the validation loss is under `memorised` (mean loss per trained token, in nats);
  plateau:  none of the last `patience` epochs improved on the lowest loss before them by `min_delta` (relative)
            and by `min_gain` (nats per trained token): a smaller fall does not count as an improvement.
A NaN or infinite loss is never "learned" and never an improvement. Why these conditions and these defaults:
docs/quality.md, "Early stopping", and the comments on DEFAULT below.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from runner.fsutil import atomic_write_json

# Bounds of each setting, shared by the recipe schema's description and the Axolotl plugin's own validation:
# name -> (type, lowest, highest).
BOUNDS = {"patience": (int, 1, 100), "min_delta": (float, 0.0, 1.0), "min_gain": (float, 0.0, 10.0),
          "memorised": (float, 0.0, 10.0), "min_epochs": (int, 1, 100)}
LEARNED, PLATEAU = "memorised", "plateau"
# How a resolved Axolotl config asks for the rule (runner.recipe.resolve writes them, runner.train.early_stop_plugin
# reads them): the plugin Axolotl loads, and the config key holding the settings and the record's path.
AXOLOTL_PLUGIN = "runner.train.early_stop_plugin.EarlyStopPlugin"
CONFIG_KEY = "tunebook_early_stopping"


@dataclass(frozen=True)
class Rule:
    """The settings of the rule (recipe: `training.early_stopping`)."""

    patience: int = 2
    min_delta: float = 0.01
    min_gain: float = 0.005
    memorised: float = 0.005
    min_epochs: int = 2

    @classmethod
    def from_dict(cls, d: dict | None) -> "Rule":
        """The defaults, overridden by the keys of `d` (unknown keys are the caller's to refuse)."""
        d = d or {}
        return cls(**{k: BOUNDS[k][0](d[k]) for k in BOUNDS if d.get(k) is not None})

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """The rule in one sentence (what `tunebook resolve` shows)."""
        learned = (f"the validation loss is under {self.memorised:g} per trained token (the model has learned "
                   "the set) or " if self.memorised > 0 else "")
        return (f"stop after an epoch once {learned}no epoch of the last {self.patience} improved on the best "
                f"before them by {self.min_delta * 100:g}%{self._gain_text()}; never before epoch {self.min_epochs}; "
                "the best epoch is kept as without it")

    def _gain_text(self) -> str:
        return f" and by {self.min_gain:g} per trained token" if self.min_gain > 0 else ""

    def improves(self, loss, best: float) -> bool:
        """Whether `loss` counts as an improvement on `best`: lower by min_delta of it and by min_gain."""
        return finite(loss) and loss < best - max(best * self.min_delta, self.min_gain)


# The derived default (docs/quality.md, "Early stopping", has the runs behind each value):
# - memorised 0.005: the validation rows are never trained on; a mean loss under 0.005 nats per answer token means
#   each is predicted at ~99.5% (exp(-0.005)) per token on average. On the 128-row company-facts set of issue 19 the
#   validation loss went 0.112, 0.024, 0.0006, 0.0003, ...: epoch 2 (0.024, above the threshold) scored 84% on
#   held-out, epoch 3 (0.0006) and every later one 100%: the rule stops it after epoch 3. On the facts-a fixture
#   (tests/e2e/test_early_stop.py), seeded before Axolotl packs it (runner.train.seed_plugin), it went 1.104, 0.407,
#   0.050, 0.0165, 0.0195, 0.0098, 0.0038, 0.0030, 0.0028, 0.0028 with held-out 0, 20, 80, 100, 80, 80, 100, 100,
#   100, 100% (benchmarks/eval_checkpoints.py): 0.01, the first default, stopped it after epoch 6 and kept 80%
#   where ten epochs keep 100%; 0.005 stops it after epoch 7 at 100%. A threshold of 0.001 never fired there, and
#   the relative plateau rule is blind at such small losses. An absolute threshold rather
#   than a share of epoch 1's loss: a share fires too early when the first epoch learned little (a first loss of
#   2.0 would put 1% at 0.02, about where the set still scored 84%).
# - patience 2, min_delta 1%: on hr-bot the validation loss moves by 1-2% between epochs 3 and 4 while the held-out
#   score still moves by up to 11 points; the run in the README logged 0.698, 0.577, 0.590, 0.590 (a 2% rise at
#   epoch 3) and the 5-epoch runs still gained on held-out from epoch 3 to 4 (73.3 -> 80.0%). Patience 1 would have
#   stopped it after epoch 3. With patience 2 a 4-epoch run can stop only after epoch 3, and only if epoch 2 did not
#   improve on epoch 1 by 1% (in that run it improved by 17%): hr-bot keeps its 4 epochs.
# - min_gain 0.005: at small losses 1% is no change a greedy answer can show. On benchmarks/data/company-facts (128
#   rows, derived defaults, 10 epochs; benchmarks/early_stop.py) the validation loss went 0.570, 0.252, 0.148,
#   0.113, 0.0272, 0.0241, 0.0230, 0.0224, 0.0222, 0.0222 and the held-out score of the epoch checkpoints 9, 31, 53,
#   62, 81, 81, 81, 81, 81, 81% (benchmarks/eval_checkpoints.py): flat from epoch 5 while the loss still fell by 1-11%
#   an epoch. Falls under 0.005 nats per token (the reference answer's tokens ~0.5% more likely) do not count: the
#   rule stops it after epoch 7 and keeps epoch 7 (81%). hr-bot's and support-faq's falls are 0.008 and more until
#   their last epochs: they run as before.
# - min_epochs 2: one evaluation is no trend, and a stop after the first epoch would keep a checkpoint taken while
#   the learning rate was at its peak.
DEFAULT = Rule()


@dataclass(frozen=True)
class Verdict:
    """What the rule says after the last epoch of a loss sequence: stop or not, which condition, and why."""

    stop: bool
    epoch: int
    condition: str | None
    reason: str


def finite(x) -> bool:
    """Is x a number that is neither NaN nor infinite?"""
    return isinstance(x, (int, float)) and math.isfinite(x)


def without_rule(cfg: dict) -> dict:
    """A copy of an Axolotl config without the rule: its settings key and its plugin (`plugins` is left out when
    no other plugin remains)."""
    out = {k: v for k, v in cfg.items() if k != CONFIG_KEY}
    plugins = [p for p in cfg.get("plugins") or [] if p != AXOLOTL_PLUGIN]
    if plugins:
        out["plugins"] = plugins
    else:
        out.pop("plugins", None)
    return out


def _fmt(x) -> str:
    return f"{x:.4g}" if finite(x) else str(x)


def judge(losses: Sequence[float], rule: Rule = DEFAULT) -> Verdict:
    """Stop after the last epoch of `losses` (the validation loss of each epoch so far, in order)?"""
    k = len(losses)
    if k == 0:
        return Verdict(False, 0, None, "no validation loss yet")
    last = losses[-1]
    if k < rule.min_epochs:
        return Verdict(False, k, None, f"epoch {k} is before min_epochs ({rule.min_epochs})")
    if rule.memorised > 0 and finite(last) and last < rule.memorised:
        return Verdict(True, k, LEARNED, f"validation loss {_fmt(last)} is under {rule.memorised:g} per trained "
                                         "token (the model has learned the set)")
    before = [(i + 1, x) for i, x in enumerate(losses[:k - rule.patience]) if finite(x)]
    if k <= rule.patience or not before:
        return Verdict(False, k, None, f"fewer than {rule.patience} epochs after a finite validation loss to "
                                       "compare with")
    best_epoch, best = min(before, key=lambda e: e[1])
    window = list(losses[k - rule.patience:])
    if not any(rule.improves(x, best) for x in window):
        return Verdict(True, k, PLATEAU,
                       f"validation loss has not improved on epoch {best_epoch}'s {_fmt(best)} by "
                       f"{rule.min_delta * 100:g}%{rule._gain_text()} for {rule.patience} "
                       f"epoch{'s' if rule.patience > 1 else ''} ("
                       + ", ".join(_fmt(x) for x in window) + ")")
    return Verdict(False, k, None, f"validation loss {_fmt(last)} still improving (best before the last "
                                   f"{rule.patience}: {_fmt(best)})")


def first_stop(losses: Sequence[float], rule: Rule = DEFAULT) -> Verdict | None:
    """The first epoch of a whole loss sequence after which the rule stops (None: it never does)."""
    for k in range(1, len(losses) + 1):
        v = judge(losses[:k], rule)
        if v.stop:
            return v
    return None


def record(losses: Sequence[float], rule: Rule, planned: float, stopped: bool, step: int,
           finished: bool) -> dict:
    """The content of early_stop.json. `stopped`: the rule cut training short (it fired before the planned end);
    `finished`: training is over (False while it runs: the record is rewritten after every epoch)."""
    v = judge(losses, rule)
    if stopped:
        reason = v.reason
    elif finished:
        reason = (f"all {planned:g} planned epochs ran; after the last: {v.reason}" if not v.stop else
                  f"all {planned:g} planned epochs ran (the rule was met only at the last: {v.reason})")
    else:
        reason = f"running; after epoch {v.epoch}: {v.reason}"
    planned = int(planned) if float(planned).is_integer() else float(planned)
    return {"stopped_early": bool(stopped), "epochs_run": len(losses), "epochs_planned": planned,
            "condition": v.condition if stopped else None, "reason": reason,
            # JSON has no NaN: a non-finite loss is written as null (tunebook's readers refuse NaN).
            "eval_loss_per_epoch": [round(float(x), 6) if finite(x) else None for x in losses],
            "step": int(step), "finished": bool(finished), "rule": rule.to_dict()}


def write_record(path: str | Path, rec: dict) -> None:
    """Atomically (temp file, then rename): a reader never sees half a record."""
    atomic_write_json(path, rec)


def read_record(path: str | Path) -> dict | None:
    """The record of a stage (None when there is none or it is not a record)."""
    p = Path(path)
    if not p.is_file():
        return None
    try:
        rec = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and "stopped_early" in rec else None


def stop_message(stage: str, rec: dict) -> str:
    """What `tunebook train` says about a stage's epochs after training."""
    if rec.get("stopped_early"):
        return (f"{stage}: stopped after epoch {rec['epochs_run']} of {rec['epochs_planned']:g}: "
                f"{rec['reason']}")
    return f"{stage}: early stopping did not fire: {rec['reason']}"
