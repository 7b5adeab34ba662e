"""The mergekit YAML tunebook writes for each method (runner.merge.config), checked by mergekit's own config model."""
from __future__ import annotations

from mergekit.config import MergeConfiguration

from runner import hardware as hw
from runner.merge.config import DEFAULT_DENSITY, mergekit_config
from runner.recipe.load import load_recipe
from runner.recipe.resolve import resolve

CPU = hw.Hardware(cuda=False, gpu_name=None, gpu_count=0, gpu_memory_gib=None, bf16=False, cpu_cores=2,
                  cpu_name="test CPU")


def plan(root):
    res = resolve(load_recipe("m", root), CPU)
    return res, res.merge


def merged_dirs(root):
    return [str(root / "runs" / n / "merge" / "merged") for n in ("a", "b")]


def test_ties_merges_task_vectors_from_the_common_base(merge_proj, tiny_base):
    root = merge_proj("merge:\n  method: ties\n  sources:\n    - {recipe: a, weight: 0.7, density: 0.6}\n"
                      "    - {recipe: b}\n  dtype: float32\n", train_sources=False)
    _, p = plan(root)
    cfg = mergekit_config(p)
    assert cfg == {"merge_method": "ties", "base_model": str(tiny_base), "dtype": "float32", "models": [
        {"model": merged_dirs(root)[0], "parameters": {"weight": 0.7, "density": 0.6}},
        {"model": merged_dirs(root)[1], "parameters": {"weight": 1.0, "density": DEFAULT_DENSITY}}]}
    MergeConfiguration.model_validate(cfg)


def test_dare_ties_is_ties_with_random_sparsification(merge_proj, tiny_base):
    root = merge_proj("merge:\n  method: dare_ties\n  sources:\n    - {recipe: a, density: 0.3}\n"
                      "    - {recipe: b, density: 0.9}\n", train_sources=False)
    cfg = mergekit_config(plan(root)[1])
    assert cfg["merge_method"] == "dare_ties" and cfg["base_model"] == str(tiny_base)
    assert [m["parameters"]["density"] for m in cfg["models"]] == [0.3, 0.9]
    assert "dtype" not in cfg  # the models' own
    MergeConfiguration.model_validate(cfg)


def test_linear_averages_the_sources_without_a_base(merge_proj):
    root = merge_proj("merge:\n  method: linear\n  sources:\n    - {recipe: a, weight: 2}\n    - {recipe: b}\n",
                      train_sources=False)
    cfg = mergekit_config(plan(root)[1])
    assert cfg == {"merge_method": "linear", "models": [
        {"model": merged_dirs(root)[0], "parameters": {"weight": 2}},
        {"model": merged_dirs(root)[1], "parameters": {"weight": 1.0}}]}
    MergeConfiguration.model_validate(cfg)


def test_slerp_interpolates_from_the_first_source_to_the_second(merge_proj):
    root = merge_proj("merge:\n  method: slerp\n  t: 0.25\n  sources:\n    - {recipe: b}\n    - {recipe: a}\n",
                      train_sources=False)
    cfg = mergekit_config(plan(root)[1])
    b, a = merged_dirs(root)[1], merged_dirs(root)[0]
    assert cfg == {"merge_method": "slerp", "base_model": b, "models": [{"model": b}, {"model": a}],
                   "parameters": {"t": 0.25}}
    MergeConfiguration.model_validate(cfg)


def test_a_source_without_a_merge_stage_is_given_as_base_plus_adapter(merge_proj, tiny_base):
    root = merge_proj("merge:\n  method: linear\n  sources:\n    - {recipe: a}\n    - {recipe: b}\n",
                      train_sources=False)
    text = (root / "recipes" / "b.yaml").read_text().replace("[sft, merge]", "[sft]")
    (root / "recipes" / "b.yaml").write_text(text)
    cfg = mergekit_config(plan(root)[1])
    ref = cfg["models"][1]["model"]
    assert ref == f"{tiny_base}+{root / 'runs' / 'b' / 'sft' / 'output'}"
    parsed = MergeConfiguration.model_validate(cfg).models[1].model
    assert parsed.model.path == str(tiny_base) and parsed.lora.path == str(root / "runs" / "b" / "sft" / "output")
