"""Resolve a validated recipe into one Axolotl config per stage, remembering where every key came from.

Layers, last wins: tunebook defaults < preset < derived (data/hardware) < recipe `training:` < stage `training:`
< hardware adaptation < recipe `axolotl:` < stage `axolotl:`. Pipeline wiring (paths, base model chaining,
datasets) is tunebook's and comes after everything but the raw `axolotl:` blocks.
"""
from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from runner import early_stopping as es
from runner import hardware as hw
from runner import preference
from runner.formats import block_format
from runner.layout import RunLayout, StageLayout
from runner.recipe.core import PREFERENCE_KINDS, TRAIN_KINDS, Recipe, Stage, is_merge_recipe, looks_like_path
from runner.recipe.derive import VALIDATION_FRACTION, derive_defaults
from runner.recipe.hygiene import recipe_model_dir, template_settings
from runner.recipe.load import load_recipe
from runner.recipe.merge import DEFAULT_T, DEFAULT_WEIGHT, MergePlan, MergeSource
from runner.recipe.presets import load_defaults, load_preset

# tunebook `training:` keys → Axolotl keys (LoRA keys and method are handled separately).
TRAINING_TO_AXOLOTL = {
    "epochs": "num_epochs",
    "max_steps": "max_steps",
    "learning_rate": "learning_rate",
    "lr_scheduler": "lr_scheduler",
    "warmup_ratio": "warmup_ratio",
    "weight_decay": "weight_decay",
    "sequence_len": "sequence_len",
    "micro_batch_size": "micro_batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "sample_packing": "sample_packing",
    "gradient_checkpointing": "gradient_checkpointing",
    "optimizer": "optimizer",
    "save_steps": "save_steps",
    "seed": "seed",
    "gamma": "simpo_gamma",
}
# Axolotl keys that only a preference stage of one method reads: dropped from every other stage's config.
METHOD_ONLY_KEYS = {"rl_beta": PREFERENCE_KINDS, "simpo_gamma": ("simpo",), "cpo_alpha": ("simpo",)}
# training.lora.variant → the Axolotl (peft) keys that build it; plain LoRA needs none. PiSSA's fast SVD (4
# subspace iterations, peft's recommendation) draws at random: the seed plugin makes it repeat.
LORA_VARIANTS = {
    "lora": {},
    "dora": {"peft_use_dora": True},
    "rslora": {"peft_use_rslora": True},
    "pissa": {"peft_init_lora_weights": "pissa_niter_4"},
}
LORA_VARIANT_WHY = {
    "dora": "DoRA: each weight's magnitude and direction trained apart, LoRA on the direction; slower steps",
    "rslora": "rsLoRA: the update scaled by alpha/sqrt(r) instead of alpha/r, so a high rank still learns",
    "pissa": "PiSSA: the adapter starts from each weight's principal singular vectors; tunebook converts the "
             "trained one to a rank-2r LoRA on the original base",
}
BATCH_KEYS = ("micro_batch_size", "gradient_accumulation_steps")
CPU_UNSAFE_OPTIMIZERS = ("8bit", "paged", "adamw_bnb", "lion", "ademamix")
LORA_KERNELS = ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel")
WIRING = "tunebook pipeline"  # the source of every key tunebook's pipeline sets itself
# The Axolotl plugin that applies the config's seed before the model is built (runner.train.seed_plugin), and the
# one that saves a PiSSA adapter's initial state for its conversion to LoRA (runner.train.pissa_plugin).
SEED_PLUGIN = "runner.train.seed_plugin.SeedPlugin"
PISSA_PLUGIN = "runner.train.pissa_plugin.PissaInitPlugin"


@dataclass
class Layered:
    """An Axolotl config under construction: key → value, and key → (source, reason)."""

    values: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)

    def set(self, key: str, value, source: str, why: str | None = None):
        self.values[key] = value
        self.sources[key] = (source, why)

    def drop(self, key: str):
        self.values.pop(key, None)
        self.sources.pop(key, None)

    def update(self, mapping: dict, source: str, why: dict | None = None):
        for k, v in (mapping or {}).items():
            self.set(k, copy.deepcopy(v), source, (why or {}).get(k))


