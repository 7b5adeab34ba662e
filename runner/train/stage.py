"""Run one training or merge stage through Axolotl: write its config, train (resuming from the last checkpoint
after a crash), keep the best epoch, merge the adapter when a later stage starts from the merged model.

Writes into the stage folder (runs/<recipe>/<stage>/, see runner.layout): axolotl.yaml (and merge.yaml), train.log,
output/ (adapter or model, checkpoints), merged/, best_epoch.json, and early_stop.json (written by the early-stopping
plugin inside Axolotl, runner.train.early_stop_plugin). The pipeline decides whether a stage runs and records what it
made; this module only runs it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import yaml

from runner import early_stopping as es
from runner.console import say
from runner.errors import TunebookError
from runner.fsutil import atomic_write_text, sha256_file
from runner.recipe.resolve import ResolvedRecipe, ResolvedStage, needs_merged
from runner.train import pissa, trainlog
from runner.train.axolotl import axolotl_cmd, child_env, launcher_args, run_logged

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                   "tokenizer.model")
TRAINED_SHARE_WARN = 0.25
MODEL_FILES = re.compile(r"\.(safetensors|json|bin|model|jinja|txt)$")
MERGE_LORA_OUT = "merged"  # `axolotl merge-lora` writes the merged model to <output_dir>/merged (Axolotl's name)


def output_hash(path: Path) -> str | None:
    """Hash of a model/adapter folder's top-level files (checkpoints and caches excluded); None when the folder
    holds none (Axolotl saved no model there)."""
    if not path.is_dir():
        return None
    files = sorted(p for p in path.iterdir() if p.is_file() and MODEL_FILES.search(p.name))
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest checkpoint-N folder of an output dir (what Axolotl resumes from), or None."""
    cks = trainlog.checkpoints(output_dir)
    return cks[-1] if cks else None


def write_config(stage: ResolvedStage, config: dict, path: Path | None = None) -> Path:
    """The Axolotl config of a stage, with a do-not-edit header; `path` defaults to the stage's axolotl.yaml."""
    path = path or stage.paths.config
    header = (f"# Written by tunebook for stage '{stage.name}' ({stage.kind}). Do not edit: change the recipe.\n"
              f"# `tunebook resolve <recipe>` shows where every key came from.\n")
    atomic_write_text(path, header + yaml.safe_dump(config, sort_keys=True, allow_unicode=True, width=120))
    return path


def stage_env(res: ResolvedRecipe, stage: ResolvedStage) -> dict:
    """The tracking environment of a stage's Axolotl process (wandb grouped by recipe, offline unless
    WANDB_MODE says otherwise; disabled with `tracking: none`)."""
    tracking = res.data.get("tracking", "none")
    if tracking == "wandb":
        return {"WANDB_RUN_GROUP": res.recipe.name, "WANDB_JOB_TYPE": stage.name,
                "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"),
                "WANDB_DIR": str(res.run_root)}
    return {"WANDB_MODE": "disabled"} if tracking == "none" else {}


def merge_adapter(stage: ResolvedStage, env: dict, quiet: bool = False) -> None:
    """axolotl merge-lora of the stage's config into a temp folder, then one rename to the stage's merged/
    (never a half-written model)."""
    dest, tmp = stage.paths.merged, stage.paths.merge_tmp
    shutil.rmtree(tmp, ignore_errors=True)
    # load_in_4bit stays as trained: `axolotl merge-lora` itself loads the base in 16 bits to merge into.
    cfg = {**stage.config, "output_dir": str(tmp)}
    cfg.setdefault("lora_model_dir", str(stage.output_dir))
    path = write_config(stage, cfg, stage.paths.merge_config if stage.kind != "merge" else stage.paths.config)
    try:
        run_logged(axolotl_cmd("merge-lora", str(path)), stage.paths.log, stage.name, env, quiet)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # interrupted or failed: no half-merged model is left behind
        raise
    made = tmp / MERGE_LORA_OUT
    if not (made / "config.json").is_file():
        raise TunebookError(f"stage '{stage.name}': merge-lora finished but wrote no model",
                            where=str(stage.paths.log), exit_code=1)
    # The merged folder gets the base's tokenizer files; the adapter's carry the chat template it was
    # trained with (e.g. without an injected system prompt) and the fixed EOS: serve with those.
    adapter = Path(cfg["lora_model_dir"])
    for name in TOKENIZER_FILES:
        if (adapter / name).is_file():
            shutil.copy2(adapter / name, made / name)
    shutil.rmtree(dest, ignore_errors=True)
    made.rename(dest)
    shutil.rmtree(tmp, ignore_errors=True)


def run_merge_stage(res: ResolvedRecipe, stage: ResolvedStage, quiet: bool = False) -> None:
    """A merge stage: the adapter of its upstream stage merged into the base model, at the stage's merged/."""
    say(f"{stage.name}: merging the adapter of stage {stage.upstream} into its base model")
    merge_adapter(stage, child_env(stage_env(res, stage)), quiet)
    say(f"{stage.name}: merged model at {stage.paths.merged}")


