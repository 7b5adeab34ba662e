"""Saves a PiSSA adapter's initial state before training: an Axolotl plugin (training.lora.variant: pissa).

runner.train.pissa converts the trained PiSSA adapter into a plain LoRA adapter on the original base, which needs
the adapter as PiSSA initialised it (B0, A0 from the singular vectors of each weight). Only the process that built
the model has it: `post_lora_load` runs right after peft made the adapter (axolotl/loaders/model.py,
ModelLoader.load), before any step. It is saved as peft's conversion wants it, with `init_lora_weights: true`
(loading it must not decompose the base again), to the stage's pissa_init/ folder (runner.layout.StageLayout).
A resumed stage saves it again: with the seed applied first (runner.train.seed_plugin) the init is the same.

The resolved config names this plugin for a stage with the pissa variant (runner.recipe.resolve). It subclasses
Axolotl's class, so only Axolotl's process imports it.
"""
from __future__ import annotations

import os
import shutil

from axolotl.integrations.base import BasePlugin

from runner.layout import StageLayout
from runner.train.pissa import is_pissa


class PissaInitPlugin(BasePlugin):
    """Writes <stage>/pissa_init/ (adapter_model.safetensors, adapter_config.json) once peft built the adapter."""

    def post_lora_load(self, cfg, model):
        # Axolotl's PluginManager is a singleton that asks every plugin it ever registered: act only on a config
        # that names this plugin and trains PiSSA.
        if f"{__name__}.{type(self).__name__}" not in (cfg.get("plugins") or []) or not is_pissa(cfg):
            return
        if int(os.environ.get("RANK", "0")) != 0:  # every rank built the same init: one writes it
            return
        peft_cfg = model.peft_config["default"]
        if not str(peft_cfg.init_lora_weights).lower().startswith("pissa"):
            return  # an adapter loaded as saved (lora_model_dir): PiSSA's init did not run, nothing to convert
        dest = StageLayout.of_output(cfg["output_dir"]).pissa_init
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        init = peft_cfg.init_lora_weights
        peft_cfg.init_lora_weights = True
        try:
            model.save_pretrained(str(tmp))
        finally:
            peft_cfg.init_lora_weights = init
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