@dataclass
class ResolvedStage:
    """One stage ready to run: its Axolotl config (None for eval), provenance and paths."""

    name: str
    kind: str
    index: int
    config: dict | None
    sources: dict
    run_dir: Path
    data_block: str | None = None
    upstream: str | None = None
    # Lines about this stage alone that `tunebook resolve` prints under its table (e.g. why early stopping is off).
    notes: list[str] = field(default_factory=list)
    # Why the early-stopping rule does not apply to this training stage (None: it does, or the stage trains nothing).
    early_stopping_off: str | None = None
    # Share of this stage's training rows the data step carves out as validation.jsonl (sft only): decided
    # here, with the derived defaults, so the data step never derives anything itself.
    validation_fraction: float = 0.0

    @property
    def paths(self) -> StageLayout:
        """Every file of this stage (runner.layout)."""
        return StageLayout(self.run_dir)

    @property
    def output_dir(self) -> Path:
        return self.paths.output


@dataclass
class ResolvedRecipe:
    """Every stage of a recipe resolved against its preset and this machine."""

    recipe: Recipe
    preset: dict | None
    hardware: hw.Hardware
    stages: list[ResolvedStage]
    run_root: Path
    notes: list[str] = field(default_factory=list)
    data_blocks: dict = field(default_factory=dict)
    derived: dict = field(default_factory=dict)
    # A merge recipe's sources and settings (runner.recipe.merge.MergePlan); None for a recipe that trains.
    merge: object | None = None

    @property
    def data(self) -> dict:
        return self.recipe.data

    @property
    def layout(self) -> RunLayout:
        """Every file of this run (runner.layout)."""
        return RunLayout(self.run_root)

    def stage(self, name: str) -> ResolvedStage:
        """The stage called `name` (the CLI checks names before asking)."""
        return next(s for s in self.stages if s.name == name)


def training_to_axolotl(t: dict) -> dict:
    """Translate a tunebook `training:` block to Axolotl keys."""
    out = {TRAINING_TO_AXOLOTL[k]: v for k, v in t.items() if k in TRAINING_TO_AXOLOTL}
    method = t.get("method")
    if method == "lora":
        out.update(adapter="lora", load_in_4bit=False, load_in_8bit=False)
    elif method == "qlora":
        out.update(adapter="qlora", load_in_4bit=True, load_in_8bit=False)
    elif method == "full":
        out.update(adapter=None)
    lora = t.get("lora") or {}
    if "r" in lora:
        out["lora_r"] = lora["r"]
    if "alpha" in lora:
        out["lora_alpha"] = lora["alpha"]
    if "dropout" in lora:
        out["lora_dropout"] = lora["dropout"]
    if "targets" in lora:
        if lora["targets"] == "all-linear":
            out["lora_target_linear"] = True
            out["lora_target_modules"] = None
        else:
            out["lora_target_linear"] = False
            out["lora_target_modules"] = list(lora["targets"])
    out.update(LORA_VARIANTS.get(lora.get("variant"), {}))
    if "beta" in t:
        out["rl_beta"] = t["beta"]
    return out


def merged_training(*blocks: dict | None) -> dict:
    """Merge training blocks (later wins), merging the nested lora block key by key."""
    out: dict = {}
    for b in blocks:
        for k, v in (b or {}).items():
            if k == "lora":
                out["lora"] = {**out.get("lora", {}), **v}
            else:
                out[k] = v
    return out


def _apply_training(cfg: Layered, t: dict, source: str, why: dict | None = None):
    variant = (t.get("lora") or {}).get("variant")
    if variant:  # a later layer's variant replaces an earlier one's keys (a stage's `variant: lora` clears dora)
        for keys in LORA_VARIANTS.values():
            for k in keys:
                if k in cfg.values:
                    cfg.drop(k)
    for k, v in training_to_axolotl(t).items():
        reason = None
        if why:
            src_key = next((tk for tk, ak in TRAINING_TO_AXOLOTL.items() if ak == k), k)
            reason = why.get(src_key) or why.get(k)
        if not reason and k in LORA_VARIANTS.get(variant, {}):
            reason = f"training.lora.variant: {variant} ({LORA_VARIANT_WHY[variant]})"
        cfg.set(k, v, source, reason)


