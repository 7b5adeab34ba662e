"""What a recipe is, before any check: the Recipe and its Stages, the file a recipe name names, the stage kinds,
and whether a recipe trains or merges other recipes' models. Every recipe module (load, merge, resolve) builds on
this one; it reads nothing but the recipe file's name."""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path

from runner.errors import TunebookError
from runner.recipe.yamlpos import Located

# Recipe and stage names become folder names (runs/<recipe>/<stage>/), image tags and command-line words: no
# shell metacharacters, no path separators, no leading dot or dash, and short enough for any file system.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
NAME_RULE = "up to 64 letters, digits, '.', '_' and '-', starting with a letter or digit"
TRAIN_KINDS = ("sft", "dpo", "simpo", "orpo", "kto")
PREFERENCE_KINDS = ("dpo", "simpo", "orpo", "kto")  # runner.preference: what each is and the rows it reads


@dataclass
class Stage:
    """One entry of `stages:` after normalisation."""

    kind: str
    name: str
    body: dict
    index: int


@dataclass
class Recipe:
    """A validated recipe: the parsed data plus where it came from."""

    name: str
    path: Path
    root: Path
    data: dict
    located: Located
    stages: list[Stage]

    def where(self, *keypath) -> str:
        return self.located.where(keypath)

    def resolve_path(self, p: str) -> Path:
        """Recipe paths are relative to the project root (the folder holding recipes/)."""
        path = Path(p)
        return path if path.is_absolute() else self.root / path


def did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def recipe_file(name_or_path: str, root: Path) -> Path:
    """Map a recipe name (or a path inside recipes/) to its file; refuse anything outside recipes/."""
    recipes_dir = (root / "recipes").resolve()
    arg = name_or_path.strip()
    if NAME_RE.fullmatch(arg) and "/" not in arg and not arg.endswith((".yaml", ".yml")):
        candidate = recipes_dir / f"{arg}.yaml"
    else:
        candidate = (root / arg).resolve()
    try:
        candidate.resolve().relative_to(recipes_dir)
    except ValueError:
        raise TunebookError(f"'{name_or_path}' is not a recipe in recipes/",
                            fix="Pass a recipe name such as hr-bot (the file recipes/hr-bot.yaml); "
                                "recipes outside recipes/ are refused.") from None
    if not candidate.is_file() or candidate.parent.resolve() != recipes_dir:
        known = sorted(p.stem for p in recipes_dir.glob("*.yaml"))
        raise TunebookError(f"no recipe named '{name_or_path}' in recipes/",
                            fix=f"Known recipes: {', '.join(known) or '(none)'}"
                                f"{did_you_mean(Path(arg).stem, known).replace(';', '.', 1)}")
    if not NAME_RE.fullmatch(candidate.stem) or candidate.suffix != ".yaml":
        # The file name becomes the run folder, the image tag and a word on remote command lines.
        raise TunebookError(f"recipe file name '{candidate.name}' is not a valid recipe name ({NAME_RULE}, "
                            "then .yaml)", where=f"recipes/{candidate.name}",
                            fix="Rename the file, e.g. recipes/my-recipe.yaml, and set `name:` to the same.")
    return candidate


def normalise_stages(data: dict) -> list[Stage]:
    # Default: train, check the result on held-out data (a failed gate stops before merge), then merge.
    # A merge recipe (runner.recipe.merge) merges other recipes' models with mergekit and scores the result.
    raw = data.get("stages") or (["mergekit", "eval"] if isinstance(data.get("merge"), dict)
                                 else ["sft", "eval", "merge"])
    stages = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            kind, body = item, {}
        else:
            kind, body = next(iter(item.items()))
            body = body or {}
        stages.append(Stage(kind=kind, name=body.get("name", kind), body=body, index=i))
    return stages


def looks_like_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or model.count("/") != 1


def is_merge_recipe(data) -> bool:
    """Does this recipe (its parsed mapping) merge other recipes' results (a `merge:` block; runner.recipe.merge)?"""
    return isinstance(data, dict) and isinstance(data.get("merge"), dict)
