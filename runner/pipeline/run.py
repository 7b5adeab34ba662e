"""Run a resolved recipe stage by stage: data → Axolotl train / merge-lora → eval, with a lock file so that
only stages whose inputs changed run again, and resume from checkpoints after a crash."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import yaml

from runner.data import prepare as dataprep
from runner.pipeline import lock as lk
from runner.train.axolotl import axolotl_cmd, child_env, launcher_args, run_logged
from runner.errors import TunebookError
from runner.fsutil import atomic_write_text, sha256_file, sha256_json
from runner.pipeline.manifest import Manifest
from runner.recipe.resolve import ResolvedRecipe, ResolvedStage, needs_merged
from runner.console import say

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                   "tokenizer.model")
TRAINED_SHARE_WARN = 0.25
MODEL_FILES = re.compile(r"\.(safetensors|json|bin|model|jinja|txt)$")



def output_hash(path: Path) -> str | None:
    """Hash of a model/adapter folder's top-level files (checkpoints and caches excluded)."""
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


def stage_outputs(stage: ResolvedStage) -> dict[str, Path]:
    """The folders a finished stage leaves behind."""
    if stage.kind == "merge":
        return {"merged": stage.run_dir / "merged"}
    if stage.kind == "eval":
        return {"eval": stage.run_dir}
    outs = {"output": stage.output_dir}
    if (stage.run_dir / "merged").exists():
        outs["merged"] = stage.run_dir / "merged"
    return outs


def outputs_hash(stage: ResolvedStage) -> str | None:
    if stage.kind == "eval":
        f = stage.run_dir / "metrics.json"
        return sha256_file(f) if f.is_file() else None
    hashes = {k: output_hash(p) for k, p in stage_outputs(stage).items()}
    return None if any(v is None for v in hashes.values()) else sha256_json(hashes)


def latest_checkpoint(output_dir: Path) -> Path | None:
    from runner.train.trainlog import checkpoints

    cks = checkpoints(output_dir)
    return cks[-1] if cks else None


def write_config(stage: ResolvedStage, config: dict, name: str = "axolotl.yaml") -> Path:
    path = stage.run_dir / name
    header = (f"# Written by tunebook for stage '{stage.name}' ({stage.kind}). Do not edit: change the recipe.\n"
              f"# `tunebook resolve <recipe>` shows where every key came from.\n")
    atomic_write_text(path, header + yaml.safe_dump(config, sort_keys=True, allow_unicode=True, width=120))
    return path


def merge_adapter(stage: ResolvedStage, config: dict, dest: Path, env: dict, quiet: bool) -> None:
    """axolotl merge-lora into a temp folder, then one rename to `dest` (never a half-written model)."""
    tmp = dest.parent / f".{dest.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    # load_in_4bit stays as trained: `axolotl merge-lora` itself loads the base in 16 bits to merge into.
    cfg = {**config, "output_dir": str(tmp)}
    cfg.setdefault("lora_model_dir", str(stage.output_dir))
    path = write_config(stage, cfg, "merge.yaml" if stage.kind != "merge" else "axolotl.yaml")
    run_logged(axolotl_cmd("merge-lora", str(path)), stage.run_dir / "train.log", stage.name, env, quiet)
    if not (tmp / "merged" / "config.json").is_file():
        raise TunebookError(f"stage '{stage.name}': merge-lora finished but wrote no model",
                            where=str(stage.run_dir / "train.log"), exit_code=1)
    # The merged folder gets the base's tokenizer files; the adapter's carry the chat template it was
    # trained with (e.g. without an injected system prompt) and the fixed EOS: serve with those.
    adapter = Path(cfg["lora_model_dir"])
    for name in TOKENIZER_FILES:
        if (adapter / name).is_file():
            shutil.copy2(adapter / name, tmp / "merged" / name)
    shutil.rmtree(dest, ignore_errors=True)
    (tmp / "merged").rename(dest)
    shutil.rmtree(tmp, ignore_errors=True)


