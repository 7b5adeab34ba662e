"""Hardware presets: YAML files in recipes/presets/ that users can read and copy."""
from __future__ import annotations

from pathlib import Path

from runner.errors import RecipeErrors, TunebookError
from runner.recipe.load import known_presets, presets_dir, schema_problems
from runner.recipe.yamlpos import load_yaml


def load_preset(name: str, root: Path) -> dict:
    """Load and validate one preset; its DeepSpeed file (if any) is resolved to an absolute path."""
    path = presets_dir(root) / f"{name}.yaml"
    if name not in known_presets(root):
        raise TunebookError(f"unknown preset '{name}'", fix=f"Presets: {', '.join(known_presets(root))}")
    located, problems = load_yaml(path, str(path.relative_to(root)))
    problems += schema_problems(located, "preset.schema.json")
    if problems:
        raise RecipeErrors(str(path.relative_to(root)), problems)
    preset = dict(located.data)
    preset["name"] = name
    if preset.get("deepspeed"):
        ds = presets_dir(root) / preset["deepspeed"]
        if not ds.is_file():
            raise TunebookError(f"preset {name} names DeepSpeed config {preset['deepspeed']}, which is missing",
                                where=f"{path.relative_to(root)}:{located.line_of(('deepspeed',))}")
        preset["deepspeed_path"] = str(ds)
    return preset


def load_defaults(root: Path) -> dict:
    """tunebook's base settings (recipes/presets/defaults.yaml)."""
    located, problems = load_yaml(presets_dir(root) / "defaults.yaml")
    return located.data or {}
