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


def resolved_recipe(args, name: str | None = None, template_check: bool = True) -> ResolvedRecipe:
    """The recipe the command names (`args.recipe`, or `name`), loaded and resolved for this machine."""
    return resolve(loaded_recipe(args, name), template_check=template_check)
