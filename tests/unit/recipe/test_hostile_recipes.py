"""Hostile and careless recipes: each kind is refused by `tunebook validate` with one clear message (what, the
file:line, how to fix), exit code 2 and no traceback, in bounded time and memory."""
from __future__ import annotations

import json
import os
import time
import tracemalloc

import pytest

from runner.errors import TunebookError
from runner.recipe.load import load_recipe
from tests.conftest import make_project, run_cli, tunebook

ROWS = "".join(json.dumps({"instruction": f"Question {i}?", "output": f"Answer number {i}."}) + "\n"
               for i in range(12))
GOOD = """\
base_model: org/model
data:
  train: data/train.jsonl
  format: alpaca
training:
  learning_rate: 2.0e-4
stages: [sft, merge]
"""


def _stages(text: str) -> str:
    return GOOD.replace("stages: [sft, merge]", f"stages: {text}")


def _laughs(levels: int = 9) -> str:
    text = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    prev = "a"
    for i in range(levels):
        text += f"l{i}: &l{i} [" + ", ".join(f"*{prev}" for _ in range(9)) + "]\n"
        prev = f"l{i}"
    # The anchors sit in the axolotl: block (raw keys are free-form), the last alias is used once.
    body = "".join(f"  {line}\n" for line in text.replace("a: &a", "x: &a").splitlines())
    return GOOD + "axolotl:\n" + body + f"  lol: *{prev}\n"


