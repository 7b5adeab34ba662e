"""The mergekit configuration tunebook writes for a merge recipe (runner.recipe.merge.MergePlan): one YAML in
mergekit's own format, run by `mergekit-yaml` (runner.merge.stage). Pure: reads no weights, writes nothing.

Per method (mergekit 0.1.5):
- linear: a weighted average of the sources' weights (`parameters.weight` per model; mergekit normalises the
  weights to sum 1). No base model: the sources themselves are averaged.
- slerp: spherical interpolation between exactly two models, from the first (t = 0) to the second (t = 1); mergekit
  wants the first as `base_model` too.
- ties / dare_ties: task arithmetic on the differences from the recipes' common base model (`base_model`), each
  difference sparsified to `density` (TIES: keep the largest; DARE: keep a random share, rescaled), signs elected
  by consensus, then added with `weight`. DARE draws at random: the stage passes a fixed seed.

A source is given as the whole model it ships when it has one (its merge stage's `merged/`, a full fine-tune's
output: what its eval scored), else as `base+adapter` (mergekit merges the LoRA into its base first).
"""
from __future__ import annotations

from pathlib import Path

from runner.errors import TunebookError
from runner.recipe.shipped import shipped_model

# Each TIES / DARE-TIES source keeps half of its task vector unless the recipe says otherwise (mergekit's own
# default, 1.0, would make DARE drop nothing and TIES prune nothing).
DEFAULT_DENSITY = 0.5


def source_reference(src) -> str:
    """The mergekit model reference of a source (runner.recipe.merge.MergeSource): the folder of the whole model
    it ships (or will, once trained), else `<base>+<adapter>`."""
    model = shipped_model(src.res, action="merge")
    if model.merged is not None:
        parts = [str(model.merged)]
    elif model.adapter is not None:
        parts = [str(model.base), str(model.adapter)]
    else:  # a full fine-tune: its output folder is the model
        parts = [str(model.stage.output_dir)]
    bad = next((p for p in parts if "+" in p), None)
    if bad:
        # mergekit splits a model reference at '+' (model+adapter): a path holding one can't be named to it.
        raise TunebookError(f"the model of source '{src.name}' is in a folder whose path contains '+' ({bad}), "
                            "which mergekit reads as model+adapter",
                            fix="Move the project (or $TUNEBOOK_RUNS) to a path without '+'.")
    return "+".join(parts)


def source_model_dir(src) -> Path:
    """The folder holding a source's tokenizer files as trained (chat template, fixed EOS): its whole model's
    folder, else its adapter's."""
    ref = source_reference(src)
    return Path(ref.split("+", 1)[1] if "+" in ref else ref)


def mergekit_config(plan) -> dict:
    """The mergekit YAML (as a dict) of a MergePlan."""
    refs = [source_reference(s) for s in plan.sources]
    if plan.method == "slerp":
        cfg = {"merge_method": "slerp", "base_model": refs[0], "models": [{"model": r} for r in refs],
               "parameters": {"t": plan.t}}
    elif plan.method == "linear":
        cfg = {"merge_method": "linear",
               "models": [{"model": r, "parameters": {"weight": s.weight}} for r, s in zip(refs, plan.sources)]}
    else:  # ties, dare_ties
        cfg = {"merge_method": plan.method, "base_model": plan.base_model,
               "models": [{"model": r, "parameters": {
                   "weight": s.weight, "density": DEFAULT_DENSITY if s.density is None else s.density}}
                   for r, s in zip(refs, plan.sources)]}
    if plan.dtype:
        cfg["dtype"] = plan.dtype
    return cfg
