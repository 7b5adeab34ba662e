"""Recipe loading: YAML with line numbers → JSON Schema → semantic checks, every problem reported at once."""
from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from runner import preference, schemafile
from runner.errors import RecipeErrors, TunebookError
from runner.formats import block_format
from runner.layout import RunLayout
from runner.recipe.core import (  # noqa: F401
    NAME_RE,
    NAME_RULE,
    PREFERENCE_KINDS,
    TRAIN_KINDS,
    Recipe,
    Stage,
    did_you_mean,
    is_merge_recipe,
    looks_like_path,
    normalise_stages,
    recipe_file,
)
from runner.recipe.merge import merge_problems
from runner.recipe.yamlpos import RECIPE_LIMITS, Located, load_yaml
from runner.safeload import load_yaml_file, nonfinite_paths

# The checkout (or installed tree) that holds schema/ and recipes/presets/ next to runner/.
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DIR = PACKAGE_ROOT / "schema"
# Data files outside the project are read only from the folders this variable lists (os.pathsep-separated,
# absolute or relative to the project root): a recipe can't widen what it may read by itself.
DATA_ROOTS_ENV = "TUNEBOOK_DATA_ROOTS"
# Axolotl keys the pipeline sets itself (runner.recipe.resolve wires them): from `axolotl:` they would bypass
# the run layout, the lock and the atomic outputs. Each says what to write instead.
OWNED_AXOLOTL_KEYS = {
    "base_model": "the recipe's `base_model:`",
    "output_dir": "nothing: every stage writes to runs/<recipe>/<stage>/output ($TUNEBOOK_RUNS moves the runs "
                  "folder)",
    "dataset_prepared_path": "nothing: each stage keeps its own tokenisation cache in runs/<recipe>/<stage>/prepared",
    "datasets": "`data: {train: <file>, format: ...}` (or a stage's own `data:`)",
    "test_datasets": "`data: {validation_fraction: 0.1}`",
    "pretraining_dataset": "`data: {train: <file>}`",
    "rl": "a stage kind: `stages: [sft, dpo, merge]`",
    "lora_model_dir": "`from: adapter` on a dpo stage (continue the previous stage's adapter)",
    "resume_from_checkpoint": "nothing: tunebook resumes an interrupted stage from its last checkpoint itself",
    "auto_resume_from_checkpoints": "nothing: tunebook resumes an interrupted stage from its last checkpoint itself",
    "tunebook_early_stopping": "`training.early_stopping` (tunebook's early-stopping rule; `false` turns it off)",
    "deepspeed": "a preset that names a DeepSpeed config (e.g. `preset: full-ft-multigpu`; presets live in "
                 "recipes/presets/)",
}
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