# (kind, recipe text, file name, what the message must say (each part), the file:line it must name or None)
CASES = [
    ("billion-laughs", _laughs(), "t", ["expands to more than", "alias"], "recipes/t.yaml:"),
    ("recursive-alias", GOOD + "axolotl: &a {x: *a}\n", "t", ["refers to the value that contains it"],
     "recipes/t.yaml:8"),
    ("deep-nesting", GOOD + "axolotl: {x: " + "[" * 200 + "]" * 200 + "}\n", "t",
     ["nested more than 32 levels"], "recipes/t.yaml:8"),
    ("huge-file", GOOD + "description: '" + "x" * (1024 * 1024 + 10) + "'\n", "t",
     ["tunebook reads at most 1,048,576 bytes"], "recipes/t.yaml"),
    ("binary-content", "\x00\x01\x02\x89PNG", "t", ["not a text file"], "recipes/t.yaml"),
    ("huge-integer", GOOD.replace("2.0e-4", "1" + "0" * 5000), "t", ["number is too long"], "recipes/t.yaml:6"),
    ("nan-learning-rate", GOOD.replace("2.0e-4", ".nan"), "t",
     ["training.learning_rate: NaN and infinity are not usable", "finite number"], "recipes/t.yaml:6"),
    ("infinite-epochs", GOOD.replace("learning_rate: 2.0e-4", "epochs: .inf"), "t",
     ["training.epochs: NaN and infinity"], "recipes/t.yaml:6"),
    ("absurd-epochs", GOOD.replace("learning_rate: 2.0e-4", "epochs: 1e9"), "t",
     ["training.epochs: must be <= 100, found 1000000000.0"], "recipes/t.yaml:6"),
    ("absurd-micro-batch", GOOD.replace("learning_rate: 2.0e-4", "micro_batch_size: 1000000"), "t",
     ["training.micro_batch_size: must be <= 4096"], "recipes/t.yaml:6"),
    ("absurd-lora-rank", GOOD.replace("learning_rate: 2.0e-4", "lora: {r: 100000}"), "t",
     ["training.lora.r: must be <= 1024"], "recipes/t.yaml:6"),
    ("absurd-sequence-len", GOOD.replace("learning_rate: 2.0e-4", "sequence_len: 100000000"), "t",
     ["training.sequence_len: must be <= 1048576"], "recipes/t.yaml:6"),
    ("absurd-axolotl-epochs", GOOD + "axolotl: {num_epochs: 1e12}\n", "t",
     ["axolotl.num_epochs: must be <= 100"], "recipes/t.yaml:8"),
    ("negative-seed", GOOD.replace("learning_rate: 2.0e-4", "seed: -1"), "t", ["training.seed: must be >= 0"],
     "recipes/t.yaml:6"),
    ("impossible-date", GOOD.replace("learning_rate: 2.0e-4", "seed: 2024-13-45"), "t",
     ["can't be read", "Quote the value"], "recipes/t.yaml:6"),
    ("wrong-type-in-stage", _stages("[{sft: {name: 5}}, merge]"), "t",
     ["stages[0].sft.name: expected string, found an integer (5)"], "recipes/t.yaml:7"),
    ("wrong-type-deep-in-stage", _stages("[{sft: {data: {train: [5]}}}, merge]"), "t",
     ["stages[0].sft.data.train[0]: expected string"], "recipes/t.yaml:7"),
    ("absolute-system-path", GOOD.replace("data/train.jsonl", "/etc/passwd"), "t",
     ["data.train: data file '/etc/passwd' is outside the project", "TUNEBOOK_DATA_ROOTS"], "recipes/t.yaml:3"),
    ("dotdot-traversal", GOOD.replace("data/train.jsonl", "../../../../etc/hostname"), "t",
     ["is outside the project", "Copy the file into the project"], "recipes/t.yaml:3"),
    ("symlink-out-of-project", GOOD.replace("data/train.jsonl", "data/link.jsonl"), "t",
     ["'data/link.jsonl' is a symlink to /etc/hostname, outside the project"], "recipes/t.yaml:3"),
    ("held-out-outside", GOOD.replace("  format: alpaca", "  format: alpaca\n  held_out: /etc/hostname"), "t",
     ["data.held_out: data file '/etc/hostname' is outside the project"], "recipes/t.yaml:5"),
    ("axolotl-output-dir", GOOD + "axolotl: {output_dir: /}\n", "t",
     ["axolotl.output_dir: `output_dir` is set by tunebook itself", "runs/<recipe>/<stage>/output"],
     "recipes/t.yaml:8"),
    ("axolotl-datasets-in-stage", _stages("[{sft: {axolotl: {datasets: [{path: /etc}]}}}, merge]"), "t",
     ["stages[0].sft.axolotl.datasets: `datasets` is set by tunebook itself", "use `data:"], "recipes/t.yaml:7"),
    ("axolotl-prepared-path", GOOD + "axolotl:\n  dataset_prepared_path: /tmp/x\n", "t",
     ["`dataset_prepared_path` is set by tunebook itself"], "recipes/t.yaml:9"),
    ("name-is-another-recipes", "name: other\n" + GOOD, "t",
     ["name \"other\" does not match the file name recipes/t.yaml", "Set `name: t`",
      "rename the file to recipes/other.yaml"], "recipes/t.yaml:1"),
    ("name-with-shell-chars", "name: 'x; rm -rf ~'\n" + GOOD, "t", ["is not a valid name"], "recipes/t.yaml:1"),
    ("file-name-with-shell-chars", GOOD, "a;b$(id)", ["recipe file name 'a;b$(id).yaml' is not a valid recipe name",
                                                      "Rename the file"], "recipes/a;b$(id).yaml"),
    ("base-model-is-a-file", GOOD.replace("org/model", "./data/train.jsonl"), "t",
     ["base_model: './data/train.jsonl' is a file, not a model folder"], "recipes/t.yaml:1"),
    ("base-model-empty-folder", GOOD.replace("org/model", "./emptydir"), "t",
     ["base_model: './emptydir' is a folder but not a model: it has no config.json", "hub id"],
     "recipes/t.yaml:1"),
    ("eval-without-held-out-rows", _stages("[sft, eval, merge]").replace(
        "  format: alpaca", "  format: alpaca\n  held_out_fraction: 0"), "t",
     ["the eval stage needs held-out rows", "held_out_fraction above 0"], "recipes/t.yaml:5"),
    ("missing-json-schema-file", _stages("[sft, eval, merge]") + "eval: {metrics: [json_schema], json_schema: "
                                                                 "schemas/answer.json}\n", "t",
     ["eval.json_schema: JSON Schema file 'schemas/answer.json' not found"], "recipes/t.yaml:8"),
    ("json-schema-not-a-schema", _stages("[sft, eval, merge]") + "eval: {metrics: [json_schema], json_schema: "
                                                                 "data/inv.json}\n", "t",
     ["'data/inv.json' is not a valid JSON Schema"], "recipes/t.yaml:8"),
    ("json-schema-broken-json", _stages("[sft, eval, merge]") + "eval: {metrics: [json_schema], json_schema: "
                                                                "data/bad.json}\n", "t",
     ["invalid JSON", "line 1, column 2"], "recipes/t.yaml:8"),
    ("unknown-forgetting-task", _stages("[sft, eval, merge]") + "eval: {forgetting: {tasks: [general_knowledg]}}\n",
     "t", ["unknown lm-eval task 'general_knowledg'", "did you mean general_knowledge"], "recipes/t.yaml:8"),
    ("stage-named-like-data-folder", _stages("[{sft: {name: data}}, merge]"), "t",
     ["stage name 'data' is taken: runs/<recipe>/data is tunebook's data folder", "another `name:`"],
     "recipes/t.yaml:7"),
    ("stage-named-like-lock", _stages("[{sft: {name: tunebook.lock}}, merge]"), "t",
     ["stage name 'tunebook.lock' is taken"], "recipes/t.yaml:7"),
    ("train-stage-named-eval", _stages("[{sft: {name: eval}}, merge]"), "t",
     ["stage name 'eval' is taken: runs/<recipe>/eval is tunebook's eval cache"], "recipes/t.yaml:7"),
]


