"""Hardware presets: YAML files in recipes/presets/ that users can read and copy."""
from __future__ import annotations

from pathlib import Path

from runner.errors import RecipeErrors, TunebookError
from runner.recipe.load import NAME_RE, keypath_str, known_presets, presets_dir, schema_problems
from runner.recipe.yamlpos import load_yaml
from runner.safeload import nonfinite_paths


def load_preset(name: str, root: Path) -> dict:
    """Load and validate one preset; its DeepSpeed file (if any) is resolved to an absolute path."""
    path = presets_dir(root) / f"{name}.yaml"
    if not NAME_RE.fullmatch(name) or not path.is_file():
        raise TunebookError(f"unknown preset '{name}'", fix=f"Presets: {', '.join(known_presets(root))}")
    located, problems = load_yaml(path, str(path.relative_to(root)))  # a damaged preset says what is wrong
    if name not in known_presets(root) and not problems:
        raise TunebookError(f"recipes/presets/{name}.yaml is not a preset (it declares no `gpu:` and `training:`)",
                            fix=f"Presets: {', '.join(known_presets(root))}")
    problems += schema_problems(located, "preset.schema.json")
    problems += [(located.where(kp), f"{keypath_str(kp)}: NaN and infinity are not usable values; write a finite "
                                     "number") for kp in nonfinite_paths(located.data)]
    if problems:
        raise RecipeErrors(str(path.relative_to(root)), problems)
    preset = dict(located.data)
    preset["name"] = name
    if preset.get("deepspeed"):
        ds = presets_dir(root) / preset["deepspeed"]
        if not ds.resolve().is_relative_to(presets_dir(root).resolve()):
            raise TunebookError(f"preset {name} names DeepSpeed config {preset['deepspeed']}, outside recipes/presets/",
                                where=f"{path.relative_to(root)}:{located.line_of(('deepspeed',))}",
                                fix="Keep the DeepSpeed JSON beside the preset and name it by its file name.")
        if not ds.is_file():
            raise TunebookError(f"preset {name} names DeepSpeed config {preset['deepspeed']}, which is missing",
                                where=f"{path.relative_to(root)}:{located.line_of(('deepspeed',))}")
        preset["deepspeed_path"] = str(ds)
    return preset


def load_defaults(root: Path) -> dict:
    """tunebook's base settings (recipes/presets/defaults.yaml)."""
    located, problems = load_yaml(presets_dir(root) / "defaults.yaml")
    if problems or not isinstance(located.data or {}, dict):
        raise RecipeErrors(located.path, problems or [(located.where(()), "tunebook's defaults must be a YAML "
                                                                         "mapping (training:, axolotl:, why:)")])
    return located.data or {}
