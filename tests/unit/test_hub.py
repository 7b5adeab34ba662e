"""runner.hub: which models a recipe fetches, and the errors when they cannot be had (no server needed for these;
tests/e2e/test_hub_model.py downloads through a real hub server on loopback)."""
from __future__ import annotations

import pytest

from runner import hub
from runner.errors import TunebookError
from runner.recipe.load import load_recipe

ROWS = '{"instruction": "Hi?", "output": "Hello."}\n' * 3


def test_hub_models_are_the_hub_ids_a_recipe_trains_from(project, smollm2):
    root = project({"a": "base_model: org/model\ndata: {train: d.jsonl}\n",
                    "b": f"base_model: {smollm2}\ndata: {{train: d.jsonl}}\n"}, {"d.jsonl": ROWS})
    assert hub.hub_models(load_recipe("a", root)) == ["org/model"]
    assert hub.hub_models(load_recipe("b", root)) == []


@pytest.fixture
def hf(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    return constants


def test_offline_without_the_model_in_the_cache(hf, monkeypatch):
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    with pytest.raises(TunebookError) as exc:
        hub.fetch_model("org/model", where="recipes/a.yaml:1")
    assert "not in the Hugging Face cache and HF_HUB_OFFLINE=1" in exc.value.what
    assert exc.value.where == "recipes/a.yaml:1" and "Unset HF_HUB_OFFLINE" in exc.value.fix


def test_an_unreachable_hub_is_a_network_error_not_an_offline_one(hf, monkeypatch):
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", False)
    with pytest.raises(TunebookError) as exc:
        hub.fetch_model("org/model")
    assert "http://127.0.0.1:9 did not answer" in exc.value.what and "HF_ENDPOINT" in exc.value.fix
    assert "\n" not in exc.value.what