def keypath_str(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


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
            return path, f"unknown stage '{inst}'{did_you_mean(inst, kinds)} Stages are: {', '.join(kinds)}"
        from jsonschema.exceptions import best_match

        # A branch that refuses the value's very type (a mapping against `enum`) says nothing useful when
        # another branch accepts the type and objects to something inside it.
        branches: dict = {}
        for c in err.context:
            branches.setdefault(c.relative_schema_path[0], []).append(c)
        fitting = [c for errs in branches.values()
                   if not any(e.validator in ("type", "enum", "const") and tuple(e.absolute_path) == path
                              for e in errs) for c in errs]
        return describe_schema_error(best_match(fitting or err.context))
    if v == "additionalProperties":
        allowed = sorted(sch.get("properties", {}))
        extra = [k for k in inst if k not in sch.get("properties", {})]
        key = extra[0] if extra else "?"
        return path + (key,), (f"unknown key '{key}'{did_you_mean(key, allowed)}"
                               f" Allowed here: {', '.join(allowed)}")
    if v == "propertyNames":
        key = next(iter(inst)) if isinstance(inst, dict) and inst else inst
        kinds = sch.get("propertyNames", {}).get("enum") or [*TRAIN_KINDS, "merge", "eval"]
        return path + (key,), f"unknown stage '{key}'{did_you_mean(key, kinds)} Stages are: {', '.join(kinds)}"
    if v == "required":
        missing = [k for k in sch["required"] if k not in inst]
        return path, f"missing required key '{missing[0]}'"
    if v == "type":
        return path, f"expected {err.validator_value if isinstance(err.validator_value, str) else ' or '.join(err.validator_value)}, found {_type_name(inst)} ({json.dumps(inst, default=str)})"
    if v == "enum":
        return path, f"expected one of {', '.join(map(str, sch['enum']))}; found {repr(inst) if isinstance(inst, str) else json.dumps(inst, default=str)}{did_you_mean(inst, sch['enum'])}"
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


def presets_dir(root: Path) -> Path:
    return root / "recipes" / "presets"


def known_presets(root: Path) -> list[str]:
    """Preset files: YAML in recipes/presets/ that declare a target `gpu:` (the folder also holds tables)."""
    out = []
    for p in presets_dir(root).glob("*.yaml"):
        try:
            doc = load_yaml_file(p, str(p), RECIPE_LIMITS)
        except TunebookError:  # unreadable or hostile: not a preset (load_preset reports it when named)
            continue
        if isinstance(doc, dict) and isinstance(doc.get("gpu"), dict) and "training" in doc:
            out.append(p.stem)
    return sorted(out)


def data_files(data: dict) -> list[tuple[tuple, str]]:
    """(key path inside the data block, file) for every file a data block names (its output_schema included:
    the rows it lets through depend on it)."""
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
    if data.get("output_schema"):
        out.append((("output_schema",), data["output_schema"]))
    return out


def data_roots(root: Path) -> list[Path]:
    """The folders a recipe's data files may be read from: the project root and those $TUNEBOOK_DATA_ROOTS lists
    (symlinks resolved)."""
    out = [Path(root).resolve()]
    for entry in os.environ.get(DATA_ROOTS_ENV, "").split(os.pathsep):
        if entry.strip():
            out.append((Path(root) / Path(entry.strip()).expanduser()).resolve())
    return out


def data_path_problem(rec: Recipe, f: str) -> str | None:
    """Why the recipe may not read the file `f` (None when it may): it must lie, symlinks resolved, inside the
    project or a folder of $TUNEBOOK_DATA_ROOTS."""
    raw = rec.resolve_path(f)
    real = raw.resolve()
    roots = data_roots(rec.root)
    if any(real.is_relative_to(r) for r in roots):
        return None
    lexical = Path(os.path.normpath(raw.absolute()))
    how = (f"is a symlink to {real}, outside the project" if lexical.is_relative_to(rec.root)
           else f"is outside the project ({real})")
    allowed = ", ".join(str(r) for r in roots)
    return (f"'{f}' {how}: tunebook reads recipe files only from {allowed}. Copy the file into the project "
            f"(e.g. recipes/data/), or allow its folder for this shell: export {DATA_ROOTS_ENV}=/path/to/folder")


def _reserved_run_names() -> dict[str, str]:
    """Names of the files and folders tunebook keeps in runs/<recipe>/ (runner.layout) -> what they are."""
    lay, out = RunLayout(Path("/r")), {}
    for attr, prop in vars(RunLayout).items():
        if isinstance(prop, property):
            p = getattr(lay, attr)
            if isinstance(p, Path) and p != lay.root:
                out.setdefault(p.relative_to(lay.root).parts[0], attr.replace("_dir", " folder").replace("_", " "))
    return out


def _json_schema_problem(rec: Recipe, f: str) -> str | None:
    """Why a JSON Schema file the recipe names (eval.json_schema, data.output_schema) can't be used, or None."""
    return schemafile.problem(rec.resolve_path(f), f)


def _model_problem(rec: Recipe, base: str) -> str | None:
    """Why a local base_model path can't be trained from, or None (hub ids are checked where they download)."""
    p = rec.resolve_path(base)
    if not p.exists():
        return (f"model folder '{base}' does not exist. Run `make model` to prepare the default "
                "SmolLM2 model, or give a hub id such as mistralai/Mistral-7B-Instruct-v0.3")
    hint = ("Point base_model at a Hugging Face model folder (config.json, weights and tokenizer files), e.g. "
            "the one `make model` prepares, or give a hub id such as mistralai/Mistral-7B-Instruct-v0.3")
    if not p.is_dir():
        return f"'{base}' is a file, not a model folder. {hint}"
    if not (p / "config.json").is_file():
        return f"'{base}' is a folder but not a model: it has no config.json. {hint}"
    return None


def semantic_problems(rec: Recipe) -> list[tuple[str, str]]:
    """Checks JSON Schema can't express: files exist and stay in the project, preset exists, stage order and data
    shapes agree, the run folder is the recipe's own, and what the eval stage needs is there."""
    d, root, problems = rec.data, rec.root, []

    def add(keypath, msg):
        problems.append((rec.where(*keypath), f"{keypath_str(keypath)}: {msg}"))

    for kp in nonfinite_paths(d):
        add(kp, "NaN and infinity are not usable values; write a finite number")

    name = d.get("name")
    if isinstance(name, str) and name != rec.path.stem:
        add(("name",), f"name {json.dumps(name)} does not match the file name recipes/{rec.path.stem}.yaml. The "
                       "run folder (runs/<name>/) comes from the name, so a recipe named like another would read "
                       f"its lock and overwrite its outputs. Set `name: {rec.path.stem}` (or remove `name:`)"
                       + (f", or rename the file to recipes/{name}.yaml" if NAME_RE.fullmatch(name) else ""))

    for kp, block in [(("axolotl",), d.get("axolotl"))] + [
            (("stages", s.index, s.kind, "axolotl"), s.body.get("axolotl")) for s in rec.stages]:
        for key in (block if isinstance(block, dict) else ()):
            if key in OWNED_AXOLOTL_KEYS:
                add(kp + (key,), f"`{key}` is set by tunebook itself and can't be overridden from `axolotl:` "
                                 "(it would bypass the run folder, the lock and the atomic outputs); use "
                                 f"{OWNED_AXOLOTL_KEYS[key]}")

    preset = d.get("preset")
    if isinstance(preset, str) and preset not in known_presets(root):
        add(("preset",), f"unknown preset '{preset}'{did_you_mean(preset, known_presets(root))} "
                         f"Presets: {', '.join(known_presets(root))} (files in recipes/presets/)")

    base = d["base_model"]
    model_problem = _model_problem(rec, base) if isinstance(base, str) and base and looks_like_path(base) else None
    if model_problem:
        add(("base_model",), model_problem)

    merge_problems(rec, add)
    if is_merge_recipe(d):
        return problems  # no data, training or eval settings of its own: merge_problems checked what it has

    blocks = [(("data",), d["data"])] + [
        (("stages", s.index, s.kind, "data"), s.body["data"]) for s in rec.stages if s.body.get("data")]
    unreadable = False  # a data file that may not be read is not opened to detect its format either
    for prefix, block in blocks:
        for sub, f in data_files(block):
            p = rec.resolve_path(f)
            outside = data_path_problem(rec, f)
            if outside:
                unreadable = True
                add(prefix + sub, f"data file {outside}")
            elif p.is_dir():
                unreadable = True
                add(prefix + sub, f"data file '{f}' is a folder; name a JSON Lines file in it")
            elif not p.is_file():
                add(prefix + sub, f"data file '{f}' not found (paths are relative to the project root "
                                  f"{root}); check the name or create it")
            elif sub == ("output_schema",):
                why = _json_schema_problem(rec, f)
                if why:
                    add(prefix + sub, why)

    seen_names, trained, method = {}, False, (d.get("training") or {}).get("method")
    main_methods: dict[str, tuple] = {}  # prepared row shape -> (stage, kind) of the first one on the recipe's data
    reserved = _reserved_run_names()
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
            fmt = None if unreadable else block_format(block, root)
            if s.kind in PREFERENCE_KINDS and fmt not in (None, "preference"):
                add(kp + (s.kind,), f"a {s.kind} stage needs preference data (prompt/chosen/rejected rows) but "
                                    f"its data is in {fmt} format. Give the stage its own data: "
                                    f"`- {s.kind}: {{data: {{train: prefs.jsonl, format: preference}}}}`")
            if s.kind == "sft" and fmt == "preference":
                add(kp, "an sft stage needs instruction (alpaca) or chat data but its data is preference "
                        "pairs. Point the sft stage at instruction data, or use a preference stage (dpo, simpo, "
                        "orpo or kto)")
            if s.kind in PREFERENCE_KINDS and not s.body.get("data"):
                shape = preference.METHODS[s.kind].rows
                first = main_methods.setdefault(shape, (s.name, s.kind))
                other = next((v for k, v in main_methods.items() if k != shape), None)
                if other and first == (s.name, s.kind):
                    add(kp, f"stages {other[0]} ({other[1]}) and {s.name} ({s.kind}) both train on "
                            "the recipe's data, but their trainers read it in different shapes (one prepared file "
                            f"per data block). Give one its own data block: `- {s.kind}: {{data: {{train: "
                            f"<the same file>, format: preference}}}}`")
        if s.kind == "eval" and not trained and not any(x.kind in TRAIN_KINDS for x in rec.stages):
            add(kp, "eval has no fine-tuned model to evaluate: add a training stage before it")
        if s.name in reserved and not (s.kind == "eval" and s.name == "eval"):
            # The eval stage's default folder is the eval cache's by design; anything else would share or
            # overwrite one of tunebook's own files in runs/<recipe>/.
            add(kp, f"stage name '{s.name}' is taken: runs/<recipe>/{s.name} is tunebook's {reserved[s.name]}. "
                    "Give the stage another `name:`")
        elif isinstance(s.name, str) and not NAME_RE.fullmatch(s.name):
            add(kp, f"stage name {json.dumps(s.name)} is not a valid name ({NAME_RULE})")
    _eval_problems(rec, add)
    return problems


def _eval_problems(rec: Recipe, add) -> None:
    """What an eval stage needs that is knowable before training: held-out rows and a usable JSON Schema file.
    (Forgetting task names need lm-eval's task index: `tunebook validate` checks them.)"""
    d = rec.data
    ev = d.get("eval") if isinstance(d.get("eval"), dict) else {}
    js = ev.get("json_schema")
    if isinstance(js, str):
        outside = data_path_problem(rec, js)
        why = f"JSON Schema file {outside}" if outside else _json_schema_problem(rec, js)
        if why:
            add(("eval", "json_schema"), why)
    main = d.get("data")
    if any(s.kind == "eval" for s in rec.stages) and isinstance(main, dict) and not main.get("held_out") \
            and main.get("held_out_fraction", None) == 0:
        gates = ev.get("gates") if isinstance(ev.get("gates"), dict) else {}
        tasks = (ev.get("forgetting") or {}).get("tasks") if isinstance(ev.get("forgetting"), dict) else None
        if [g for g in gates if g != "forgetting"] or not tasks:
            add(("data", "held_out_fraction"),
                "the eval stage needs held-out rows, but data has no held_out file and held_out_fraction is 0: "
                "evaluation would fail after training. Give data.held_out (a file never trained on), a "
                "held_out_fraction above 0 (e.g. 0.1), or remove the eval stage")


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
    # A NaN or infinity also breaks the value's bounds; one message (finite numbers) says what to do.
    bad = tuple(f"{keypath_str(kp)}: " for kp in nonfinite_paths(data))
    problems = [p for p in problems if not p[1].startswith(bad) or "NaN and infinity" in p[1]] if bad else problems
    if problems:
        problems.sort(key=lambda p: _line_no(p[0]))
        raise RecipeErrors(display, list(dict.fromkeys(problems)))
    return rec


def _line_no(where: str) -> int:
    try:
        return int(where.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return 0
