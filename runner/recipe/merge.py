"""A merge recipe: a recipe whose `merge:` block combines other recipes' trained models with mergekit (linear,
SLERP, TIES, DARE-TIES) instead of training one. Its stages are [mergekit, eval].

    merge:
      method: ties                       # linear | slerp | ties | dare_ties
      sources:
        - {recipe: facts-a, weight: 1.0, density: 0.7}
        - {recipe: facts-b, weight: 1.0, density: 0.7}

This module owns what a merge recipe may say: its checks (run by runner.recipe.load with every other check, each at
its file:line; they read the source recipes' files, never load or resolve them) and the shape of its resolved
plan (MergePlan, made by runner.recipe.resolve). What the lock compares for its stages is runner.merge.inputs; the
merge itself, runner.merge.stage.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runner.errors import TunebookError
from runner.recipe.core import TRAIN_KINDS, is_merge_recipe, looks_like_path, normalise_stages, recipe_file
from runner.recipe.yamlpos import load_yaml

METHODS = ("linear", "slerp", "ties", "dare_ties")
DENSITY_METHODS = ("ties", "dare_ties")  # the methods that sparsify each task vector
# Keys a merge recipe can't have: it trains nothing, and each source's held-out set is scored with the
# source's own settings (runner.evaluate.sources).
TRAINING_KEYS = {
    "data": "its held-out sets are the sources' own",
    "training": "it trains nothing",
    "preset": "it trains nothing",
    "axolotl": "it trains nothing",
    "system_prompt": "each source is evaluated with its own",
}
MERGE_STAGES = ("mergekit", "eval")
DEFAULT_T = 0.5
DEFAULT_WEIGHT = 1.0



# ---------------------------------------------------------------------------------------------- checks


def _source_doc(name: str, root: Path):
    """(path, parsed data) of source recipe `name`, or a TunebookError saying why it is not a recipe."""
    path = recipe_file(name, root)
    located, _ = load_yaml(path, str(path.relative_to(root)))
    return path, located.data


def _model_id(base: str, root: Path) -> str:
    """A base model as a comparable identity: a local folder resolved, a hub id as written."""
    p = Path(base)
    return str((p if p.is_absolute() else root / p).resolve()) if looks_like_path(base) else base


def _cycle(start: str, root: Path) -> list[str] | None:
    """A chain of merge sources from `start` back to itself (start, ..., start), or None."""
    def sources_of(name):
        try:
            _, doc = _source_doc(name, root)
        except TunebookError:
            return []
        if not is_merge_recipe(doc):
            return []
        return [s["recipe"] for s in doc["merge"].get("sources") or [] if isinstance(s, dict)
                and isinstance(s.get("recipe"), str)]

    stack, seen = [(start, [start])], set()
    while stack:
        name, chain = stack.pop()
        for nxt in sources_of(name):
            if nxt == start:
                return chain + [start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, chain + [nxt]))
    return None


def merge_problems(rec, add) -> None:
    """Every problem of a merge recipe (or of a `mergekit` stage in a recipe without `merge:`), each through
    `add(keypath, message)` (runner.recipe.load.semantic_problems calls it)."""
    d = rec.data
    if not is_merge_recipe(d):
        for s in rec.stages:
            if s.kind == "mergekit":
                add(("stages", s.index), "a mergekit stage merges other recipes' models and needs a `merge:` block "
                                         "naming them (`merge: {method: ties, sources: [{recipe: a}, {recipe: b}]}`); "
                                         "to merge this recipe's own adapter into its base use a `merge` stage")
        return
    for key, why in TRAINING_KEYS.items():
        if key in d:
            add((key,), f"a merge recipe trains nothing (it merges the models of merge.sources), so `{key}:` does "
                        f"not apply: {why}. Remove it")
    kinds = [s.kind for s in rec.stages]
    for s in rec.stages:
        if s.kind not in MERGE_STAGES:
            add(("stages", s.index), f"a merge recipe runs only the stages {', '.join(MERGE_STAGES)} (its models "
                                     f"are trained by the source recipes); remove '{s.kind}' or use "
                                     "stages: [mergekit, eval]")
    if kinds.count("mergekit") != 1 or kinds[0] != "mergekit":
        add(("stages",), "a merge recipe's stages are [mergekit, eval]: one mergekit stage, first (eval scores "
                         "its result)")
    ev = d.get("eval")
    if isinstance(ev, dict):
        for key in ev:
            if key != "gates":
                add(("eval", key), "a merge recipe scores each source's held-out set with that source's own eval "
                                   "settings (so the drop against each source compares like with like); only "
                                   f"eval.gates may be set here. Remove `{key}:`")
        if isinstance(ev.get("gates"), dict) and "forgetting" in ev["gates"]:
            add(("eval", "gates", "forgetting"), "a merge recipe has no forgetting check; remove the gate")
    _method_problems(d["merge"], add)
    _source_problems(rec, add)


def _method_problems(m: dict, add) -> None:
    method, sources = m.get("method"), [s for s in m.get("sources") or [] if isinstance(s, dict)]
    if method == "slerp" and len(sources) != 2:
        add(("merge", "sources"), f"slerp interpolates between exactly two models; found {len(sources)} sources. "
                                  "Name two, or use linear, ties or dare_ties for more")
    if "t" in m and method != "slerp":
        add(("merge", "t"), f"t is slerp's interpolation factor; {method} does not use it (it weighs each source "
                            "with `weight:`). Remove `t:`")
    for i, s in enumerate(sources):
        if method == "slerp" and "weight" in s:
            add(("merge", "sources", i, "weight"), "slerp does not weigh sources: it interpolates from the first "
                                                   "to the second by merge.t (0 = first, 1 = second). Remove "
                                                   "`weight:` and set `t:`")
        if "density" in s and method not in DENSITY_METHODS:
            add(("merge", "sources", i, "density"), f"density (the share of each task vector kept) applies to ties "
                                                    f"and dare_ties, not {method}. Remove it, or use method: ties")


def _source_problems(rec, add) -> None:
    root, seen = rec.root, {}
    base = rec.data.get("base_model")
    loop = _cycle(rec.name, root)  # this recipe, through merge sources, back to itself
    for i, s in enumerate(rec.data["merge"].get("sources") or []):
        name = s.get("recipe") if isinstance(s, dict) else None
        if not isinstance(name, str):
            continue
        kp = ("merge", "sources", i, "recipe")
        if name in seen:
            add(kp, f"recipe '{name}' is a source twice (also merge.sources[{seen[name]}]); give it one entry "
                    "with the weight you want")
            continue
        seen[name] = i
        if name == rec.name:
            add(kp, f"the merge recipe '{name}' names itself as a source; name the recipes whose models it merges")
            continue
        try:
            path, doc = _source_doc(name, root)
        except TunebookError as exc:
            add(kp, f"source {exc.what}. {exc.fix or ''}".strip())
            continue
        if not isinstance(doc, dict):
            add(kp, f"source recipe recipes/{path.name} is not a recipe (a YAML mapping)")
            continue
        if isinstance(base, str) and isinstance(doc.get("base_model"), str) \
                and _model_id(doc["base_model"], root) != _model_id(base, root):
            add(kp, f"source '{name}' is fine-tuned from {doc['base_model']}, not this recipe's base_model {base}: "
                    "mergekit merges models of one architecture and base (task vectors are differences from the "
                    "same weights). Merge recipes trained from the same base_model")
        if is_merge_recipe(doc):
            if loop and loop[1] == name:
                add(kp, "merge sources form a cycle: " + " -> ".join(loop) + "; no recipe can be made first. "
                        "Remove one of the links")
            else:
                # Its eval scores other recipes' held-out sets; it has none of its own to score this merge on.
                add(kp, f"source '{name}' is itself a merge recipe, which has no held-out set of its own to score "
                        "this merge on; name its sources here instead")
            continue
        try:
            kinds = [st.kind for st in normalise_stages(doc)]
        except (KeyError, TypeError, AttributeError, ValueError, StopIteration):
            continue  # its own validation says what is wrong with it
        if not any(k in TRAIN_KINDS for k in kinds):
            add(kp, f"source '{name}' has no training stage (stages: {', '.join(kinds)}): it makes no model to merge")


# ---------------------------------------------------------------------------------------------- the plan


@dataclass
class MergeSource:
    """One source of a merge: its resolved recipe, its entry's position in `merge.sources` and its settings."""

    name: str
    index: int
    res: object                   # runner.recipe.resolve.ResolvedRecipe of the source recipe
    weight: float | None
    density: float | None


@dataclass
class MergePlan:
    """A merge recipe's `merge:` block, resolved: the method, the sources, slerp's t, the dtype and the base."""

    method: str
    sources: list[MergeSource]
    base_model: str
    t: float | None
    dtype: str | None

    def source(self, name: str) -> MergeSource:
        return next(s for s in self.sources if s.name == name)
