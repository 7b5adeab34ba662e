"""Recipe loading: YAML with line numbers → JSON Schema → semantic checks, every problem reported at once."""
from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from runner.errors import RecipeErrors, TunebookError
from runner.formats import block_format
from runner.recipe.yamlpos import Located, load_yaml

# The checkout (or installed tree) that holds schema/ and recipes/presets/ next to runner/.
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DIR = PACKAGE_ROOT / "schema"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
TRAIN_KINDS = ("sft", "dpo", "orpo", "kto")
PREFERENCE_KINDS = ("dpo", "orpo", "kto")
if TYPE_CHECKING:  # jsonschema takes a tenth of a second to import: only when a recipe is validated
    from jsonschema import Draft202012Validator
    from referencing import Registry


@lru_cache(maxsize=None)
def _schemas() -> Registry:
    from referencing import Registry, Resource

    registry = Registry()
    for f in SCHEMA_DIR.glob("*.schema.json"):
        schema = json.loads(f.read_text())
        res = Resource.from_contents(schema)
        registry = registry.with_resources([(schema["$id"], res), (f.name, res)])
    return registry


def validator(schema_file: str) -> Draft202012Validator:
    """A validator for one of the shipped schemas, with cross-schema $refs resolved."""
    from jsonschema import Draft202012Validator

    schema = json.loads((SCHEMA_DIR / schema_file).read_text())
    return Draft202012Validator(schema, registry=_schemas())


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


def keypath_str(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _type_name(value) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "nothing (null)"}.get(type(value), type(value).__name__)


def describe_schema_error(err) -> tuple[tuple, str]:
    """Turn one jsonschema error into (key path, readable message with expected/found/hint)."""
    path = tuple(err.absolute_path)
    v, inst, sch = err.validator, err.instance, err.schema
    if v in ("oneOf", "anyOf") and err.context:
        # Stages accept a name or a one-key mapping; show the branch closest to what was written.
        if isinstance(inst, str) and any("enum" in c.schema for c in err.context):
            kinds = next(c.schema["enum"] for c in err.context if "enum" in c.schema)
            return path, f"unknown stage '{inst}'{_did_you_mean(inst, kinds)} Stages are: {', '.join(kinds)}"
        from jsonschema.exceptions import best_match

        return describe_schema_error(best_match(err.context))
    if v == "additionalProperties":
        allowed = sorted(sch.get("properties", {}))
        extra = [k for k in inst if k not in sch.get("properties", {})]
        key = extra[0] if extra else "?"
        return path + (key,), (f"unknown key '{key}'{_did_you_mean(key, allowed)}"
                               f" Allowed here: {', '.join(allowed)}")
    if v == "propertyNames":
        key = next(iter(inst)) if isinstance(inst, dict) and inst else inst
        kinds = sch.get("propertyNames", {}).get("enum") or ["sft", "dpo", "merge", "eval"]
        return path + (key,), f"unknown stage '{key}'{_did_you_mean(key, kinds)} Stages are: {', '.join(kinds)}"
    if v == "required":
        missing = [k for k in sch["required"] if k not in inst]
        return path, f"missing required key '{missing[0]}'"
    if v == "type":
        return path, f"expected {err.validator_value if isinstance(err.validator_value, str) else ' or '.join(err.validator_value)}, found {_type_name(inst)} ({json.dumps(inst, default=str)})"
    if v == "enum":
        return path, f"expected one of {', '.join(map(str, sch['enum']))}; found '{inst}'{_did_you_mean(inst, sch['enum'])}"
    if v == "const":
        return path, f"expected '{sch['const']}', found {json.dumps(inst, default=str)}"
    if v in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[v]
        return path, f"must be {op} {err.validator_value}, found {inst}"
    if v == "pattern":
        return path, f"'{inst}' is not a valid name (letters, digits, '.', '_' and '-', starting with a letter or digit)"
    if v in ("minItems", "minLength", "minProperties"):
        return path, "must not be empty"
    if v == "maxProperties":
        return path, "a stage entry names exactly one stage (e.g. '- sft:' with its settings below)"
    return path, err.message


def schema_problems(located: Located, schema_file: str) -> list[tuple[str, str]]:
    """All schema violations of a parsed document, each as (file:line, 'key.path: message')."""
    problems = []
    for err in validator(schema_file).iter_errors(located.data):
        path, msg = describe_schema_error(err)
        problems.append((located.line_of(path) or 0, located.where(path), f"{keypath_str(path)}: {msg}"))
    problems.sort(key=lambda p: p[0])
    return [(w, m) for _, w, m in problems]


def recipe_file(name_or_path: str, root: Path) -> Path:
    """Map a recipe name (or a path inside recipes/) to its file; refuse anything outside recipes/."""
    recipes_dir = (root / "recipes").resolve()
    arg = name_or_path.strip()
    if NAME_RE.match(arg) and "/" not in arg and not arg.endswith((".yaml", ".yml")):
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
                                f"{_did_you_mean(Path(arg).stem, known).replace(';', '.', 1)}")
    return candidate


def presets_dir(root: Path) -> Path:
    return root / "recipes" / "presets"


def known_presets(root: Path) -> list[str]:
    """Preset files: YAML in recipes/presets/ that declare a target `gpu:` (the folder also holds tables)."""
    import yaml

    out = []
    for p in presets_dir(root).glob("*.yaml"):
        try:
            doc = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("gpu"), dict) and "training" in doc:
            out.append(p.stem)
    return sorted(out)


