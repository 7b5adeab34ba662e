"""What every command needs from its arguments, built once: the project root and the recipe, loaded and resolved.

Commands build these here and pass them down; library entry points take a Recipe or a ResolvedRecipe, never a
name and a root to resolve again."""
from __future__ import annotations

import os
from pathlib import Path

from runner.recipe.load import Recipe, load_recipe
from runner.recipe.resolve import ResolvedRecipe, resolve

ROOT_ENV = "TUNEBOOK_ROOT"


def project_root(args) -> Path:
    """The project root (the folder holding recipes/): --root, else $TUNEBOOK_ROOT, else the current folder."""
    return Path(getattr(args, "root", None) or os.environ.get(ROOT_ENV) or ".").resolve()


def loaded_recipe(args, name: str | None = None) -> Recipe:
    """The recipe the command names (`args.recipe`, or `name`), loaded and validated; not resolved, for commands
    that resolve it for another machine (plan, launch)."""
    return load_recipe(name or args.recipe, project_root(args))


def target_machine(args):
    """The machine to resolve for: a GPU profile from recipes/presets/gpus.yaml when the command has
    `--gpu ID` (with --gpus per node and --nodes), else None (this machine, detected)."""
    gpu = getattr(args, "gpu", None)
    if not gpu:
        return None
    from runner.plan import estimate as P
    from runner.plan.target import target_hardware

    return target_hardware(P.gpu_by_id(gpu), getattr(args, "gpus", None) or 1, getattr(args, "nodes", None) or 1)


def resolved_recipe(args, name: str | None = None, template_check: bool = True) -> ResolvedRecipe:
    """The recipe the command names (`args.recipe`, or `name`), loaded and resolved for this machine, or for
    the GPU profile `--gpu` names."""
    return resolve(loaded_recipe(args, name), h=target_machine(args), template_check=template_check)
