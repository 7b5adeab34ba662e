"""What a run ships: the model made by a recipe's last training stage, as a LoRA adapter on its base and/or as a
whole model (the merge stage's `merged/`, the stage's own `merged/`, or a full fine-tune's output); a merge
recipe's is the whole model of its mergekit stage.

Serving, exporting and evaluating all ask this module, so "which folder is the fine-tuned model" is decided once.
Nothing here checks that training has run; callers say what to do when a folder is missing."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from runner.errors import TunebookError
from runner.recipe.load import TRAIN_KINDS
from runner.recipe.resolve import ResolvedRecipe, ResolvedStage


def has_model(folder: Path) -> bool:
    """Does `folder` hold a whole model (config and weights)?"""
    return (folder / "config.json").is_file() and (any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")))


@dataclass(frozen=True)
class TrainedModel:
    """The fine-tuned model of one training stage."""

    stage: ResolvedStage
    base: str
    adapter: Path | None
    merged: Path | None

    @property
    def rank(self) -> int | None:
        """The adapter's LoRA rank: as trained (adapter_config.json) when it exists, else as configured."""
        if self.adapter is None:
            return None
        rank = self.stage.config.get("lora_r")
        try:
            rank = json.loads((self.adapter / "adapter_config.json").read_text()).get("r") or rank
        except (OSError, ValueError):
            pass
        try:
            return int(rank) if rank else None
        except (TypeError, ValueError):
            return None


def training_stages(res: ResolvedRecipe, before: int | None = None) -> list[ResolvedStage]:
    """The stages that train (they have an Axolotl config), in order; only those before index `before` if given."""
    return [s for s in res.stages if s.kind in TRAIN_KINDS and s.config
            and (before is None or s.index < before)]


def last_training_stage(res: ResolvedRecipe, before: int | None = None, action: str = "ship") -> ResolvedStage:
    """The last training stage (before index `before`); a TunebookError when there is none."""
    stages = training_stages(res, before)
    if not stages:
        raise TunebookError(f"recipe {res.recipe.name} has no training stage: nothing to {action}")
    return stages[-1]


def trained_model(res: ResolvedRecipe, stage: ResolvedStage, before: int | None = None) -> TrainedModel:
    """The model `stage` trained. `merged` is the first whole-model folder that holds a model, in order: a merge
    stage of this stage's adapter (only merge stages before index `before`: a later one's folder may hold an older
    run's merge), the stage's own merged copy (made when a later stage trains from it), a full fine-tune's output;
    when none holds one yet, the first of them (where it will be), or None for an adapter that nothing merges."""
    adapter = stage.output_dir if stage.config.get("adapter") else None
    candidates = [s.paths.merged for s in res.stages if s.kind == "merge" and s.upstream == stage.name
                  and (before is None or s.index < before)]
    candidates.append(stage.paths.merged)
    if adapter is None:
        candidates.append(stage.output_dir)
    merged = next((c for c in candidates if has_model(c)), None)
    if merged is None:
        planned = [c for c in candidates if c != stage.paths.merged]
        merged = planned[0] if planned else None
    return TrainedModel(stage, str(stage.config["base_model"]), adapter, merged)


def shipped_model(res: ResolvedRecipe, before: int | None = None, action: str = "ship") -> TrainedModel:
    """The model a run ships: what its last training stage (before index `before`) trained; for a merge recipe
    (runner.recipe.merge) the whole model its mergekit stage makes."""
    merges = [s for s in res.stages if s.kind == "mergekit" and (before is None or s.index < before)]
    if merges:
        return TrainedModel(merges[-1], str(res.merge.base_model), None, merges[-1].paths.merged)
    return trained_model(res, last_training_stage(res, before, action), before)