def run_training_stage(res: ResolvedRecipe, stage: ResolvedStage, quiet: bool = False) -> None:
    """A training stage (sft, dpo, orpo, kto): `axolotl train`, resumed from the last checkpoint when one is
    there; then the best epoch kept, and a merged copy made when a later stage starts from it."""
    env = child_env(stage_env(res, stage))
    ck = latest_checkpoint(stage.output_dir)
    if ck is not None:
        say(f"{stage.name}: resuming from {ck.name} (a previous run of this stage was interrupted)")
    else:
        say(f"{stage.name}: training ({stage.kind}, base {stage.config.get('base_model')})")
    cfg_path = write_config(stage, stage.config)
    run_logged(axolotl_cmd("train", str(cfg_path), *launcher_args(res.hardware)), stage.paths.log, stage.name,
               env, quiet)
    if output_hash(stage.output_dir) is None:
        raise TunebookError(f"stage '{stage.name}': Axolotl finished but saved no model in {stage.output_dir}",
                            where=str(stage.paths.log), exit_code=1)
    say(f"{stage.name}: adapter/model at {stage.output_dir}")
    after_training(res, stage)
    if needs_merged(res, stage):
        say(f"{stage.name}: merging for the next stage")
        merge_adapter(stage, env, quiet)


def keep_best_epoch(stage: ResolvedStage) -> dict | None:
    """With a validation split: put the epoch of lowest validation loss (trainlog.best_epoch) in place of the
    final save and record it in best_epoch.json; returns what was recorded (None without validation)."""
    best = trainlog.best_epoch(stage.output_dir) if stage.config.get("test_datasets") else None
    if not best:
        return None
    ck = stage.output_dir / best["checkpoint"]
    if ck != latest_checkpoint(stage.output_dir):
        # The final save is the last epoch's; put the chosen epoch's weights in its place.
        for f in ck.iterdir():
            if f.is_file() and f.name.startswith(("adapter_", "model")) and MODEL_FILES.search(f.name):
                shutil.copy2(f, stage.output_dir / f.name)
    atomic_write_text(stage.paths.best_epoch, json.dumps(best, indent=2) + "\n")
    return best


def report_early_stop(stage: ResolvedStage) -> dict | None:
    """Say how many epochs a stage that ran with the early-stopping rule trained and why it stopped (the record the
    plugin left, runner.early_stopping); None for a stage without the rule."""
    if not (stage.config or {}).get(es.CONFIG_KEY):
        return None
    rec = es.read_record(stage.paths.early_stop)
    if rec is None or not rec.get("finished"):
        # Axolotl skips a plugin it cannot import with only a printed error, and then ignores its settings.
        say(f"warning: {stage.name}: early stopping was on, but training left no final record at "
            f"{stage.paths.early_stop}: the plugin {es.AXOLOTL_PLUGIN} may not have loaded (see {stage.paths.log})")
        return None
    say(es.stop_message(stage.name, rec))
    return rec


def after_training(res: ResolvedRecipe, stage: ResolvedStage) -> None:
    """Report early stopping, record the chosen epoch, turn a PiSSA adapter into LoRA on the original base, and
    warn when most computed tokens were not trained."""
    report_early_stop(stage)
    best = keep_best_epoch(stage)
    if best:
        say(f"{stage.name}: kept epoch {best['epoch']:g} of {best['epochs_run']:g} "
            f"(validation loss {best['eval_loss']:.4f}, lowest {best['lowest_eval_loss']:.4f}; per epoch: "
            + ", ".join("nan" if x is None else f"{x:.3f}" for x in best["eval_loss_per_epoch"]) + ")")
    if stage.config.get("adapter") and pissa.trained_as_pissa(stage.output_dir):
        rank = pissa.convert(stage.output_dir, stage.paths.pissa_init)
        say(f"{stage.name}: PiSSA adapter converted to a rank-{rank} LoRA adapter on the original base model "
            "(merge, eval, serve and export use it as trained)")
    s = trainlog.summary(trainlog.history(stage.run_dir))
    share = s.get("trained_share")
    if share is not None:
        say(f"{stage.name}: {share:.0%} of the computed tokens were trained "
            f"({s['tokens_trainable']} of {s['tokens_total']})")
        if share < TRAINED_SHARE_WARN and stage.kind == "sft":
            cfg = stage.config
            why = []
            if not cfg.get("sample_packing"):
                why.append("padding: rows are padded to the longest in the batch (turn on "
                           "training.sample_packing)")
            if "chat_template_jinja" not in cfg and not res.data.get("system_prompt"):
                why.append("the chat template may inject a system prompt into every example")
            why.append("prompts are masked (only answers train); long prompts with short answers lower the share")
            say(f"warning: {stage.name}: only {share:.0%} of computed tokens were trained: " + "; ".join(why))
