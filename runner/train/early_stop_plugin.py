"""tunebook's early-stopping rule (runner.early_stopping) inside Axolotl's trainer: an Axolotl plugin whose
transformers TrainerCallback judges the validation loss after every epoch and stops training when the rule says so.

Why not Axolotl's own `early_stopping_patience`: Axolotl requires step-based `save_steps`/`eval_steps` for it
(`check_early_stopping` in axolotl/utils/schemas/validation.py) and hands it to transformers' EarlyStoppingCallback,
which needs `load_best_model_at_end`; tunebook evaluates and checkpoints once per epoch and chooses the epoch to
keep itself, after training (runner.train.trainlog.best_epoch).

The resolved config names this plugin (after runner.train.seed_plugin's) and its settings (runner.recipe.resolve):
    plugins: [runner.train.early_stop_plugin.EarlyStopPlugin]
    tunebook_early_stopping: {patience, min_delta, min_gain, memorised, min_epochs, record: <stage dir>/early_stop.json}
Axolotl imports the module in the training process (the same venv; runner.train.axolotl.child_env puts this
package first on PYTHONPATH) and validates the settings with EarlyStoppingArgs, which it merges into its own
config schema (axolotl/integrations/config.py: merge_input_args).

Why stopping in on_evaluate keeps the stop epoch's checkpoint (transformers 5.16.1, Trainer._run_epoch and
_maybe_log_save_evaluate): at an epoch end on_epoch_end asks for an evaluation and a save (save_strategy epoch);
evaluate() appends eval_loss to state.log_history and then calls on_evaluate, where this callback may set
should_training_stop; the checkpoint is saved after that, and only then does the epoch loop break.

This module subclasses Axolotl's and transformers' classes, so it imports them at the top: only Axolotl's process
and Axolotl's config validation (runner.train.config_check) import it.
"""
from __future__ import annotations

from pathlib import Path

from axolotl.integrations.base import BasePlugin
from pydantic import BaseModel, ConfigDict, Field
from transformers import TrainerCallback

from runner.early_stopping import BOUNDS, CONFIG_KEY, DEFAULT, Rule, judge, record, write_record


def _bounded(name: str):
    kind, low, high = BOUNDS[name]
    return Field(getattr(DEFAULT, name), ge=low, le=high, description=f"runner.early_stopping.Rule.{name}")


class EarlyStoppingSettings(BaseModel):
    """The rule's settings as the Axolotl config carries them, and where the callback writes its record."""

    model_config = ConfigDict(extra="forbid")

    patience: int = _bounded("patience")
    min_delta: float = _bounded("min_delta")
    min_gain: float = _bounded("min_gain")
    memorised: float = _bounded("memorised")
    min_epochs: int = _bounded("min_epochs")
    record: str = Field(description="early_stop.json of the stage: how many epochs ran and why training stopped")


class EarlyStoppingArgs(BaseModel):
    """This plugin's keys of the Axolotl config (Axolotl's get_input_args contract)."""

    tunebook_early_stopping: EarlyStoppingSettings | None = None


def eval_losses(state, metrics: dict | None = None, planned: float | None = None) -> list[float]:
    """The validation loss of each evaluation so far, oldest first, from the trainer state's log history (restored
    from the checkpoint when a stage resumes, so the rule sees the epochs before the interruption too); one per
    step, the last logged wins. `metrics` (on_evaluate's) are added when the history does not have them yet.
    With `planned` (the epochs planned), an evaluation past them is left out (see _past_plan)."""
    by_step: dict = {}
    for h in state.log_history:
        # An evaluation before the first step (Axolotl runs one) judges the untrained model: it is no epoch.
        if "eval_loss" in h and h.get("step") and not _past_plan(h.get("epoch"), planned):
            by_step[h.get("step")] = float(h["eval_loss"])
    if (metrics and "eval_loss" in metrics and state.global_step and state.global_step not in by_step
            and not _past_plan(state.epoch, planned)):
        by_step[state.global_step] = float(metrics["eval_loss"])
    return list(by_step.values())


def _past_plan(epoch, planned: float | None) -> bool:
    """Whether an evaluation came a few steps after the planned epochs ended. With sample packing Axolotl
    estimates the steps: hr-bot got 400 for 4 epochs of 99, so the trainer evaluated at the end of epoch 4 and
    again at the end of training, at epoch 4.04 (counted, the record said 5 epochs ran of 4, and the plateau rule
    judged the tail as an epoch). An estimate short of the plan is the other way round and is kept: support-faq's
    eighth epoch ended its training at 7.87, and that evaluation is epoch 8's."""
    return epoch is not None and planned is not None and float(epoch) > float(planned) + 1e-3


class EarlyStopCallback(TrainerCallback):
    """Judges the validation loss at every evaluation (one per epoch) and stops training when the rule fires;
    writes early_stop.json after every evaluation and at the end of training (main process only)."""

    def __init__(self, rule: Rule, record_path: str | Path, planned_epochs: float):
        self.rule, self.path, self.planned = rule, Path(record_path), float(planned_epochs)
        self.stopped = False

    @classmethod
    def from_settings(cls, settings: dict, planned_epochs: float) -> "EarlyStopCallback":
        """From the config's `tunebook_early_stopping` mapping."""
        return cls(Rule.from_dict(settings), settings["record"], planned_epochs)

    def _write(self, state, losses: list[float], finished: bool) -> None:
        if state.is_world_process_zero:
            write_record(self.path, record(losses, self.rule, self.planned, self.stopped, state.global_step,
                                           finished))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        losses = eval_losses(state, metrics, self.planned)
        if not losses:
            return control
        verdict = judge(losses, self.rule)
        # At the last step training ends anyway (DefaultFlowCallback): that is no early stop.
        self.stopped = verdict.stop and state.global_step < state.max_steps
        if self.stopped:
            control.should_training_stop = True  # every process judges the same gathered loss: they stop together
            if state.is_world_process_zero:
                print(f"tunebook early stopping: stopping after epoch {verdict.epoch} of {self.planned:g}: "
                      f"{verdict.reason}", flush=True)
        self._write(state, losses, finished=False)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        losses = eval_losses(state, planned=self.planned)
        if losses:  # a run that never evaluated (a benchmark, a broken split) leaves no record to mislead
            self._write(state, losses, finished=True)
        return control


class EarlyStopPlugin(BasePlugin):
    """Adds EarlyStopCallback to the trainer of a config that carries `tunebook_early_stopping`."""

    def get_input_args(self) -> str:
        return f"{__name__}.EarlyStoppingArgs"

    def add_callbacks_pre_trainer(self, cfg, model) -> list:
        # Axolotl's PluginManager is a singleton that asks every plugin it ever registered: act only on a config
        # that asks for it.
        settings = cfg.get(CONFIG_KEY) if hasattr(cfg, "get") else None
        if not settings:
            return []
        return [EarlyStopCallback.from_settings(dict(settings), float(cfg.get("num_epochs") or 1))]
