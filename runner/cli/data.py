"""`tunebook data check RECIPE` and `tunebook data preview RECIPE [-n N] [--stage NAME]`."""
from __future__ import annotations

import sys

from runner.cli.common import resolved_recipe
from runner.console import terminal_reporter
from runner.data import prepare as dataprep
from runner.data.check import MAX_SHOWN, NORMALIZE_FIXES, PROBLEM_KINDS
from runner.data.preview import build_preview, render
from runner.pipeline.lock import run_lock


def _resolve(args):
    """The recipe, resolved (tokenizers come from the local cache only: runner.data.tokens)."""
    return resolved_recipe(args)


def _fmt(n) -> str:
    return f"{n:,}" if isinstance(n, int) else str(n)


def summary_table(dc):
    """The end-of-check table: one column per data block."""
    from rich.table import Table

    t = Table(title=f"data check: {dc.res.recipe.name}", title_justify="left")
    t.add_column("", style="bold")
    names = list(dc.blocks)
    for n in names:
        t.add_column(f"{n} ({dc.blocks[n].result.format})", justify="right")

    def row(label, fn, style=None):
        t.add_row(label, *[fn(dc.blocks[n]) for n in names], style=style)

    def c(key):
        return lambda b: _fmt(b.result.counts().get(key, 0))

    def tok(key):
        def f(b):
            tk = b.tokens or {}
            return _fmt(tk[key]) if key in tk and tk[key] is not None else "—"
        return f

    row("rows in (all files)", c("rows_in"))
    row("invalid", lambda b: (f"[red]{b.result.invalid_rows}[/]" if b.result.failed else
                              (f"{b.result.invalid_rows} dropped" if b.result.invalid_rows else "0")))
    row("changed by normalisation", c("normalized"))
    row("exact duplicates removed", c("exact_duplicates"))
    row("near duplicates removed", c("near_duplicates"))
    row("held-out leaks removed", c("held_out_leaks"))
    row("train rows", c("train"))
    row("validation rows", lambda b: _fmt(b.result.counts().get("validation", 0)))
    row("held-out rows", lambda b: (f"{len(b.result.splits['held_out'])} "
                                    f"({'file' if b.result.split_info.get('held_out', {}).get('source') != 'split' else 'split'})"
                                    if "held_out" in b.result.splits else "—"))
    row("mixed in", lambda b: (", ".join(f"{v:.0%}" for k, v in b.result.mix["proportions"].items() if k != "main")
                               if b.result.mix else "—"))
    row("rows out", c("rows_out"))
    row("tokens p50 / p95 / max", lambda b: (f"{b.tokens['p50']} / {b.tokens['p95']} / {b.tokens['max']}"
                                             if b.tokens and "max" in b.tokens else "—"))
    row("sequence_len", tok("sequence_len"))
    row("over sequence_len", lambda b: (f"[red]{b.tokens['over_sequence_len']}[/]" if b.tokens and
                                        b.tokens.get("over_sequence_len") else tok("over_sequence_len")(b)))
    row("suggested sequence_len", tok("suggested_sequence_len"))
    row("tokens per epoch", tok("tokens_per_epoch"))
    row("status", lambda b: "[red]FAIL[/]" if b.result.failed else "[green]ok[/]")
    return t


