"""The mergekit stage of a merge recipe: check that every source is trained, write the mergekit YAML
(runner.merge.config), run `mergekit-yaml` into a temp folder, and rename the finished model to the stage's
`merged/` (never a half-written model).

Writes into the stage folder (runs/<recipe>/<stage>/, see runner.layout): mergekit.yaml, train.log (mergekit's
output), merged/ (the merged model with the first source's tokenizer files: its trained chat template and EOS).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import yaml

from runner.console import say
from runner.errors import TunebookError
from runner.fsutil import atomic_write_text
from runner.merge.config import mergekit_config, source_model_dir, source_reference
from runner.merge.inputs import source_fingerprint
from runner.pipeline.lock import refuse_if_gate_failed
from runner.recipe.shipped import has_model
from runner.train.axolotl import child_env, run_logged, venv_bin
from runner.train.stage import TOKENIZER_FILES

# DARE drops a random share of each task vector: one seed makes the same recipe give the same model.
SEED = 0
# Besides the tokenizer files: the source's generation_config carries the stop token training fixed.
TAGALONG = ("generation_config.json",)


def mergekit_exe() -> str:
    """`mergekit-yaml` of this venv (mergekit is in the training extras of pyproject.toml)."""
    exe = venv_bin() / "mergekit-yaml"
    if not exe.exists():
        raise TunebookError("mergekit is not installed in this environment (no mergekit-yaml next to "
                            f"{venv_bin() / 'python'})",
                            fix="Run `make venv` (mergekit 0.1.5 is one of the training extras), or "
                                "`pip install mergekit==0.1.5` into this venv.")
    return str(exe)


def check_sources(res) -> None:
    """Refuse to merge a source that is not trained (or whose gate failed), at its line in `merge.sources`."""
    rec = res.recipe
    for src in res.merge.sources:
        where = rec.where("merge", "sources", src.index, "recipe")
        train_first = (f"Train it first: make train RECIPE={src.name} (or `tunebook train {src.name}`), then run "
                       f"this merge again.")
        refuse_if_gate_failed(src.res.run_root, src.name, f"merge {rec.name} from")
        missing = [k.split("/", 1)[1] for k, v in source_fingerprint(src).items() if v is None]
        if missing:
            raise TunebookError(f"source '{src.name}' has no trained model yet: its stage(s) {', '.join(missing)} "
                                f"have not finished (runs/{src.name}/tunebook.lock)", where=where, fix=train_first)
        ref = source_reference(src)
        folders = [Path(p) for p in ref.split("+")]
        whole = len(folders) == 1
        if (whole and not has_model(folders[0])) or (not whole and not (folders[1] / "adapter_config.json").is_file()):
            raise TunebookError(f"source '{src.name}' has no model at {folders[-1]} although its lock records one "
                                "(the folder was removed or moved)", where=where, fix=train_first)


def write_mergekit_config(stage, cfg: dict) -> Path:
    path = stage.paths.mergekit_config
    header = (f"# Written by tunebook for stage '{stage.name}' (mergekit). Do not edit: change the recipe's merge: "
              "block.\n# Run by: mergekit-yaml mergekit.yaml <out> (see train.log for the exact command).\n")
    atomic_write_text(path, header + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True, width=120))
    return path


def run_mergekit_stage(res, stage, quiet: bool = False) -> None:
    """Merge the sources' models into the stage's merged/ with mergekit."""
    check_sources(res)
    plan = res.merge
    cfg = mergekit_config(plan)
    cfg_path = write_mergekit_config(stage, cfg)
    tmp, out, dest = stage.paths.merge_tmp, stage.paths.mergekit_out, stage.paths.merged
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cmd = [mergekit_exe(), str(cfg_path), str(out), "--random-seed", str(SEED),
           "--lora-merge-cache", str(stage.paths.lora_merge_cache), "--quiet"]
    if res.hardware.cuda:
        cmd.append("--cuda")
    names = ", ".join(f"{s.name}" for s in plan.sources)
    say(f"{stage.name}: merging {names} with mergekit ({plan.method})")
    t0 = time.time()
    try:
        run_logged(cmd, stage.paths.log, stage.name, child_env(), quiet=True, tool="mergekit")
        if not has_model(out):
            raise TunebookError(f"stage '{stage.name}': mergekit finished but wrote no model",
                                where=str(stage.paths.log), exit_code=1)
        # The merged model speaks the way the sources were trained to: the first source's tokenizer files carry
        # the chat template and end-of-turn EOS training used (mergekit copies its base model's otherwise).
        donor = source_model_dir(plan.sources[0])
        for name in (*TOKENIZER_FILES, *TAGALONG):
            if (donor / name).is_file():
                shutil.copy2(donor / name, out / name)
        shutil.rmtree(dest, ignore_errors=True)
        out.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # failed or interrupted: no half-merged model is left behind
    say(f"{stage.name}: merged model at {dest} ({time.time() - t0:.0f} s)")
