"""`tunebook eval RECIPE` (run only the eval stage on the trained model) and `tunebook report RECIPE`."""
from __future__ import annotations

import json
import os

from runner.cli.common import resolved_recipe
from runner.errors import TunebookError
from runner.evaluate.served import eval_served, print_comparison
from runner.pipeline.report import report_for
from runner.pipeline.run import Pipeline


def _eval_stage(res, name: str | None):
    evals = [s for s in res.stages if s.kind == "eval"]
    if name:
        st = next((s for s in res.stages if s.name == name), None)
        if st is None or st.kind != "eval":
            raise TunebookError(f"recipe {res.recipe.name} has no eval stage named '{name}'",
                                fix=f"Its eval stages: {', '.join(s.name for s in evals) or 'none'}.")
        return st
    if not evals:
        raise TunebookError(f"recipe {res.recipe.name} has no eval stage", where=res.recipe.where("stages"),
                            fix="Add one after the training stage, e.g. stages: [sft, eval, merge], and set "
                                "eval: {metrics: [...], gates: {...}}.")
    return evals[0]


def cmd_eval(args) -> int:
    res = resolved_recipe(args)
    st = _eval_stage(res, args.stage)
    if args.server:
        result = eval_served(res, st, args.server, args.model)
        print_comparison(res, result, st.paths.serve_eval)
        return 0
    if args.model:
        raise TunebookError("--model names a served model: it goes with --server URL",
                            fix=f"`tunebook eval {res.recipe.name} --server http://127.0.0.1:8000 --model NAME`.")
    pipe = Pipeline(res)
    status = {name: (state, why) for name, state, why in pipe.status()}
    up = st.upstream
    if up and status.get(up, ("not run",))[0] != "done":
        state, why = status[up]
        raise TunebookError(
            f"stage '{up}' of {res.recipe.name} is {state}{f' ({why})' if why else ''}: there is no up-to-date "
            "fine-tuned model to evaluate",
            fix=f"Run `make train RECIPE={res.recipe.name}` (or `tunebook train {res.recipe.name} --until {up}`) first.")
    # Through the pipeline, so the lock and manifest record the eval like any other stage; stages before it are
    # done (and skipped), except a merge stage that was never run, which the eval may then use.
    force = {st.name} if args.force else set()
    Pipeline(res, force=force, until=st.name, quiet=args.quiet).run()
    print_metrics(res, st)
    return 0


def print_metrics(res, st) -> None:
    f = st.paths.metrics
    if not f.is_file():
        return
    m = json.loads(f.read_text())
    rel = lambda p: os.path.relpath(p, res.recipe.root)
    base = m.get("base") or {}
    print(f"{st.name}: {m['held_out']['rows']} held-out rows; base -> fine-tuned")
    for k, v in m["tuned"].items():
        b = base.get(k)
        print(f"  {k:<12} {'   –  ' if b is None else f'{b:6.3f}'} -> {v:6.3f}")
    for t, r in ((m.get("forgetting") or {}).get("tasks") or {}).items():
        print(f"  {t} ({r['metric']}, points): {r['base']:.1f} -> {r['tuned']:.1f}"
              + (f" (allowed drop {r['max_drop']:g})" if r.get("max_drop") is not None else ""))
    print(f"  gates: {'passed' if m.get('passed') else 'FAILED'} ({len(m.get('gates', []))} checked)")
    print(f"metrics at {rel(f)}, predictions at {rel(st.paths.predictions)}, "
          f"report at {rel(res.layout.report)}")


def cmd_report(args) -> int:
    res = resolved_recipe(args)
    if not res.run_root.is_dir():
        raise TunebookError(f"no runs of {res.recipe.name} yet ({res.run_root} does not exist)",
                            fix=f"Run `make train RECIPE={res.recipe.name}` first.")
    path = report_for(res)
    print(f"report at {os.path.relpath(path, res.recipe.root)} (plots in "
          f"{os.path.relpath(res.layout.plots, res.recipe.root)}/)")
    return 0


def register(sub) -> None:
    sp = sub.add_parser("eval", help="evaluate the trained model on held-out data and benchmarks (the eval stage)")
    sp.add_argument("recipe", help="recipe name (a file recipes/<name>.yaml)")
    sp.add_argument("--stage", help="which eval stage (default: the first)")
    sp.add_argument("--force", action="store_true", help="re-evaluate even if the results are up to date")
    sp.add_argument("--quiet", action="store_true")
    sp.add_argument("--server", metavar="URL", help="ask a running server (`tunebook serve`) the held-out set instead "
                                                    "and compare its scores with the eval stage's")
    sp.add_argument("--model", help="with --server: the served model to ask (default: the recipe's name)")
    sp.set_defaults(func=cmd_eval)
    sp = sub.add_parser("report", help="regenerate runs/<recipe>/report.md and its plots from the logs")
    sp.add_argument("recipe", help="recipe name (a file recipes/<name>.yaml)")
    sp.set_defaults(func=cmd_report)
