"""The check `tunebook validate` runs: will the recipe's first training stage fit its preset's GPU?"""
from __future__ import annotations

from pathlib import Path

from runner.errors import TunebookError
from runner.plan import estimate as P
from runner.plan.target import resolve_for_gpu


def check_fits_preset(resolved) -> str | None:
    """A one-line warning when the first training stage will not fit the preset's GPU, else None.

    `resolved` is a runner.recipe.resolve.ResolvedRecipe. It was resolved for this machine (on a CPU: fp32, no
    LoRA kernels), so the recipe is resolved again for the preset's GPU. A model whose shape is unknown
    offline is no error here: validate must not fail for lack of a config.json, so it stays silent.
    """
    gpu = (resolved.preset or {}).get("gpu")
    if not gpu:
        return None
    rec = resolved.recipe
    root = Path(rec.root)
    try:
        target, stage, count = resolve_for_gpu(rec)
        shape = P.load_model_shape(str(stage.config.get("base_model") or rec.data["base_model"]), root)
    except TunebookError:
        return None
    est = P.estimate_memory(shape, P.TrainSetup.from_axolotl_config(stage.config, root, n_gpus=count))
    known = P.load_gpus().get(str(gpu.get("id")))
    memory = known.memory_gib if known else float(gpu["memory_gib"])
    v = P.verdict(est.peak_allocated_gib, memory)
    if v == "fits":
        return None
    fit = "is tight on" if v == "tight" else "does not fit"
    return (f"stage '{stage.name}' needs about {est.peak_allocated_gib:.1f} GiB per GPU: {fit} the "
            f"{gpu.get('name', gpu.get('id'))} ({memory:.0f} GiB usable); `tunebook plan {rec.name}` says what "
            "to change")