def adapt_to_hardware(cfg: Layered, h: hw.Hardware) -> list[str]:
    """Make a config runnable on this machine; return one line per change."""
    changes = []
    if h.cuda:
        if cfg.values.get("bf16") and not h.bf16:
            cfg.set("bf16", False, "hardware", f"{h.gpu_name} has no bf16")
            cfg.set("fp16", True, "hardware", f"{h.gpu_name} has no bf16")
            changes.append("bf16 -> fp16")
        if cfg.values.get("tf32") is True and not h.tf32:
            # transformers refuses tf32 below Ampere ("--tf32 requires Ampere or a newer GPU arch")
            cfg.set("tf32", False, "hardware", f"{h.gpu_name} (sm {h.compute_capability or '?'}) has no TF32")
            changes.append("tf32 off")
        return changes
    src, why = "hardware", "no CUDA GPU on this machine"
    for key in ("bf16", "fp16", "tf32"):
        if cfg.values.get(key) not in (False, None):
            changes.append(f"{key} off")
        cfg.set(key, False, src, why + ": half precision crawls on a CPU")
    for key in LORA_KERNELS:
        cfg.set(key, False, src, why + ": Axolotl's Triton LoRA kernels need CUDA")
    opt = str(cfg.values.get("optimizer", ""))
    if any(s in opt for s in CPU_UNSAFE_OPTIMIZERS):
        cfg.set("optimizer", "adamw_torch", src, f"{why}: {opt} needs CUDA")
        changes.append(f"optimizer {opt} -> adamw_torch")
    if cfg.values.get("deepspeed"):
        cfg.drop("deepspeed")
        changes.append("DeepSpeed off")
    if cfg.values.get("load_in_4bit"):
        cfg.set("bnb_config_kwargs", {**(cfg.values.get("bnb_config_kwargs") or {}),
                                       "bnb_4bit_compute_dtype": "float32"}, src, why)
    plugins = [p for p in cfg.values.get("plugins") or [] if "liger" not in p.lower()]
    if plugins != (cfg.values.get("plugins") or []):
        cfg.set("plugins", plugins or None, src, why + ": Liger kernels are Triton (CUDA)")
        changes.append("Liger off")
    if cfg.values.get("adapter") == "qlora" and str(cfg.sources.get("adapter", ("",))[0]).startswith("preset"):
        # 4-bit weights save GPU memory; on a CPU they only cost time (measured ~30% slower per step here,
        # bitsandbytes' fast CPU kernel is not installed). A recipe that asks for qlora itself keeps it.
        cfg.set("adapter", "lora", src, why + ": 4-bit only saves GPU memory; 16/32-bit LoRA is faster on a CPU")
        cfg.set("load_in_4bit", False, src, why)
        cfg.drop("bnb_config_kwargs")
        changes.append("4-bit QLoRA -> LoRA")
    if cfg.values.get("gradient_checkpointing"):
        cfg.set("gradient_checkpointing", False, src,
                why + ": system RAM holds the activations; recomputing them would cost ~30% more time")
        changes.append("gradient checkpointing off")
    cfg.set("dataset_num_proc", 1, src, "one process is fastest for small data on few cores")
    return changes


def _find_upstream(stages, i) -> int | None:
    for j in range(i - 1, -1, -1):
        if stages[j].kind in TRAIN_KINDS:
            return j
    return None


@dataclass
class _Context:
    """What every stage of one recipe is resolved against."""

    rec: Recipe
    h: hw.Hardware
    layout: RunLayout
    defaults: dict
    preset: dict | None
    derived: dict
    derived_why: dict
    tmpl_keys: dict
    tmpl_why: dict
    data_main: dict
    notes: list[str] = field(default_factory=list)  # recipe-level notes the stages add (resolve() reports them)


def _template_check(rec: Recipe, template_check: bool) -> tuple[dict, dict, list[str], Path | None, str | None]:
    """(Axolotl keys, their reasons, notes) of the chat-template check, the local model folder, and the template
    the training rows are rendered with (None: the tokenizer's own)."""
    if not template_check:
        return {}, {}, [], None, None
    keys, why, notes, template = template_settings(rec)
    return keys, why, notes, recipe_model_dir(rec), template


def _derive(res: ResolvedRecipe, rec: Recipe, preset: dict | None, h: hw.Hardware, model_dir: Path | None,
            template: str | None) -> tuple[dict, dict]:
    """Data/hardware-derived settings (issue: defaults that work); a derived validation split becomes part of
    the main data block, so the lock notices when it changes."""
    derived, why = derive_defaults(rec, preset, h, model_dir, template)
    res.derived = {k: (v, why.get(k)) for k, v in derived.items()}
    data_main = rec.data["data"]
    val_fraction = data_main.get("validation_fraction", derived.get("_validation_fraction", 0))
    if val_fraction and "validation_fraction" not in data_main:
        data_main = {**data_main, "validation_fraction": val_fraction}
    res.data_blocks["main"] = data_main
    return derived, why


