"""The recipe's seed applied before Axolotl builds the model and its adapter: an Axolotl plugin.

Why a plugin: Axolotl 0.19 never seeds torch on its training path. transformers' Trainer seeds itself with the
config's `seed` only when it is constructed, which is after the model is loaded and the LoRA matrices are drawn
(peft draws lora_A at random). Two runs of one recipe with one seed therefore started from different adapters
(measured: two one-step runs of the same recipe differed by up to 0.083 in their adapter weights), and a resumed
stage could not be compared with an uninterrupted one. `pre_model_load` runs in every training process before the
model is built (axolotl/loaders/model.py, ModelLoader.load), so seeding there makes everything drawn afterwards —
the LoRA init, any newly initialised embedding rows — follow the seed.

The resolved config names this plugin for every training stage (runner.recipe.resolve):
    plugins: [runner.train.seed_plugin.SeedPlugin]
It has no keys of its own: it reads Axolotl's `seed`. Like runner.train.early_stop_plugin it subclasses Axolotl's
class, so only Axolotl's process imports it.
"""
from __future__ import annotations

from axolotl.integrations.base import BasePlugin
from transformers import set_seed


class SeedPlugin(BasePlugin):
    """Seeds Python, NumPy and torch (every device) with the config's `seed` before the datasets are loaded and
    again before the model is loaded."""

    def load_datasets(self, cfg, preprocess: bool = False):
        # Before Axolotl loads the data and estimates a packed run's length: its multipack sampler estimates the
        # steps of an epoch from batches it packs in a RandomSampler's order, and that sampler draws its seed
        # from torch's global generator, unseeded at that point. Measured on the facts-a fixture, two runs started
        # at once estimated 0.894 and 0.745 packing efficiency, so they planned different steps and schedules and
        # trained different models (held-out 5 of 5 against 4 of 5). Returning None leaves the loading to Axolotl.
        self._seed(cfg)
        return None

    def pre_model_load(self, cfg):
        self._seed(cfg)

    def _seed(self, cfg) -> None:
        # Axolotl's PluginManager is a singleton that asks every plugin it ever registered: act only on a config
        # that names this plugin and carries a seed.
        seed = cfg.get("seed") if hasattr(cfg, "get") else None
        if seed is None or f"{__name__}.{type(self).__name__}" not in (cfg.get("plugins") or []):
            return
        set_seed(int(seed))
