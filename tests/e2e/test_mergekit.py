"""Merge recipes for real: `tunebook train` on a recipe whose `merge:` block merges facts-a and facts-b (trained
SmolLM2 LoRA runs of `fact_runs`) with the real mergekit 0.1.5, then scores the merged model on each source's
held-out set with that source's own key_fact regexes and trained chat template.

Each test writes its own merge recipe (a name no other test uses) into the shared fact_runs project and reads the
sources only: their run folders and locks are never changed here (other tests serve and export them)."""
from __future__ import annotations

import json
import os
import sys

import pytest

from runner.recipe.shipped import has_model
from tests.conftest import cpu_lock, run_cli, status_rows

pytestmark = pytest.mark.e2e


def write_recipe(fact_runs, name: str, merge_block: str) -> None:
    base = json.loads((fact_runs.run("facts-a") / "manifest.json").read_text())["stages"]["sft"]["base_model"]
    (fact_runs.root / "recipes" / f"{name}.yaml").write_text(
        f"name: {name}\ndescription: facts-a and facts-b merged (tests/e2e/test_mergekit.py).\n"
        f"base_model: {base}\n{merge_block}")


def train(fact_runs, name: str):
    cmd = ["train", name]
    prefix = cpu_lock()  # as fact_runs trains
    import subprocess

    r = subprocess.run([*prefix, sys.executable, "-m", "runner.cli", *cmd], cwd=fact_runs.root, capture_output=True,
                       text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def check_scored_on_both_sources(fact_runs, name: str, method: str) -> dict:
    run = fact_runs.run(name)
    merged = run / "mergekit" / "merged"
    assert has_model(merged)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(merged)
    assert model.config.num_hidden_layers == 30  # SmolLM2-135M, whole
    # The merged model speaks with facts-a's trained chat template (no injected default system prompt).
    assert AutoTokenizer.from_pretrained(merged).chat_template == \
        AutoTokenizer.from_pretrained(fact_runs.run("facts-a") / "merge" / "merged").chat_template
    m = json.loads((run / "eval" / "metrics.json").read_text())
    assert m["kind"] == "merge" and m["method"] == method and set(m["sources"]) == {"facts-a", "facts-b"}
    for src in ("facts-a", "facts-b"):
        e = m["sources"][src]
        own = json.loads((fact_runs.run(src) / "eval" / "metrics.json").read_text())["tuned"]
        assert e["held_out"]["rows"] == len(fact_runs.held_out(src)) == 5
        assert e["source"] == own and own["contains"] == 1.0
        assert set(e["merged"]) == {"contains", "f1", "stops"}
        for k, v in e["merged"].items():
            assert 0.0 <= v <= 1.0 and e["drop"][k] == pytest.approx(own[k] - v)
    preds = [json.loads(l) for l in (run / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert sorted({p["source"] for p in preds}) == ["facts-a", "facts-b"] and len(preds) == 10
    report = (run / "report.md").read_text()
    assert f"## Evaluation: eval (mergekit {method} of facts-a, facts-b)" in report
    a = m["sources"]["facts-a"]
    assert (f"| facts-a | {a['weight']:g} | " in report and
            f"| contains | 1.000 | {a['merged']['contains']:.3f} | {a['drop']['contains']:+.3f} |" in report)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["eval"]["metrics"]["sources"]["facts-b"]["drop"] == m["sources"]["facts-b"]["drop"]
    return m


def test_ties_merge_runs_is_scored_per_source_and_reruns_as_a_noop(fact_runs):
    name = "merge-ties-e2e"
    write_recipe(fact_runs, name, "merge:\n  method: ties\n  sources:\n"
                                  "    - {recipe: facts-a, weight: 1.0, density: 0.7}\n"
                                  "    - {recipe: facts-b, weight: 1.0, density: 0.7}\n")
    r = train(fact_runs, name)
    assert "mergekit: merging facts-a, facts-b with mergekit (ties)" in r.stderr + r.stdout
    check_scored_on_both_sources(fact_runs, name, "ties")
    merged = fact_runs.run(name) / "mergekit" / "merged" / "model.safetensors"
    made = merged.stat().st_mtime_ns

    again = train(fact_runs, name)
    assert f"nothing to do: every stage of {name} is up to date" in again.stderr + again.stdout
    assert merged.stat().st_mtime_ns == made  # nothing re-merged

    # A source retrained has another output hash in its lock: here the merge's record of facts-a's training is
    # changed instead (the shared source run stays as it is), which is what a retrained source looks like to it.
    lock_path = fact_runs.run(name) / "tunebook.lock"
    lock = json.loads(lock_path.read_text())
    lock["stages"]["mergekit"]["inputs"]["upstream"]["facts-a/sft"] = "0" * 64
    lock["stages"]["mergekit"]["input_hash"] = "1" * 64
    lock_path.write_text(json.dumps(lock))
    st = run_cli("status", name, cwd=fact_runs.root)
    rows = status_rows(st.stdout)
    assert rows["mergekit"] == ("stale", "upstream stage facts-a/sft produced a new result"), st.stdout
    assert rows["eval"] == ("stale", "upstream stage mergekit will re-run")


def test_linear_merge_is_scored_per_source(fact_runs):
    name = "merge-linear-e2e"
    write_recipe(fact_runs, name, "merge:\n  method: linear\n  sources:\n"
                                  "    - {recipe: facts-a, weight: 0.5}\n    - {recipe: facts-b, weight: 0.5}\n")
    train(fact_runs, name)
    check_scored_on_both_sources(fact_runs, name, "linear")
    cfg = (fact_runs.run(name) / "mergekit" / "mergekit.yaml").read_text()
    assert "merge_method: linear" in cfg and "base_model" not in cfg