def _stage_layers(ctx: _Context, s: Stage, adapted: list[str]) -> Layered:
    """Every layer of a training stage's config up to the template check (see the module docstring)."""
    rec, preset, h, derived = ctx.rec, ctx.preset, ctx.h, ctx.derived
    cfg = Layered()
    cfg.update(ctx.defaults.get("axolotl"), "tunebook default", ctx.defaults.get("why"))
    _apply_training(cfg, ctx.defaults.get("training") or {}, "tunebook default", ctx.defaults.get("why"))
    if preset:
        _apply_training(cfg, preset.get("training") or {}, f"preset {preset['name']}", preset.get("why"))
        cfg.update(preset.get("axolotl"), f"preset {preset['name']}", preset.get("why"))
        if preset.get("deepspeed_path"):
            cfg.set("deepspeed", preset["deepspeed_path"], f"preset {preset['name']}",
                    (preset.get("why") or {}).get("deepspeed"))
    # Data-driven values (epochs, learning rate, sequence length, packing) beat the preset's generic ones;
    # the batch shape is the preset's, sized for its GPU, except on a CPU or for a small fact set, where the
    # data decides it: the derived learning rate was measured with one optimizer step per pack (docs/quality.md),
    # and the preset's micro batch x accumulation would give that rate several times fewer steps. One pack per
    # step never needs more memory than the preset's micro batch of full-length sequences.
    skip = {"epochs", "learning_rate"} if s.kind in PREFERENCE_KINDS else set()
    if preset and h.cuda and not derived.get("_per_pack_steps"):
        skip |= {k for k in BATCH_KEYS if k in (preset.get("training") or {})}
    _apply_training(cfg, {k: v for k, v in derived.items() if k not in skip}, "derived", ctx.derived_why)
    method = (ctx.defaults.get("methods") or {}).get(s.kind) or {}
    _apply_training(cfg, method.get("training") or {}, "tunebook default", method.get("why"))
    cfg.update(method.get("axolotl"), "tunebook default", method.get("why"))
    _apply_training(cfg, rec.data.get("training") or {}, "recipe")
    # ORPO is SFT and preference in one: as the first training stage it learns the answers as well, with the
    # training defaults an sft stage starts from; after another stage, it refines like the others.
    learns_answers = s.kind == "orpo" and _find_upstream(rec.stages, s.index) is None
    if s.kind in PREFERENCE_KINDS and not learns_answers:
        # Preference tuning moves a model that already answers well: gentle defaults.
        pref = {"learning_rate": 5.0e-6 if cfg.values.get("adapter") is None else 5.0e-5, "epochs": 1}
        for k, v in pref.items():
            if not (rec.data.get("training") or {}).get(k):
                _apply_training(cfg, {k: v}, "tunebook default",
                                {k: f"{s.kind} refines an already-tuned model: small steps"})
    _apply_training(cfg, s.body.get("training") or {}, f"stage {s.name}")
    adapted += [c for c in adapt_to_hardware(cfg, h) if c not in adapted]
    cfg.update(ctx.tmpl_keys, "template check", ctx.tmpl_why)
    return cfg


def _wire_merge(s: Stage, up: ResolvedStage, sdir: Path) -> ResolvedStage:
    """merge-lora: the upstream stage's config, pointed at its adapter, writing <stage dir>/merged."""
    cfg = Layered(values=copy.deepcopy(up.config), sources=dict(up.sources))
    cfg.set("lora_model_dir", str(up.output_dir), WIRING, f"the adapter trained by stage {up.name}")
    cfg.set("output_dir", str(sdir), WIRING, "merge-lora writes <output_dir>/merged")
    rs = ResolvedStage(s.name, s.kind, s.index, None, cfg.sources, sdir, up.data_block, up.name)
    rs.config = cfg.values
    return rs


def _wire_base_model(cfg: Layered, rec: Recipe, s: Stage, up: ResolvedStage | None) -> None:
    """The recipe's base model, or the model the upstream training stage leaves."""
    base = rec.data["base_model"]
    if looks_like_path(base):
        base = str(rec.resolve_path(base))
    cfg.set("base_model", base, "recipe")
    if up is not None and s.kind in PREFERENCE_KINDS:
        mode = s.body.get("from", "merged")
        if mode == "adapter" and up.config.get("adapter"):
            cfg.set("base_model", up.config["base_model"], WIRING, f"same base as stage {up.name}")
            cfg.set("lora_model_dir", str(up.output_dir), WIRING,
                    f"continue training the adapter of stage {up.name}")
        elif up.config.get("adapter"):
            cfg.set("base_model", str(up.paths.merged), WIRING,
                    f"stage {up.name}'s adapter merged into its base; this stage trains a fresh adapter")
        else:
            cfg.set("base_model", str(up.output_dir), WIRING, f"the full fine-tune of stage {up.name}")
    elif up is not None and s.kind == "sft":
        cfg.set("base_model", str(up.paths.merged) if up.config.get("adapter") else str(up.output_dir),
                WIRING, f"continues from stage {up.name}")


