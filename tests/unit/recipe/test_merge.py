"""Merge recipes (runner.recipe.merge): what validation refuses, each at its file:line, and what it accepts."""
from __future__ import annotations

import pytest

from runner.errors import RecipeErrors
from runner.recipe.load import load_recipe

SOURCE = """\
base_model: {base}
data: {{train: data/t.jsonl}}
stages: [sft, eval, merge]
"""


def merge_text(sources: str, method: str = "ties", base: str = "model", extra: str = "") -> str:
    return f"base_model: {base}\nmerge:\n  method: {method}\n  sources:\n{sources}{extra}"


@pytest.fixture
def mproj(project):
    """A project with a model folder and two trainable source recipes (a, b) on it, plus the given recipes."""
    def make(recipes: dict[str, str]):
        files = {"model/config.json": "{}", "other/config.json": "{}"}
        return project({"a": SOURCE.format(base="model"), "b": SOURCE.format(base="model"), **recipes}, files)
    return make


def problems(root, name="m") -> list[str]:
    with pytest.raises(RecipeErrors) as exc:
        load_recipe(name, root)
    return [f"{where} {msg}" for where, msg in exc.value.problems]


TWO = "    - {recipe: a, weight: 0.5, density: 0.7}\n    - {recipe: b, weight: 0.5, density: 0.7}\n"


def test_a_valid_merge_recipe_loads_with_mergekit_and_eval_stages(mproj):
    root = mproj({"m": merge_text(TWO)})
    rec = load_recipe("m", root)
    assert [(s.kind, s.name) for s in rec.stages] == [("mergekit", "mergekit"), ("eval", "eval")]


def test_unknown_source_is_named_at_its_line_with_a_suggestion(mproj):
    root = mproj({"m": merge_text("    - {recipe: a}\n    - {recipe: bb}\n")})
    (p,) = problems(root)
    assert p.startswith("recipes/m.yaml:6 merge.sources[1].recipe: source no recipe named 'bb'")
    assert "Known recipes: a, b, m" in p


def test_source_on_another_base_model_is_refused(mproj):
    root = mproj({"c": SOURCE.format(base="other"), "m": merge_text("    - {recipe: a}\n    - {recipe: c}\n")})
    (p,) = problems(root)
    assert "recipes/m.yaml:6 merge.sources[1].recipe: source 'c' is fine-tuned from other, not this recipe's " \
           "base_model model" in p


def test_a_recipe_that_names_itself_is_refused(mproj):
    root = mproj({"m": merge_text("    - {recipe: a}\n    - {recipe: m}\n")})
    assert any("names itself as a source" in p and p.startswith("recipes/m.yaml:6") for p in problems(root))


def test_merge_sources_that_cycle_are_refused(mproj):
    root = mproj({"m": merge_text("    - {recipe: a}\n    - {recipe: n}\n"),
                  "n": merge_text("    - {recipe: b}\n    - {recipe: m}\n")})
    assert any("merge sources form a cycle: m -> n -> m" in p for p in problems(root, "m"))
    assert any("merge sources form a cycle: n -> m -> n" in p for p in problems(root, "n"))


def test_a_source_twice_is_refused(mproj):
    root = mproj({"m": merge_text("    - {recipe: a}\n    - {recipe: a}\n")})
    assert any("recipe 'a' is a source twice" in p for p in problems(root))


def test_slerp_needs_exactly_two_sources_and_no_weights(mproj):
    three = "    - {recipe: a, weight: 1}\n    - {recipe: b}\n    - {recipe: c}\n"
    root = mproj({"c": SOURCE.format(base="model"), "m": merge_text(three, "slerp")})
    ps = problems(root)
    assert any("merge.sources: slerp interpolates between exactly two models; found 3" in p for p in ps)
    assert any("merge.sources[0].weight: slerp does not weigh sources" in p for p in ps)


@pytest.mark.parametrize("entry, expected", [
    ("{recipe: a, weight: 0}", "merge.sources[0].weight: must be > 0, found 0"),
    ("{recipe: a, weight: 11}", "merge.sources[0].weight: must be <= 10, found 11"),
    ("{recipe: a, density: 1.5}", "merge.sources[0].density: must be <= 1, found 1.5"),
    ("{recipe: a, density: 0}", "merge.sources[0].density: must be > 0, found 0"),
])
def test_weights_and_densities_out_of_range(mproj, entry, expected):
    root = mproj({"m": merge_text(f"    - {entry}\n    - {{recipe: b}}\n")})
    assert any(expected in p and p.startswith("recipes/m.yaml:5") for p in problems(root))


def test_density_and_t_only_where_the_method_uses_them(mproj):
    root = mproj({"m": merge_text("    - {recipe: a, density: 0.5}\n    - {recipe: b}\n", "linear",
                                  extra="  t: 0.3\n")})
    ps = problems(root)
    assert any("merge.sources[0].density: density (the share of each task vector kept) applies to ties and "
               "dare_ties, not linear" in p for p in ps)
    assert any("merge.t: t is slerp's interpolation factor; linear does not use it" in p for p in ps)


def test_a_merge_recipe_trains_nothing_and_evaluates_with_the_sources_settings(mproj):
    extra = ("data: {train: data/t.jsonl}\ntraining: {epochs: 2}\nstages: [sft, mergekit, eval]\n"
             "eval: {metrics: [f1], gates: {contains: 0.5}}\n")
    root = mproj({"m": merge_text(TWO, extra="") + extra})
    ps = problems(root)
    assert any("data: a merge recipe trains nothing" in p for p in ps)
    assert any("training: a merge recipe trains nothing" in p for p in ps)
    assert any("stages[0]: a merge recipe runs only the stages mergekit, eval" in p for p in ps)
    assert any("eval.metrics: a merge recipe scores each source's held-out set with that source's own eval "
               "settings" in p for p in ps)
    assert not any(" eval.gates" in p.split(":", 2)[1] for p in ps)


def test_unknown_method_and_a_single_source(mproj):
    root = mproj({"m": merge_text("    - {recipe: a}\n", "tiess")})
    ps = problems(root)
    assert any("merge.method: expected one of linear, slerp, ties, dare_ties; found 'tiess'; did you mean 'ties'?"
               in p for p in ps)
    assert any("merge.sources: must not be empty" in p or "merge.sources" in p for p in ps)


def test_a_mergekit_stage_needs_a_merge_block(mproj):
    root = mproj({"m": SOURCE.format(base="model").replace("[sft, eval, merge]", "[sft, mergekit]")})
    assert any("stages[1]: a mergekit stage merges other recipes' models and needs a `merge:` block" in p
               for p in problems(root))


def test_a_recipe_without_data_or_merge_is_refused(mproj):
    root = mproj({"m": "base_model: model\n"})
    assert any("missing required key 'data'" in p for p in problems(root))


def test_a_merge_recipe_is_not_a_source(mproj):
    root = mproj({"n": merge_text(TWO), "m": merge_text("    - {recipe: a}\n    - {recipe: n}\n")})
    assert any("recipes/m.yaml:6 merge.sources[1].recipe: source 'n' is itself a merge recipe" in p
               for p in problems(root))