def _project(tmp_path, text: str, name: str):
    root = make_project(tmp_path / "proj", {name: text}, {
        "data/train.jsonl": ROWS, "data/bad.json": "{nope", "data/inv.json": '{"type": 5}'})
    (root / "emptydir").mkdir()
    os.symlink("/etc/hostname", root / "data" / "link.jsonl")
    return root


@pytest.mark.parametrize("kind,text,name,parts,where", CASES, ids=[c[0] for c in CASES])
def test_hostile_recipe_is_refused(tmp_path, kind, text, name, parts, where):
    root = _project(tmp_path, text, name)
    arg = name if name == "t" else f"recipes/{name}.yaml"
    r = tunebook("--root", str(root), "validate", arg)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out[-2000:]
    assert "Traceback" not in out
    assert "error: " in r.stderr
    for part in parts:
        assert part in r.stderr, (part, r.stderr[-2000:])
    if where:
        assert where in r.stderr, r.stderr[-2000:]
    assert not (root / "runs").exists()


def test_billion_laughs_fails_fast_in_small_memory(tmp_path):
    root = _project(tmp_path, _laughs(levels=12), "t")
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(TunebookError) as exc:
            load_recipe("t", root)
        elapsed = time.monotonic() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "expands to more than" in str(exc.value)
    assert elapsed < 2.0, elapsed
    assert peak < 50 * 1024 * 1024, peak


def test_billion_laughs_from_the_command_line(tmp_path):
    root = _project(tmp_path, _laughs(levels=12), "t")
    t0 = time.monotonic()
    r = run_cli("validate", "t", cwd=root, timeout=60)
    assert time.monotonic() - t0 < 30
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "recipes/t.yaml:" in r.stderr and "expands to more than" in r.stderr


def test_yaml_12_exponent_is_a_number_and_keeps_its_line(tmp_path):
    text = GOOD.replace("2.0e-4", "2e-4").replace("  format: alpaca", "  format: alpaca\n  held_out_fraction: 1e-1")
    rec = load_recipe("t", _project(tmp_path, text, "t"))
    assert rec.data["training"]["learning_rate"] == 2e-4
    assert rec.data["data"]["held_out_fraction"] == 0.1
    assert rec.where("training", "learning_rate") == "recipes/t.yaml:7"


def test_yaml_12_exponent_out_of_bounds_names_its_line(tmp_path):
    root = _project(tmp_path, GOOD.replace("2.0e-4", "2e4"), "t")
    with pytest.raises(TunebookError) as exc:
        load_recipe("t", root)
    assert "recipes/t.yaml:6: training.learning_rate: must be <= 1, found 20000.0" in str(exc.value)


def test_data_outside_the_project_is_read_when_its_folder_is_allowed(tmp_path, monkeypatch):
    outside = tmp_path / "shared-data"
    outside.mkdir()
    (outside / "train.jsonl").write_text(ROWS)
    root = _project(tmp_path, GOOD.replace("data/train.jsonl", str(outside / "train.jsonl")), "t")
    with pytest.raises(TunebookError, match="is outside the project"):
        load_recipe("t", root)
    monkeypatch.setenv("TUNEBOOK_DATA_ROOTS", str(outside))
    assert load_recipe("t", root).data["data"]["train"] == str(outside / "train.jsonl")


def test_eval_with_only_a_forgetting_check_needs_no_held_out_rows(tmp_path):
    text = _stages("[sft, eval, merge]").replace("  format: alpaca", "  format: alpaca\n  held_out_fraction: 0")
    rec = load_recipe("t", _project(tmp_path, text + "eval: {forgetting: {tasks: [general_knowledge]}}\n", "t"))
    assert [s.kind for s in rec.stages] == ["sft", "eval", "merge"]


def test_eval_stage_may_keep_its_default_folder(tmp_path):
    rec = load_recipe("t", _project(tmp_path, _stages("[sft, eval, merge]"), "t"))
    assert [s.name for s in rec.stages] == ["sft", "eval", "merge"]


def test_matching_name_is_accepted(tmp_path):
    assert load_recipe("t", _project(tmp_path, "name: t\n" + GOOD, "t")).name == "t"