def _datasets(cfg: Layered, ctx: _Context, s: Stage, block: dict, block_name: str) -> None:
    """The prepared train file (and validation file, when the block has a validation split) as Axolotl datasets."""
    fmt = block_format(block, ctx.rec.root)
    data_file = ctx.layout.data_file(block_name, "train")
    if s.kind in PREFERENCE_KINDS:
        _preference_wiring(cfg, s)
        ds = preference.dataset(s.kind, str(data_file))
    else:
        ds = {"path": str(data_file), "ds_type": "json", "type": "chat_template",
              "field_messages": "messages", "roles_to_train": ["assistant"], "train_on_eos": "turn"}
    for key, kinds in METHOD_ONLY_KEYS.items():
        if s.kind not in kinds:
            cfg.drop(key)
    shape = preference.METHODS[s.kind].rows if s.kind in PREFERENCE_KINDS else None
    how = f", written as {shape} {s.kind} examples" if shape and shape != "pairs" else ""
    cfg.set("datasets", [ds], WIRING, f"{fmt or 'detected'} data, normalised by tunebook{how}")
    if s.kind == "sft" and block.get("validation_fraction"):
        val = ctx.layout.data_file(block_name, "validation")
        vwhy = "validation split carved from the training data (never the held-out file)"
        cfg.set("test_datasets", [{**ds, "path": str(val), "split": "train"}], WIRING, vwhy)
        cfg.set("eval_strategy", "epoch", WIRING, "evaluate once per epoch")
        cfg.set("save_strategy", "epoch", WIRING, "one checkpoint per epoch, so the best can be kept")
        # Axolotl turns an unset limit into 4, which would delete early epochs before the choice is made;
        # one more than the epochs covers the partial last step Axolotl's packing estimate can add.
        keep = math.ceil(float(cfg.values.get("num_epochs") or 1)) + 1
        cfg.set("save_total_limit", max(4, keep), WIRING,
                "keep every epoch's checkpoint: tunebook keeps the best epoch's adapter after training")
        cfg.drop("saves_per_epoch")
        cfg.drop("val_set_size")
        if cfg.values.get("max_steps"):
            cfg.drop("save_steps")


def _preference_wiring(cfg: Layered, s: Stage) -> None:
    """What Axolotl's trainer for a preference method requires of its config."""
    cfg.set("rl", s.kind, WIRING, preference.METHODS[s.kind].summary)
    cfg.set("sample_packing", False, WIRING, f"{s.kind} trains on whole prompt/answer examples; packing does "
                                             "not apply")
    if s.kind == "kto":
        cfg.set("remove_unused_columns", False, WIRING, "TRL's KTO trainer reads the label column itself")
        if int(cfg.values.get("micro_batch_size") or 1) < 2:
            cfg.set("micro_batch_size", 2, WIRING, "TRL's KTO estimates its KL term from the other examples of a "
                                                   "batch: it refuses a batch of one per device")
    if s.kind == "simpo" and cfg.values.get("warmup_ratio"):
        # Axolotl 0.19 refuses warmup_ratio for SimPO; the same share of a run with a fixed length is exact,
        # otherwise a short fixed warmup.
        ratio, steps = float(cfg.values["warmup_ratio"]), cfg.values.get("max_steps")
        warmup = math.ceil(ratio * int(steps)) if steps else 10
        cfg.drop("warmup_ratio")
        cfg.set("warmup_steps", warmup, WIRING,
                f"Axolotl's SimPO trainer takes no warmup_ratio: {ratio:g} of max_steps {steps}" if steps else
                f"Axolotl's SimPO trainer takes no warmup_ratio ({ratio:g}): a 10-step warmup instead")