def normalise_stages(data: dict) -> list[Stage]:
    # Default: train, check the result on held-out data (a failed gate stops before merge), then merge.
    raw = data.get("stages") or ["sft", "eval", "merge"]
    stages = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            kind, body = item, {}
        else:
            kind, body = next(iter(item.items()))
            body = body or {}
        stages.append(Stage(kind=kind, name=body.get("name", kind), body=body, index=i))
    return stages


def data_files(data: dict) -> list[tuple[tuple, str]]:
    """(key path inside the data block, file) for every file a data block names."""
    out = []
    train = data.get("train")
    if isinstance(train, str):
        out.append((("train",), train))
    elif isinstance(train, list):
        out += [(("train", i), f) for i, f in enumerate(train)]
    if data.get("held_out"):
        out.append((("held_out",), data["held_out"]))
    for i, m in enumerate(data.get("mix") or []):
        out.append((("mix", i, "file"), m["file"]))
    return out


def looks_like_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or model.count("/") != 1


def semantic_problems(rec: Recipe) -> list[tuple[str, str]]:
    """Checks JSON Schema can't express: files exist, preset exists, stage order and data shapes agree."""
    d, root, problems = rec.data, rec.root, []

    def add(keypath, msg):
        problems.append((rec.where(*keypath), f"{keypath_str(keypath)}: {msg}"))

    preset = d.get("preset")
    if preset is not None and preset not in known_presets(root):
        add(("preset",), f"unknown preset '{preset}'{_did_you_mean(preset, known_presets(root))} "
                         f"Presets: {', '.join(known_presets(root))} (files in recipes/presets/)")

    base = d["base_model"]
    if looks_like_path(base) and not rec.resolve_path(base).exists():
        add(("base_model",), f"model folder '{base}' does not exist. Run `make model` to prepare the default "
                             "SmolLM2 model, or give a hub id such as mistralai/Mistral-7B-Instruct-v0.3")

    blocks = [(("data",), d["data"])] + [
        (("stages", s.index, s.kind, "data"), s.body["data"]) for s in rec.stages if s.body.get("data")]
    for prefix, block in blocks:
        for sub, f in data_files(block):
            p = rec.resolve_path(f)
            if not p.is_file():
                add(prefix + sub, f"data file '{f}' not found (paths are relative to the project root "
                                  f"{root}); check the name or create it")

    seen_names, trained, method = {}, False, (d.get("training") or {}).get("method")
    for s in rec.stages:
        kp = ("stages", s.index)
        if s.name in seen_names:
            add(kp, f"stage name '{s.name}' is used twice (also stages[{seen_names[s.name]}]); "
                    "give one of them a distinct `name:`")
        seen_names[s.name] = s.index
        smethod = (s.body.get("training") or {}).get("method", method)
        if s.kind == "merge":
            if not trained:
                add(kp, "merge comes before any training stage: there is no adapter to merge. "
                        "Put merge after sft/dpo (e.g. stages: [sft, merge])")
            elif smethod == "full":
                add(kp, "merge has nothing to merge: method is full (no LoRA adapter). Remove the merge stage")
        if s.kind in TRAIN_KINDS:
            trained = True
            block = s.body.get("data") or d["data"]
            fmt = block_format(block, root)
            if s.kind in PREFERENCE_KINDS and fmt not in (None, "preference"):
                add(kp + (s.kind,), f"a {s.kind} stage needs preference data (prompt/chosen/rejected rows) but "
                                    f"its data is in {fmt} format. Give the stage its own data: "
                                    f"`- {s.kind}: {{data: {{train: prefs.jsonl, format: preference}}}}`")
            if s.kind == "sft" and fmt == "preference":
                add(kp, "an sft stage needs instruction (alpaca) or chat data but its data is preference "
                        "pairs. Point the sft stage at instruction data, or use a dpo stage")
        if s.kind == "eval" and not trained and not any(x.kind in TRAIN_KINDS for x in rec.stages):
            add(kp, "eval has no fine-tuned model to evaluate: add a training stage before it")
    return problems


def load_recipe(name_or_path: str, root: str | Path = ".") -> Recipe:
    """Load and fully validate a recipe; raise RecipeErrors listing every problem with its file:line."""
    root = Path(root).resolve()
    path = recipe_file(name_or_path, root)
    display = str(path.relative_to(root))
    located, problems = load_yaml(path, display)
    if not isinstance(located.data, dict):
        raise TunebookError("a recipe must be a YAML mapping (key: value lines)", where=f"{display}:1",
                            fix="Start from recipes/hr-bot.yaml.")
    problems += schema_problems(located, "recipe.schema.json")
    data = located.data
    rec = None
    try:
        rec = Recipe(name=data.get("name", path.stem), path=path, root=root, data=data, located=located,
                     stages=normalise_stages(data))
        problems += semantic_problems(rec)
    except (KeyError, TypeError, AttributeError, ValueError, StopIteration):
        # The shape is wrong somewhere the schema already reported; those messages say what to fix.
        if not problems:
            raise
    if problems:
        problems.sort(key=lambda p: _line_no(p[0]))
        raise RecipeErrors(display, list(dict.fromkeys(problems)))
    return rec


def _line_no(where: str) -> int:
    try:
        return int(where.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return 0
