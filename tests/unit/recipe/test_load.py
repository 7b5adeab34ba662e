"""Recipe validation: every shipped recipe passes; each kind of mistake is reported at its line."""
from __future__ import annotations

import pytest

from runner.errors import RecipeErrors, TunebookError
from runner.recipe.load import load_recipe

ROWS = '{"instruction": "How many leave days?", "output": "27 days."}\n' * 3
PREFS = '{"prompt": "Hi?", "chosen": "Hello, how can I help?", "rejected": "What."}\n' * 3
GOOD = """\
name: t
base_model: org/model
data:
  train: data/train.jsonl
  format: alpaca
training:
  learning_rate: 2.0e-4
stages: [sft, merge]
"""


def shipped_recipes(repo_root):
    return sorted(p.stem for p in (repo_root / "recipes").glob("*.yaml"))


def test_every_shipped_recipe_validates(repo_root, smollm2):
    names = shipped_recipes(repo_root)
    assert "hr-bot" in names
    for name in names:
        rec = load_recipe(name, repo_root)
        assert rec.stages, name


def _errors(project, text, files=None):
    root = project({"t": text}, {"data/train.jsonl": ROWS, "data/prefs.jsonl": PREFS, **(files or {})})
    with pytest.raises(TunebookError) as exc:
        load_recipe("t", root)
    return exc.value


def test_good_recipe_loads(project):
    root = project({"t": GOOD}, {"data/train.jsonl": ROWS})
    rec = load_recipe("t", root)
    assert [s.kind for s in rec.stages] == ["sft", "merge"]


def test_malformed_yaml_names_line(project):
    err = _errors(project, GOOD.replace("  format: alpaca", "  format: [alpaca"))
    assert "malformed YAML" in str(err)
    assert "recipes/t.yaml:6" in str(err) or "recipes/t.yaml:7" in str(err)


def test_wrong_type_says_expected_and_found(project):
    err = _errors(project, GOOD.replace("learning_rate: 2.0e-4", "learning_rate: fast"))
    assert isinstance(err, RecipeErrors)
    assert "recipes/t.yaml:7" in str(err)
    assert "training.learning_rate" in str(err) and "expected number" in str(err) and '"fast"' in str(err)


def test_unknown_key_did_you_mean(project):
    err = _errors(project, GOOD.replace("learning_rate: 2.0e-4", "lerning_rate: 2.0e-4"))
    assert "recipes/t.yaml:7" in str(err)
    assert "unknown key 'lerning_rate'" in str(err) and "did you mean 'learning_rate'" in str(err)


def test_unknown_preset_did_you_mean(project):
    err = _errors(project, GOOD.replace("name: t\n", "name: t\npreset: qlora-t5\n"))
    assert "recipes/t.yaml:2" in str(err)
    assert "unknown preset 'qlora-t5'" in str(err) and "did you mean 'qlora-t4'" in str(err)


def test_missing_data_file(project):
    err = _errors(project, GOOD.replace("data/train.jsonl", "data/nope.jsonl"))
    assert "recipes/t.yaml:4" in str(err) and "data file 'data/nope.jsonl' not found" in str(err)


def test_negative_learning_rate(project):
    err = _errors(project, GOOD.replace("2.0e-4", "-1.0e-4"))
    assert "recipes/t.yaml:7" in str(err) and "must be > 0, found -0.0001" in str(err)


def test_all_errors_reported_at_once(project):
    text = GOOD.replace("2.0e-4", "-1.0e-4").replace("format: alpaca", "format: alpacca")
    err = _errors(project, text + "epochs: 3\n")
    assert isinstance(err, RecipeErrors)
    assert len(err.problems) == 3
    msg = str(err)
    assert "did you mean 'alpaca'" in msg and "unknown key 'epochs'" in msg and "must be > 0" in msg


def test_unknown_stage_did_you_mean(project):
    err = _errors(project, GOOD.replace("[sft, merge]", "[sfft, merge]"))
    assert "unknown stage 'sfft'" in str(err) and "did you mean 'sft'" in str(err)
    assert "recipes/t.yaml:8" in str(err)


def test_merge_before_training(project):
    err = _errors(project, GOOD.replace("[sft, merge]", "[merge, sft]"))
    assert "merge comes before any training stage" in str(err) and "stages[0]" in str(err)


def test_dpo_with_sft_data(project):
    err = _errors(project, GOOD.replace("[sft, merge]", "[sft, dpo, merge]"))
    assert "dpo stage needs preference data" in str(err) and "alpaca format" in str(err)


def test_dpo_with_preference_data_is_fine(project):
    text = GOOD.replace("stages: [sft, merge]", "stages:\n  - sft\n  - dpo:\n      data: {train: data/prefs.jsonl}\n  - merge\n")
    root = project({"t": text}, {"data/train.jsonl": ROWS, "data/prefs.jsonl": PREFS})
    rec = load_recipe("t", root)
    assert [s.kind for s in rec.stages] == ["sft", "dpo", "merge"]