def _checkpointing(cfg: Layered, ctx: _Context, s: Stage) -> None:
    """Checkpoint interval, output folders, and resuming a stage that was cut off."""
    if cfg.values.get("save_steps") and cfg.values.get("saves_per_epoch"):
        cfg.drop("saves_per_epoch")  # the recipe chose its own checkpoint interval
    elif cfg.values.get("max_steps") and cfg.values.get("saves_per_epoch"):
        cfg.drop("saves_per_epoch")
        cfg.set("save_steps", max(1, int(cfg.values["max_steps"]) // 2), WIRING,
                "max_steps is set: checkpoint halfway and at the end")
    cfg.set("output_dir", str(ctx.layout.stage(s.name).output), WIRING)
    cfg.set("dataset_prepared_path", str(ctx.layout.stage(s.name).prepared), WIRING,
            "per-stage cache, so one stage's tokenisation never leaks into another")
    cfg.set("auto_resume_from_checkpoints", True, WIRING,
            "a stage that was cut off resumes from its last checkpoint")


def _tracking(cfg: Layered, rec: Recipe, s: Stage) -> None:
    """The recipe's experiment tracker, one run per stage grouped by recipe."""
    tracking = rec.data.get("tracking", "none")
    if tracking == "wandb":
        cfg.set("wandb_project", f"tunebook-{rec.name}", "recipe tracking")
        cfg.set("wandb_name", f"{rec.name}-{s.name}", "recipe tracking")
        cfg.set("wandb_mode", os.environ.get("WANDB_MODE", "offline"), "recipe tracking",
                "offline unless WANDB_MODE says otherwise; the run group (recipe) and job type (stage) "
                "are passed as WANDB_RUN_GROUP / WANDB_JOB_TYPE")
    elif tracking == "mlflow":
        cfg.set("use_mlflow", True, "recipe tracking")
        cfg.set("mlflow_experiment_name", f"tunebook-{rec.name}", "recipe tracking")
        cfg.set("mlflow_run_name", f"{rec.name}-{s.name}", "recipe tracking")


def _asked_early_stopping(rec: Recipe, s: Stage) -> tuple[dict | bool | None, str]:
    """(setting, source) of `training.early_stopping`: the stage's over the recipe's, key by key; None when
    neither sets it, False when the later one turns it off, a mapping of the keys set otherwise."""
    asked, source = None, "derived"
    for block, src in (((rec.data.get("training") or {}), "recipe"),
                       ((s.body.get("training") or {}), f"stage {s.name}")):
        v = block.get("early_stopping")
        if v is None:
            continue
        if v is False:
            asked = False
        else:
            asked = {**(asked if isinstance(asked, dict) else {}), **(v if isinstance(v, dict) else {})}
        source = src
    return asked, source


def _early_stopping_blocker(values: dict, kind: str, rule: es.Rule) -> str | None:
    """Why the rule cannot apply to a stage's final config (None: it can)."""
    if kind != "sft":
        return f"{kind} stages are not evaluated on a validation split"
    if not values.get("test_datasets") or values.get("eval_strategy") != "epoch" \
            or values.get("save_strategy") != "epoch":
        return ("the stage has no validation split evaluated and checkpointed once per epoch "
                "(data.validation_fraction gives it one)")
    if values.get("max_steps"):
        return "max_steps is set: the stage runs a fixed number of steps"
    if values.get("early_stopping_patience"):
        return "the axolotl: block sets Axolotl's own early_stopping_patience"
    epochs = float(values.get("num_epochs") or 1)
    if epochs <= rule.min_epochs:
        return f"{epochs:g} epochs planned, not more than min_epochs ({rule.min_epochs}): nothing to cut short"
    return None


def _early_stopping(cfg: Layered, ctx: _Context, s: Stage, sdir: Path) -> str | None:
    """tunebook's early-stopping rule (runner.early_stopping) for a training stage, decided on its final config
    (after the raw `axolotl:` blocks, which may change the epochs or the evaluation): on by default for an sft stage
    evaluated on a validation split once per epoch, for more epochs than the rule's minimum and without max_steps;
    `training.early_stopping` overrides the rule's settings or (false) turns it off. The plugin runs it inside
    Axolotl's trainer; the settings are part of the config, so the lock treats them as the stage's inputs.
    Returns why the rule is off (None when it is on)."""
    asked, source = _asked_early_stopping(ctx.rec, s)
    if asked is False:
        return f"training.early_stopping is false ({source})"
    rule = es.Rule.from_dict(asked or {})
    blocker = _early_stopping_blocker(cfg.values, s.kind, rule)
    if blocker:
        if asked is not None:  # asked for in the recipe: say so wherever the recipe is used, not only in resolve
            ctx.notes.append(f"stage {s.name}: training.early_stopping is set but cannot apply: {blocker}")
        return blocker
    settings = {**rule.to_dict(), "record": str(StageLayout(sdir).early_stop)}
    if asked:
        why = (f"training.early_stopping ({', '.join(f'{k} {v:g}' for k, v in sorted(asked.items()))}; the rest "
               f"derived): {rule.describe()}")
    else:
        why = (f"{rule.describe()}. Learned: validation answers, never trained on, predicted at >= "
               f"{math.exp(-rule.memorised):.1%} per token; patience {rule.patience}: hr-bot's validation loss "
               "moves 1-2% between epochs while its held-out score still rises (docs/quality.md, Early stopping)")
    cfg.set(es.CONFIG_KEY, settings, source, why)
    _add_plugin(cfg, es.AXOLOTL_PLUGIN, source, "tunebook's early stopping",
                "runs tunebook's early-stopping rule inside Axolotl's trainer (see tunebook_early_stopping)")
    return None


def _add_plugin(cfg: Layered, plugin: str, source: str, short: str, why: str) -> None:
    """Append one of tunebook's own Axolotl plugins to the config's `plugins` (kept: the ones already there)."""
    plugins = list(cfg.values.get("plugins") or [])
    if plugin in plugins:
        return
    if plugins:
        old_source, old_why = cfg.sources.get("plugins", (None, None))
        why_now = f"{old_why + '; ' if old_why else ''}plus {short} ({plugin})"
        cfg.set("plugins", [*plugins, plugin], old_source, why_now)
    else:
        cfg.set("plugins", [plugin], source, why)


def _seeding(cfg: Layered) -> None:
    """Every training stage seeds torch with its `seed` before Axolotl builds the model (runner.train.seed_plugin):
    Axolotl itself does not, so without it the same recipe drew a different LoRA init on every run."""
    if cfg.values.get("seed") is None:
        return
    _add_plugin(cfg, SEED_PLUGIN, WIRING, "the seed applied before the model and adapter are built",
                f"applies seed {cfg.values['seed']} before the model and adapter are built: Axolotl seeds only its "
                "Trainer, after the LoRA matrices were drawn (same seed, same init, so runs repeat and resume)")


def _lora_variant(cfg: Layered, ctx: _Context, s: Stage) -> None:
    """An adapter variant without an adapter (method: full) would pass unused: say so and drop its keys. A PiSSA
    stage saves its adapter's initial state (runner.train.pissa_plugin) so that tunebook can convert the trained
    adapter into plain LoRA on the original base (runner.train.pissa)."""
    keys = [k for ks in LORA_VARIANTS.values() for k in ks if cfg.values.get(k)]
    if keys and not cfg.values.get("adapter"):
        for k in keys:
            cfg.drop(k)
        ctx.notes.append(f"stage {s.name}: training.lora.variant has no effect on a full fine-tune (method: full)")
        return
    init = str(cfg.values.get("peft_init_lora_weights") or "")
    if not init.lower().startswith("pissa"):
        return
    _add_plugin(cfg, PISSA_PLUGIN, WIRING, "PiSSA's initial adapter saved for the conversion to LoRA",
                "saves the PiSSA adapter as initialised, before training: the trained adapter is relative to the "
                "residual base, and tunebook converts it to a rank-2r LoRA on the original base with it")


def _validation_fraction(kind: str, block: dict, config: dict) -> float:
    """The validation split the data step carves for a stage: the block's (declared or derived), or the
    default one when the recipe's `axolotl:` asks for test_datasets itself."""
    if kind != "sft":
        return 0.0
    if "validation_fraction" in block:
        return float(block["validation_fraction"] or 0.0)
    return VALIDATION_FRACTION if config.get("test_datasets") else 0.0


def _wire_stage(ctx: _Context, s: Stage, cfg: Layered, up: ResolvedStage | None, sdir: Path) -> ResolvedStage:
    """Pipeline wiring of a training stage (model chaining, data, checkpoints, tracking), then the raw
    `axolotl:` blocks, which win over everything."""
    rec = ctx.rec
    block_name = s.name if s.body.get("data") else "main"
    block = s.body.get("data") or ctx.data_main
    _wire_base_model(cfg, rec, s, up)
    _datasets(cfg, ctx, s, block, block_name)
    _checkpointing(cfg, ctx, s)
    _tracking(cfg, rec, s)
    cfg.update(rec.data.get("axolotl"), "recipe axolotl:")
    cfg.update(s.body.get("axolotl"), f"stage {s.name} axolotl:")
    _seeding(cfg)
    _lora_variant(cfg, ctx, s)
    off = _early_stopping(cfg, ctx, s, sdir)
    rs = ResolvedStage(s.name, s.kind, s.index, cfg.values, cfg.sources, sdir, block_name,
                       up.name if up else None,
                       validation_fraction=_validation_fraction(s.kind, block, cfg.values))
    rs.early_stopping_off = off
    if off and s.kind == "sft":
        rs.notes.append(f"early stopping off: {off}")
    if s.kind in PREFERENCE_KINDS:
        rs.notes.append(preference.METHODS[s.kind].summary)
    if s.kind == "orpo" and up is not None:
        ctx.notes.append(f"stage {s.name}: ORPO is SFT and preference tuning in one and can start from the base "
                         f"model; here it continues from stage {up.name}'s model. `stages: [orpo]` with the "
                         "preference file as the recipe's data trains the answers and the preference in one stage")
    return rs


def resolve(rec: Recipe, h: hw.Hardware | None = None, runs_dir: str | Path | None = None,
            template_check: bool = True) -> ResolvedRecipe:
    """Resolve every stage of a validated recipe (pure: writes nothing).

    Runs go to <root>/runs/<recipe>/ unless `runs_dir` or $TUNEBOOK_RUNS names another folder."""
    h = h or hw.detect()
    if is_merge_recipe(rec.data):
        return resolve_merge(rec, h, runs_dir)
    root = rec.root
    defaults = load_defaults(root)
    preset = load_preset(rec.data["preset"], root) if rec.data.get("preset") else None
    layout = RunLayout.for_recipe(root, rec.name, runs_dir)
    res = ResolvedRecipe(recipe=rec, preset=preset, hardware=h, stages=[], run_root=layout.root)
    res.data_blocks["main"] = rec.data["data"]
    tmpl_keys, tmpl_why, tmpl_notes, model_dir, template = _template_check(rec, template_check)
    res.notes += tmpl_notes
    derived, derived_why = _derive(res, rec, preset, h, model_dir, template)
    ctx = _Context(rec, h, layout, defaults, preset, derived, derived_why, tmpl_keys, tmpl_why,
                   res.data_blocks["main"])

    prev_output: dict[str, ResolvedStage] = {}
    adapted: list[str] = []
    for s in rec.stages:
        sdir = layout.stage(s.name).dir
        up_i = _find_upstream(rec.stages, s.index)
        if s.kind == "eval":
            res.stages.append(ResolvedStage(s.name, s.kind, s.index, None, {}, sdir, "main",
                                            rec.stages[up_i].name if up_i is not None else None))
            continue
        cfg = _stage_layers(ctx, s, adapted)
        up = prev_output.get(rec.stages[up_i].name) if up_i is not None else None
        if s.kind == "merge":
            if up is not None:  # validation refuses a merge without a training stage; resolve stays total
                res.stages.append(_wire_merge(s, up, sdir))
            continue
        rs = _wire_stage(ctx, s, cfg, up, sdir)
        if rs.data_block != "main":
            res.data_blocks[rs.data_block] = s.body["data"]
        prev_output[s.name] = rs
        res.stages.append(rs)
    res.notes += ctx.notes
    if adapted:
        where = h.describe() if h.cuda else "no CUDA GPU"
        res.notes.insert(0, f"adapted the preset to the machine ({where}): {', '.join(adapted)}")
    res.notes = list(dict.fromkeys(res.notes))
    return res


def needs_merged(res: ResolvedRecipe, stage: ResolvedStage) -> bool:
    """Does a later stage start from this stage's merged model?"""
    for other in res.stages:
        if other.config and str(other.config.get("base_model")) == str(stage.paths.merged):
            return True
    return False


# ---------------------------------------------------------------------------------------------- merge recipes


def plan_merge(rec, h, runs_dir=None) -> MergePlan:
    """Resolve every source recipe (same machine, same runs folder) for a validated merge recipe."""
    m = rec.data["merge"]
    sources = []
    for i, s in enumerate(m["sources"]):
        src = resolve(load_recipe(s["recipe"], rec.root), h, runs_dir)
        sources.append(MergeSource(s["recipe"], i, src, s.get("weight", None if m["method"] == "slerp"
                                                                    else DEFAULT_WEIGHT), s.get("density")))
    base = rec.data["base_model"]
    if looks_like_path(base):
        base = str(rec.resolve_path(base))
    return MergePlan(m["method"], sources, base, m.get("t", DEFAULT_T) if m["method"] == "slerp" else None,
                     m.get("dtype"))


def resolve_merge(rec, h, runs_dir=None):
    """The ResolvedRecipe of a merge recipe: a mergekit stage and an eval stage, no data of its own, and the plan."""
    layout = RunLayout.for_recipe(rec.root, rec.name, runs_dir)
    res = ResolvedRecipe(recipe=rec, preset=None, hardware=h, stages=[], run_root=layout.root)
    res.merge = plan_merge(rec, h, runs_dir)
    merge_stage = next(s.name for s in rec.stages if s.kind == "mergekit")
    for s in rec.stages:
        up = merge_stage if s.kind == "eval" else None
        res.stages.append(ResolvedStage(s.name, s.kind, s.index, None, {}, layout.stage(s.name).dir, None, up))
    return res