def print_details(dc, con) -> None:
    """Problems, normalisation, duplicates, token lengths, notes: the first few of each."""
    for name, bc in dc.blocks.items():
        br = bc.result
        head = f"[bold]{name}[/]"
        if br.problems:
            probs = sorted(br.problems, key=lambda p: (p.src, p.line))
            by_kind: dict[str, int] = {}
            for p in probs:
                by_kind[p.kind] = by_kind.get(p.kind, 0) + 1
            kinds = ", ".join(f"{n} {PROBLEM_KINDS.get(k, k)}" for k, n in by_kind.items())
            verb = "stop the run (on_error: fail)" if br.failed else "dropped (on_error: drop)"
            con.print(f"{head}: [red]{len(probs)} problem(s)[/] in {br.invalid_rows} row(s), {verb}: {kinds}")
            for p in probs[:MAX_SHOWN]:
                con.print(f"  {p.where}: [bold]{p.field or '(row)'}[/]: {p.message}", highlight=False)
            if len(probs) > MAX_SHOWN:
                con.print(f"  ... and {len(probs) - MAX_SHOWN} more (all in report.json)")
        if br.norm.rows_changed:
            fixes = ", ".join(f"{NORMALIZE_FIXES[k]} {v}" for k, v in br.norm.by_fix.items() if v)
            con.print(f"{head}: normalised {br.norm.rows_changed} row(s) ({fixes}); e.g. "
                      + "; ".join(f"{NORMALIZE_FIXES[k]}: {', '.join(v[:3])}" for k, v in br.norm.examples.items()
                                  if v), highlight=False)
        dd = br.dedup
        if dd:
            for label, clusters in (("exact duplicates", dd.exact), ("near duplicates", dd.near),
                                    ("held-out leaks (train rows copying a held-out row, dropped)", dd.leaks)):
                if clusters:
                    con.print(f"{head}: {label}: {len(clusters)} cluster(s); first kept, the rest dropped:")
                    for cl in clusters[:5]:
                        sim = f" (similarity {cl['similarity']:.2f})" if "similarity" in cl else ""
                        con.print(f"  {' = '.join(cl['rows'][:6])}{' ...' if len(cl['rows']) > 6 else ''}{sim}",
                                  highlight=False)
                    if len(clusters) > 5:
                        con.print(f"  ... and {len(clusters) - 5} more (in report.json)")
        t = bc.tokens or {}
        if "max" in t:
            colour = "yellow" if t["over_sequence_len"] else "green"
            con.print(f"{head}: tokens ({t['tokenizer']}, {t['chat_template']} chat template): "
                      f"[{colour}]{t['advice']}[/]", highlight=False)
            for w in t["over_rows"][:MAX_SHOWN]:
                con.print(f"  over sequence_len: {w}", highlight=False)
        elif t.get("skipped"):
            con.print(f"{head}: {t['skipped']}")
        if br.mix:
            props = ", ".join(f"{k} {v:.1%}" for k, v in br.mix["proportions"].items())
            con.print(f"{head}: final proportions: {props}", highlight=False)
        for note in br.notes:
            con.print(f"{head}: note: {note}", highlight=False)


def cmd_check(args) -> int:
    from rich.console import Console

    res = _resolve(args)
    con = Console()
    # It writes runs/<recipe>/data/, which a `tunebook train` of the recipe reads and hashes: not beside one.
    with run_lock(res.layout, "data check"):
        dc = dataprep.run_checks(res, tokens=not args.no_tokens, reporter=terminal_reporter())
    con.print(summary_table(dc))
    print_details(dc, con)
    root = res.recipe.root
    rp = dc.report_path.relative_to(root) if dc.report_path.is_relative_to(root) else dc.report_path
    con.print(f"report: {rp}", highlight=False)
    if dc.failed:
        n = sum(b.result.invalid_rows for b in dc.blocks.values() if b.result.failed)
        print(f"error: {n} invalid row(s) in the data of {res.recipe.name} (on_error: fail); fix them or set "
              "`on_error: drop` in the data block", file=sys.stderr)
        return 2
    for name, bc in dc.blocks.items():
        if bc.prepared:
            d = bc.prepared.dir
            con.print(f"{name}: prepared files in {d.relative_to(root) if d.is_relative_to(root) else d}",
                      highlight=False)
    return 0


def cmd_preview(args) -> int:
    from rich.console import Console

    res = _resolve(args)
    pv = build_preview(res, n=args.n, stage_name=args.stage)
    con = Console()
    render(pv, con, markers=True if args.markers else None)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="check data (lint, normalise, dedup, split, token lengths) or "
                                           "preview examples as they are trained")
    sub = p.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    c = sub.add_parser("check", help="validate rows, normalise, dedup, split, measure token lengths; "
                                     "writes runs/<recipe>/data/ and report.json")
    c.add_argument("recipe", help="recipe name (a file recipes/<name>.yaml)")
    c.add_argument("--no-tokens", action="store_true", help="skip token lengths (no tokenizer is loaded)")
    c.set_defaults(func=cmd_check)
    v = sub.add_parser("preview", help="print training examples exactly as the model is trained on them "
                                       "(trained tokens bold green, masked dim)")
    v.add_argument("recipe", help="recipe name (a file recipes/<name>.yaml)")
    v.add_argument("-n", type=int, default=5, help="number of examples (default 5)")
    v.add_argument("--stage", help="training stage to preview (default: the first sft stage)")
    v.add_argument("--markers", action="store_true",
                   help="mark trained text with ⟦ ⟧ even on a colour terminal")
    v.set_defaults(func=cmd_preview)
