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

from runner import hardware as hw
from runner.layout import RunLayout, StageLayout
from runner.recipe.presets import load_defaults, load_preset
from runner.recipe.load import PREFERENCE_KINDS, TRAIN_KINDS, Recipe, data_format, load_recipe, looks_like_path

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
}
BATCH_KEYS = ("micro_batch_size", "gradient_accumulation_steps")
CPU_UNSAFE_OPTIMIZERS = ("8bit", "paged", "adamw_bnb", "lion", "ademamix")
LORA_KERNELS = ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel")


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
    notes: list[str] = field(default_factory=list)

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
    for k, v in training_to_axolotl(t).items():
        reason = None
        if why:
            src_key = next((tk for tk, ak in TRAINING_TO_AXOLOTL.items() if ak == k), k)
            reason = why.get(src_key) or why.get(k)
        cfg.set(k, v, source, reason)


def adapt_to_hardware(cfg: Layered, h: hw.Hardware) -> list[str]:
    """Make a config runnable on this machine; return one line per change."""
    changes = []
    if h.cuda:
        if cfg.values.get("bf16") and not h.bf16:
            cfg.set("bf16", False, "hardware", f"{h.gpu_name} has no bf16")
            cfg.set("fp16", True, "hardware", f"{h.gpu_name} has no bf16")
            changes.append("bf16 -> fp16")
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


