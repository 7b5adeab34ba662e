"""A merge recipe's bookkeeping (runner.merge.inputs.merge_stage_inputs, runner.merge.stage.check_sources): the lock
records its sources' results, so a re-run is a no-op until a source is retrained or the merge settings change; a
source that is not trained is refused before mergekit starts. Sources train with the stand-in Axolotl; the merge
stages' runner here writes files instead of running mergekit and generating (the e2e test runs both for real)."""
from __future__ import annotations

import json

from runner.fsutil import atomic_write_json
from runner.pipeline.run import Pipeline
from runner.recipe.load import load_recipe
from runner.recipe.resolve import resolve
from tests.fakes.pipeline_project import status, tb, train

TIES = "merge:\n  method: ties\n  sources:\n    - {recipe: a, density: 0.7}\n    - {recipe: b, density: 0.7}\n"


def fake_runner(calls):
    def run(res, stage, input_hash, quiet):
        calls.append(stage.name)
        if stage.kind == "mergekit":
            stage.paths.merged.mkdir(parents=True, exist_ok=True)
            (stage.paths.merged / "config.json").write_text(json.dumps({"made": len(calls)}))
            (stage.paths.merged / "model.safetensors").write_bytes(b"weights")
        else:
            atomic_write_json(stage.paths.metrics, {"kind": "merge", "method": "ties", "t": None, "model": "m",
                                                    "base_model": "base", "sources": {}, "gates": [], "n": len(calls)})
    return run


def run_merge(root, calls):
    return Pipeline(resolve(load_recipe("m", root)), runner=fake_runner(calls), quiet=True).run()


def test_a_second_run_merges_nothing_until_a_source_is_retrained(merge_proj):
    root = merge_proj(TIES)
    calls: list[str] = []
    assert run_merge(root, calls)["ran"] == ["mergekit", "eval"]
    assert status(root, "m") == {"mergekit": ("done", status(root, "m")["mergekit"][1]),
                                 "eval": ("done", status(root, "m")["eval"][1])}
    assert run_merge(root, calls)["ran"] == [] and calls == ["mergekit", "eval"]
    entry = json.loads((root / "runs" / "m" / "tunebook.lock").read_text())["stages"]["mergekit"]
    assert set(entry["inputs"]["upstream"]) == {"a/sft", "a/merge", "b/sft", "b/merge"}
    assert entry["inputs"]["versions"]["mergekit"] == "0.1.5"

    recipe_b = root / "recipes" / "b.yaml"  # b retrained (another step): a new adapter and merged model
    recipe_b.write_text(recipe_b.read_text().replace("max_steps: 2", "max_steps: 3"))
    train(root, name="b")
    st = status(root, "m")
    assert st["mergekit"][0] == "stale" and "upstream stage b/sft produced a new result" in st["mergekit"][1]
    assert st["eval"] == ("stale", "upstream stage mergekit will re-run")
    assert run_merge(root, calls)["ran"] == ["mergekit", "eval"]


def test_changing_the_merge_settings_makes_the_merge_stale(merge_proj):
    root = merge_proj(TIES)
    run_merge(root, [])
    recipe = root / "recipes" / "m.yaml"
    recipe.write_text(recipe.read_text().replace("{recipe: b, density: 0.7}", "{recipe: b, density: 0.4}"))
    st = status(root, "m")
    assert st["mergekit"] == ("stale", "its mergekit config (the recipe's merge: block) changed")
    recipe.write_text(recipe.read_text().replace("density: 0.4}", "density: 0.7}") + "eval: {gates: {f1: 0.5}}\n")
    st = status(root, "m")
    assert st["mergekit"][0] == "done" and st["eval"][0] == "stale"


def test_an_untrained_source_is_refused_at_its_line_before_mergekit_runs(merge_proj):
    root = merge_proj(TIES, train_sources=False)
    train(root, name="a")
    r = tb(root, "train", "m", "--quiet")
    assert r.returncode == 2
    assert "source 'b' has no trained model yet: its stage(s) sft, merge have not finished" in r.stderr
    assert "recipes/m.yaml:6" in r.stderr and "make train RECIPE=b" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (root / "runs" / "m" / "mergekit" / "merged").exists()
    assert not (root / "runs" / "m" / "mergekit" / "mergekit.yaml").exists()
