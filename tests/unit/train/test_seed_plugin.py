"""runner.train.seed_plugin: the config's seed is applied before Axolotl builds the model (no training here)."""
from __future__ import annotations

import torch
from axolotl.utils.dict import DictDefault

from runner.recipe.resolve import SEED_PLUGIN
from runner.train.seed_plugin import SeedPlugin


def _draw(cfg: dict) -> torch.Tensor:
    torch.manual_seed(12345)  # whatever state the process was in before the hook
    torch.rand(3)
    SeedPlugin().pre_model_load(DictDefault(cfg))
    return torch.rand(4)


def test_the_same_seed_gives_the_same_draws_and_another_seed_other_draws():
    # What peft's LoRA init draws after the hook: the same for one seed, whatever came before it.
    a = _draw({"seed": 42, "plugins": [SEED_PLUGIN]})
    torch.rand(10)
    b = _draw({"seed": 42, "plugins": [SEED_PLUGIN]})
    c = _draw({"seed": 43, "plugins": [SEED_PLUGIN]})
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(42)
    assert torch.equal(a, torch.rand(4))  # transformers.set_seed(42) seeds torch as manual_seed(42) does


def test_a_config_that_does_not_name_the_plugin_or_has_no_seed_is_left_alone():
    # Axolotl's PluginManager is a process-wide singleton: a plugin registered for one config sees the next.
    unnamed = _draw({"seed": 42})
    torch.manual_seed(12345)
    torch.rand(3)
    assert torch.equal(unnamed, torch.rand(4))
    unseeded = _draw({"plugins": [SEED_PLUGIN]})
    torch.manual_seed(12345)
    torch.rand(3)
    assert torch.equal(unseeded, torch.rand(4))


def test_the_seed_is_also_applied_before_the_datasets_are_loaded_and_leaves_the_loading_to_axolotl():
    # Axolotl packs the data (a RandomSampler seeded from torch's global generator) to estimate the steps of a
    # packed run before it loads the model: the order must follow the seed there too.
    torch.manual_seed(12345)
    torch.rand(3)
    assert SeedPlugin().load_datasets(DictDefault({"seed": 42, "plugins": [SEED_PLUGIN]}), preprocess=False) is None
    first = torch.rand(4)
    torch.manual_seed(42)
    assert torch.equal(first, torch.rand(4))
    # The PluginManager asks every plugin for datasets: one that loads none must return None.
    assert SeedPlugin().load_datasets(DictDefault({"seed": 42}), preprocess=True) is None