class Pipeline:
    """Executes a resolved recipe. `force` re-runs named stages; `until` stops after a stage."""

    def __init__(self, res: ResolvedRecipe, force: set[str] | None = None, until: str | None = None,
                 quiet: bool = False):
        self.res, self.force, self.until, self.quiet = res, set(force or ()), until, quiet
        self.lock_path = res.run_root / "tunebook.lock"
        names = [s.name for s in res.stages]
        for f in self.force | ({until} if until else set()):
            if f not in names:
                raise TunebookError(f"recipe {res.recipe.name} has no stage '{f}'",
                                    fix=f"Its stages are: {', '.join(names)}.")

    def stage_inputs(self, stage: ResolvedStage, sources, upstream_hashes) -> lk.StageInputs:
        data = {}
        if stage.data_block and stage.data_block in sources and stage.kind != "merge":
            data = {f"{stage.data_block}:{k}": v for k, v in sources[stage.data_block].items()}
        ups = {stage.upstream: upstream_hashes.get(stage.upstream)} if stage.upstream else {}
        config = stage.config if stage.config is not None else {
            "eval": self.res.data.get("eval", {}), "system_prompt": self.res.data.get("system_prompt")}
        return lk.StageInputs(config=config, data=data, upstream=ups, versions=lk.package_versions(),
                             root=str(self.res.recipe.root))

    def status(self) -> list[tuple[str, str, str]]:
        """(stage, done|stale|not run, why) for every stage, without running anything."""
        blocks = dataprep.source_hashes(self.res)
        lock = lk.read_lock(self.lock_path)
        out, ups, stale_up = [], {}, None
        for st in self.res.stages:
            entry = lock["stages"].get(st.name)
            cur = self.stage_inputs(st, blocks, ups).to_dict()
            if not entry:
                out.append((st.name, "not run", ""))
                stale_up = stale_up or st.name
            elif entry.get("gate") == "failed":
                gates = "; ".join(entry.get("failed_gates") or [])
                out.append((st.name, "gate failed", gates or "an evaluation gate failed"))
                stale_up = stale_up or st.name
            elif stale_up and st.upstream:
                out.append((st.name, "stale", f"upstream stage {stale_up} will re-run"))
            elif entry.get("input_hash") != sha256_json(cur):
                out.append((st.name, "stale", "; ".join(lk.why_stale(entry, cur))))
                stale_up = stale_up or st.name
            elif outputs_hash(st) != entry.get("output_hash"):
                out.append((st.name, "stale", "its outputs are missing or were modified"))
                stale_up = stale_up or st.name
            else:
                out.append((st.name, "done", entry.get("finished", "")))
            ups[st.name] = entry.get("output_hash") if entry else None
        return out

    def run(self) -> dict:
        res = self.res
        res.run_root.mkdir(parents=True, exist_ok=True)
        for note in res.notes:
            say(note)
        blocks = dataprep.prepare(res)
        sources = dataprep.source_hashes(res)
        lock = lk.read_lock(self.lock_path)
        manifest = Manifest.open(res)
        manifest.record_data(blocks)
        upstream_hashes: dict[str, str | None] = {}
        ran, skipped = [], []
        for st in res.stages:
            inputs = self.stage_inputs(st, sources, upstream_hashes)
            ih = inputs.hash
            entry = lock["stages"].get(st.name)
            up_to_date = (entry and entry.get("input_hash") == ih and st.name not in self.force
                          and entry.get("output_hash") and outputs_hash(st) == entry["output_hash"])
            if up_to_date:
                skipped.append(st.name)
                upstream_hashes[st.name] = entry["output_hash"]
                say(f"{st.name}: up to date (inputs unchanged since {entry.get('finished', '?')})")
            else:
                if entry and entry.get("gate") == "failed" and entry.get("input_hash") == ih:
                    say(f"{st.name}: re-evaluating: its gate failed last time")
                elif entry and st.name not in self.force:
                    say(f"{st.name}: re-running because " + "; ".join(lk.why_stale(entry, inputs.to_dict())))
                started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
                t0 = time.time()
                try:
                    self.run_stage(st, ih)
                except TunebookError as exc:
                    if getattr(exc, "gate_failed", False):
                        # The lock says why the pipeline stopped here; the next run re-evaluates.
                        lock["stages"][st.name] = {"kind": st.kind, "input_hash": ih, "gate": "failed",
                                                   "inputs": inputs.to_dict(), "started": started,
                                                   "failed_gates": getattr(exc, "failed", []),
                                                   "finished": dt.datetime.now(dt.timezone.utc).isoformat(
                                                       timespec="seconds")}
                        lk.write_lock(self.lock_path, lock)
                        manifest.record_stage(st, started, lock["stages"][st.name]["finished"], time.time() - t0)
                        manifest.finish()
                    raise
                oh = outputs_hash(st)
                if oh is None:
                    raise TunebookError(f"stage '{st.name}' finished but its outputs are incomplete",
                                        where=str(st.run_dir), exit_code=1)
                finished = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
                lock["stages"][st.name] = {"kind": st.kind, "input_hash": ih, "inputs": inputs.to_dict(),
                                           "output_hash": oh, "outputs": {k: str(p.relative_to(res.run_root))
                                                                          for k, p in stage_outputs(st).items()},
                                           "started": started, "finished": finished}
                lk.write_lock(self.lock_path, lock)
                manifest.record_stage(st, started, finished, time.time() - t0)
                upstream_hashes[st.name] = oh
                ran.append(st.name)
            if st.name == self.until:
                break
        manifest.finish()
        if not ran:
            say(f"nothing to do: every stage of {res.recipe.name} is up to date")
        return {"ran": ran, "skipped": skipped}

    def run_stage(self, st: ResolvedStage, input_hash: str) -> None:
        marker = st.run_dir / "inputs.hash"
        if marker.is_file() and marker.read_text().strip() != input_hash:
            # Old checkpoints were made from other inputs: resuming from them would mix two runs.
            say(f"{st.name}: inputs changed since the last attempt; starting fresh")
            for sub in ("output", "merged", "prepared", ".merged.tmp"):
                shutil.rmtree(st.run_dir / sub, ignore_errors=True)
        st.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(marker, input_hash + "\n")
        env = child_env(self.stage_env(st))
        if st.kind == "eval":
            from runner.evaluate.stage import run_eval_stage

            run_eval_stage(self.res, st, quiet=self.quiet)
            return
        if st.kind == "merge":
            say(f"{st.name}: merging the adapter of stage {st.upstream} into its base model")
            merge_adapter(st, st.config, st.run_dir / "merged", env, self.quiet)
            say(f"{st.name}: merged model at {st.run_dir / 'merged'}")
            return
        ck = latest_checkpoint(st.output_dir)
        if ck is not None:
            say(f"{st.name}: resuming from {ck.name} (a previous run of this stage was interrupted)")
        else:
            say(f"{st.name}: training ({st.kind}, base {st.config.get('base_model')})")
        cfg_path = write_config(st, st.config)
        run_logged(axolotl_cmd("train", str(cfg_path), *launcher_args(self.res.hardware)),
                   st.run_dir / "train.log", st.name, env, self.quiet)
        if output_hash(st.output_dir) is None:
            raise TunebookError(f"stage '{st.name}': Axolotl finished but saved no model in {st.output_dir}",
                                where=str(st.run_dir / "train.log"), exit_code=1)
        say(f"{st.name}: adapter/model at {st.output_dir}")
        self.after_training(st)
        if needs_merged(self.res, st):
            say(f"{st.name}: merging for the next stage")
            merge_adapter(st, st.config, st.run_dir / "merged", env, self.quiet)

    def after_training(self, st: ResolvedStage) -> None:
        """Record the chosen epoch and warn when most computed tokens were not trained."""
        from runner.train import trainlog

        best = trainlog.best_epoch(st.output_dir) if st.config.get("test_datasets") else None
        if best:
            ck = st.output_dir / best["checkpoint"]
            if ck != latest_checkpoint(st.output_dir):
                # The final save is the last epoch's; put the chosen epoch's weights in its place.
                for f in ck.iterdir():
                    if f.is_file() and f.name.startswith(("adapter_", "model")) and MODEL_FILES.search(f.name):
                        shutil.copy2(f, st.output_dir / f.name)
            atomic_write_text(st.run_dir / "best_epoch.json", json.dumps(best, indent=2) + "\n")
            say(f"{st.name}: kept epoch {best['epoch']:g} of {best['epochs_run']:g} "
                f"(validation loss {best['eval_loss']:.4f}, lowest {best['lowest_eval_loss']:.4f}; per epoch: "
                + ", ".join(f"{x:.3f}" for x in best["eval_loss_per_epoch"]) + ")")
        s = trainlog.summary(trainlog.history(st.run_dir))
        share = s.get("trained_share")
        if share is not None:
            say(f"{st.name}: {share:.0%} of the computed tokens were trained "
                f"({s['tokens_trainable']} of {s['tokens_total']})")
            if share < TRAINED_SHARE_WARN and st.kind == "sft":
                cfg = st.config
                why = []
                if not cfg.get("sample_packing"):
                    why.append("padding: rows are padded to the longest in the batch (turn on "
                               "training.sample_packing)")
                if "chat_template_jinja" not in cfg and not self.res.data.get("system_prompt"):
                    why.append("the chat template may inject a system prompt into every example")
                why.append("prompts are masked (only answers train); long prompts with short answers lower the share")
                say(f"warning: {st.name}: only {share:.0%} of computed tokens were trained: " + "; ".join(why))

    def stage_env(self, st: ResolvedStage) -> dict:
        tracking = self.res.data.get("tracking", "none")
        if tracking == "wandb":
            return {"WANDB_RUN_GROUP": self.res.recipe.name, "WANDB_JOB_TYPE": st.name,
                    "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"),
                    "WANDB_DIR": str(self.res.run_root)}
        return {"WANDB_MODE": "disabled"} if tracking == "none" else {}