def test_duplicate_key(project):
    err = _errors(project, GOOD + "base_model: other/model\n")
    assert "appears twice" in str(err)


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "recipes/../pyproject.toml", "..", "t/../../x"])
def test_path_traversal_refused(project, name):
    root = project({"t": GOOD}, {"data/train.jsonl": ROWS})
    with pytest.raises(TunebookError) as exc:
        load_recipe(name, root)
    assert "not a recipe in recipes/" in str(exc.value) or "no recipe named" in str(exc.value)


def test_unknown_recipe_suggests(project):
    root = project({"hr-bot": GOOD}, {"data/train.jsonl": ROWS})
    with pytest.raises(TunebookError) as exc:
        load_recipe("hr-bto", root)
    assert "Did you mean 'hr-bot'" in str(exc.value) or "did you mean 'hr-bot'" in str(exc.value)


def test_cli_bad_recipe_exit_2_no_traceback(project, cli):
    root = project({"t": GOOD.replace("2.0e-4", "-1")}, {"data/train.jsonl": ROWS})
    r = cli("validate", "t", cwd=root)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("error: recipes/t.yaml: 1 problem")
    assert "recipes/t.yaml:7: training.learning_rate: must be > 0, found -1" in r.stderr


def test_cli_traversal_exit_2(project, cli):
    root = project({"t": GOOD}, {"data/train.jsonl": ROWS})
    r = cli("validate", "../../etc/passwd", cwd=root)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "not a recipe in recipes/" in r.stderr


@pytest.mark.parametrize("value,message", [
    ("{patience: 0}", "training.early_stopping.patience: must be >= 1, found 0"),
    ("{min_delta: 2}", "training.early_stopping.min_delta: must be <= 1, found 2"),
    ("{patiense: 2}", "unknown key 'patiense'; did you mean 'patience'?"),
    ("sometimes", "training.early_stopping: expected boolean"),
])
def test_early_stopping_settings_are_checked_at_their_line(project, value, message):
    err = _errors(project, GOOD.replace("learning_rate: 2.0e-4", f"early_stopping: {value}"))
    assert "recipes/t.yaml:7" in str(err) and message in str(err)


@pytest.mark.parametrize("value", ["false", "true", "{patience: 3, min_delta: 0.005, memorised: 0, min_epochs: 3}"])
def test_early_stopping_settings_load(project, value):
    root = project({"t": GOOD.replace("learning_rate: 2.0e-4", f"early_stopping: {value}")},
                   {"data/train.jsonl": ROWS})
    assert load_recipe("t", root).data["training"]["early_stopping"] is not None


def test_the_rules_axolotl_key_is_refused_in_the_axolotl_block(project):
    err = _errors(project, GOOD + "axolotl: {tunebook_early_stopping: {patience: 1}}\n")
    assert "axolotl.tunebook_early_stopping: `tunebook_early_stopping` is set by tunebook itself" in str(err)
    assert "use `training.early_stopping`" in str(err)


def test_two_preference_methods_with_different_row_shapes_cannot_share_the_recipe_data(project):
    root = project({"t": """\
base_model: org/model
data: {train: data/prefs.jsonl, format: preference}
stages: [orpo, kto]
"""}, {"data/prefs.jsonl": '{"prompt": "Hi?", "chosen": "Hello.", "rejected": "What."}\n'})
    with pytest.raises(RecipeErrors) as e:
        load_recipe("t", root)
    text = str(e.value)
    assert "stages orpo (orpo) and kto (kto) both train on the recipe's data" in text
    assert "recipes/t.yaml:3: stages[1]" in text and "- kto: {data: {train: <the same file>, format: preference}}" in text


def test_dpo_and_simpo_read_the_same_rows_and_may_share_them(project):
    root = project({"t": """\
base_model: org/model
data: {train: data/prefs.jsonl, format: preference}
stages: [dpo, simpo]
"""}, {"data/prefs.jsonl": '{"prompt": "Hi?", "chosen": "Hello.", "rejected": "What."}\n'})
    assert [s.kind for s in load_recipe("t", root).stages] == ["dpo", "simpo"]


def test_an_unknown_stage_lists_the_preference_methods(project):
    root = project({"t": "base_model: org/model\ndata: {train: data/t.jsonl}\nstages: [sft, kpo]\n"},
                   {"data/t.jsonl": '{"instruction": "a", "output": "b"}\n'})
    with pytest.raises(RecipeErrors) as e:
        load_recipe("t", root)
    assert "unknown stage 'kpo'; did you mean 'kto'?" in str(e.value)
    assert "sft, dpo, simpo, orpo, kto, merge, eval, mergekit" in str(e.value)