def resolve(rec: Recipe, h: hw.Hardware | None = None, runs_dir: str | Path | None = None,
            template_check: bool = True) -> ResolvedRecipe:
    """Resolve every stage of a validated recipe (pure: writes nothing).

    Runs go to <root>/runs/<recipe>/ unless `runs_dir` or $TUNEBOOK_RUNS names another folder."""
    h = h or hw.detect()
    root = rec.root
    defaults = load_defaults(root)
    preset = load_preset(rec.data["preset"], root) if rec.data.get("preset") else None
    layout = RunLayout.for_recipe(root, rec.name, runs_dir)
    run_root = layout.root
    res = ResolvedRecipe(recipe=rec, preset=preset, hardware=h, stages=[], run_root=run_root)
    data_main = rec.data["data"]
    res.data_blocks["main"] = data_main

    from runner.recipe.derive import derive_defaults  # data/hardware-derived settings (issue: defaults that work)
    from runner.recipe.hygiene import recipe_model_dir, template_settings

    tmpl_keys, tmpl_why, tmpl_notes = (template_settings(rec) if template_check else ({}, {}, []))
    res.notes += tmpl_notes
    model_dir = recipe_model_dir(rec) if template_check else None
    derived, derived_why = derive_defaults(rec, preset, h, model_dir, tmpl_keys.get("chat_template_jinja"))
    res.derived = {k: (v, derived_why.get(k)) for k, v in derived.items()}
    val_fraction = data_main.get("validation_fraction", derived.get("_validation_fraction", 0))
    if val_fraction and "validation_fraction" not in data_main:
        # The derived split becomes part of the data block, so the lock notices when it changes.
        res.data_blocks["main"] = data_main = {**data_main, "validation_fraction": val_fraction}

    prev_output: dict[str, ResolvedStage] = {}
    adapted: list[str] = []
    for s in rec.stages:
        sdir = layout.stage(s.name).dir
        if s.kind == "eval":
            up = _find_upstream(rec.stages, s.index)
            res.stages.append(ResolvedStage(s.name, s.kind, s.index, None, {}, sdir, "main",
                                            rec.stages[up].name if up is not None else None))
            continue
        cfg = Layered()
        cfg.update(defaults.get("axolotl"), "tunebook default", defaults.get("why"))
        _apply_training(cfg, defaults.get("training") or {}, "tunebook default", defaults.get("why"))
        if preset:
            _apply_training(cfg, preset.get("training") or {}, f"preset {preset['name']}", preset.get("why"))
            cfg.update(preset.get("axolotl"), f"preset {preset['name']}", preset.get("why"))
            if preset.get("deepspeed_path"):
                cfg.set("deepspeed", preset["deepspeed_path"], f"preset {preset['name']}",
                        (preset.get("why") or {}).get("deepspeed"))
        block_name = s.name if s.body.get("data") else "main"
        # Data-driven values (epochs, learning rate, sequence length, packing) beat the preset's generic ones;
        # the batch shape is the preset's, sized for its GPU, except on a CPU where the data decides it.
        skip = {"epochs", "learning_rate"} if s.kind in PREFERENCE_KINDS else set()
        if preset and h.cuda:
            skip |= {k for k in BATCH_KEYS if k in (preset.get("training") or {})}
        _apply_training(cfg, {k: v for k, v in derived.items() if k not in skip}, "derived", derived_why)
        _apply_training(cfg, rec.data.get("training") or {}, "recipe")
        if s.kind in PREFERENCE_KINDS:
            # Preference tuning moves a model that already answers well: gentle defaults.
            pref = {"learning_rate": 5.0e-6 if cfg.values.get("adapter") is None else 5.0e-5, "epochs": 1}
            for k, v in pref.items():
                if not (rec.data.get("training") or {}).get(k):
                    _apply_training(cfg, {k: v}, "tunebook default",
                                    {k: f"{s.kind} refines an already-tuned model: small steps"})
        _apply_training(cfg, s.body.get("training") or {}, f"stage {s.name}")
        adapted += [c for c in adapt_to_hardware(cfg, h) if c not in adapted]
        cfg.update(tmpl_keys, "template check", tmpl_why)

        # Pipeline wiring.
        wiring = "tunebook pipeline"
        up_i = _find_upstream(rec.stages, s.index)
        up = prev_output.get(rec.stages[up_i].name) if up_i is not None else None
        if s.kind == "merge":
            if up is None:
                continue  # validation refuses this; resolve stays total
            cfg = Layered(values=copy.deepcopy(up.config), sources=dict(up.sources))
            cfg.set("lora_model_dir", str(up.output_dir), wiring, f"the adapter trained by stage {up.name}")
            cfg.set("output_dir", str(sdir), wiring, "merge-lora writes <output_dir>/merged")
            rs = ResolvedStage(s.name, s.kind, s.index, None, cfg.sources, sdir, up.data_block, up.name)
            rs.config = cfg.values
            res.stages.append(rs)
            continue
        base = rec.data["base_model"]
        if looks_like_path(base):
            base = str(rec.resolve_path(base))
        cfg.set("base_model", base, "recipe")
        if up is not None and s.kind in PREFERENCE_KINDS:
            mode = s.body.get("from", "merged")
            if mode == "adapter" and up.config.get("adapter"):
                cfg.set("base_model", up.config["base_model"], wiring, f"same base as stage {up.name}")
                cfg.set("lora_model_dir", str(up.output_dir), wiring,
                        f"continue training the adapter of stage {up.name}")
            elif up.config.get("adapter"):
                cfg.set("base_model", str(up.paths.merged), wiring,
                        f"stage {up.name}'s adapter merged into its base; this stage trains a fresh adapter")
            else:
                cfg.set("base_model", str(up.output_dir), wiring, f"the full fine-tune of stage {up.name}")
        elif up is not None and s.kind == "sft":
            cfg.set("base_model", str(up.paths.merged) if up.config.get("adapter") else str(up.output_dir),
                    wiring, f"continues from stage {up.name}")
        fmt = data_format(s.body.get("data") or data_main, root)
        data_file = layout.data_file(block_name, "train")
        if s.kind in PREFERENCE_KINDS:
            cfg.set("rl", s.kind, wiring)
            ds = {"path": str(data_file), "ds_type": "json", "split": "train", "type": "chat_template.default",
                  "field_messages": "messages", "field_chosen": "chosen", "field_rejected": "rejected"}
            for k in ("sample_packing",):
                cfg.set(k, False, wiring, f"{s.kind} pairs chosen/rejected per row; packing does not apply")
        else:
            ds = {"path": str(data_file), "ds_type": "json", "type": "chat_template",
                  "field_messages": "messages", "roles_to_train": ["assistant"], "train_on_eos": "turn"}
        if s.kind not in PREFERENCE_KINDS:
            cfg.drop("rl_beta")
        cfg.set("datasets", [ds], wiring, f"{fmt or 'detected'} data, normalised by tunebook")
        val = layout.data_file(block_name, "validation")
        if s.kind == "sft" and (s.body.get("data") or data_main).get("validation_fraction"):
            vwhy = "validation split carved from the training data (never the held-out file)"
            cfg.set("test_datasets", [{**ds, "path": str(val), "split": "train"}], wiring, vwhy)
            cfg.set("eval_strategy", "epoch", wiring, "evaluate once per epoch")
            cfg.set("save_strategy", "epoch", wiring, "one checkpoint per epoch, so the best can be kept")
            # Axolotl turns an unset limit into 4, which would delete early epochs before the choice is made;
            # one more than the epochs covers the partial last step Axolotl's packing estimate can add.
            keep = math.ceil(float(cfg.values.get("num_epochs") or 1)) + 1
            cfg.set("save_total_limit", max(4, keep), wiring,
                    "keep every epoch's checkpoint: tunebook keeps the best epoch's adapter after training")
            cfg.drop("saves_per_epoch")
            cfg.drop("val_set_size")
            if cfg.values.get("max_steps"):
                cfg.drop("save_steps")
        if cfg.values.get("save_steps") and cfg.values.get("saves_per_epoch"):
            cfg.drop("saves_per_epoch")  # the recipe chose its own checkpoint interval
        elif cfg.values.get("max_steps") and cfg.values.get("saves_per_epoch"):
            cfg.drop("saves_per_epoch")
            cfg.set("save_steps", max(1, int(cfg.values["max_steps"]) // 2), wiring,
                    "max_steps is set: checkpoint halfway and at the end")
        cfg.set("output_dir", str(layout.stage(s.name).output), wiring)
        cfg.set("dataset_prepared_path", str(layout.stage(s.name).prepared), wiring,
                "per-stage cache, so one stage's tokenisation never leaks into another")
        cfg.set("auto_resume_from_checkpoints", True, wiring,
                "a stage that was cut off resumes from its last checkpoint")
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
        cfg.update(rec.data.get("axolotl"), "recipe axolotl:")
        cfg.update(s.body.get("axolotl"), f"stage {s.name} axolotl:")
        rs = ResolvedStage(s.name, s.kind, s.index, cfg.values, cfg.sources, sdir, block_name,
                           up.name if up else None)
        if block_name != "main":
            res.data_blocks[block_name] = s.body["data"]
        prev_output[s.name] = rs
        res.stages.append(rs)
    if adapted:
        where = h.describe() if h.cuda else "no CUDA GPU"
        res.notes.insert(0, f"adapted the preset to this machine ({where}): {', '.join(adapted)}")
    res.notes = list(dict.fromkeys(res.notes))
    return res


def resolve_recipe_by_name(name: str, root: str | Path = ".", **kw) -> ResolvedRecipe:
    """Load, validate and resolve a recipe by name (the planner and other commands use this)."""
    return resolve(load_recipe(name, root), **kw)


def needs_merged(res: ResolvedRecipe, stage: ResolvedStage) -> bool:
    """Does a later stage start from this stage's merged model?"""
    for other in res.stages:
        if other.config and str(other.config.get("base_model")) == str(stage.paths.merged):
            return True
    return False
