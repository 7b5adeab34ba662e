"""`tunebook bench RECIPE [--vs naive]`: steady-state tokens/s, MFU and peak memory of a recipe's training stage
(runner/bench.py), written to benchmarks/results/ and shown as a table."""
from __future__ import annotations

import argparse
import io

from runner.cli.common import project_root
from runner.plan import bench as B


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="measure a recipe's training speed (tokens/s, MFU, peak memory), optionally against the "
                      "guide-style recipe",
        description="Run the recipe's first training stage for --warmup + --steps optimizer steps and measure the "
                    "steady state (the steps after warm-up). --vs naive also runs the guide-style configuration "
                    "(no packing, no Liger, paged 8-bit AdamW, micro batch 2 x accumulation 4, gradient "
                    "checkpointing) of the same model and data and reports the ratio. Writes "
                    "benchmarks/results/<date>-<gpu>-<recipe>.json. Meaningful on a GPU; on a CPU it checks the "
                    "plumbing.")
    p.add_argument("recipe", help="recipe name (recipes/NAME.yaml)")
    p.add_argument("--vs", choices=B.VARIANTS, help="also run this configuration and report the ratio")
    p.add_argument("--steps", type=int, default=B.DEFAULT_STEPS, metavar="N",
                   help=f"measured optimizer steps after warm-up (default {B.DEFAULT_STEPS})")
    p.add_argument("--warmup", type=int, default=B.DEFAULT_WARMUP, metavar="N",
                   help=f"warm-up steps left out of the measurement (default {B.DEFAULT_WARMUP}, at least 1)")
    p.add_argument("--gpu-label", metavar="ID",
                   help="GPU id for the result's name and peak FLOP/s (an id of recipes/presets/gpus.yaml; "
                        "default: detected, 'cpu' without a GPU)")
    g = p.add_argument_group("what to measure instead of the recipe as written (recorded in the result)")
    g.add_argument("--preset", metavar="NAME", help="use this preset instead of the recipe's")
    g.add_argument("--model", metavar="PATH_OR_ID", help="use this base model instead of the recipe's")
    g.add_argument("--seq", type=int, metavar="N", help="sequence length")
    g.add_argument("--micro-batch", type=int, metavar="N", help="micro batch size")
    g.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="set a raw Axolotl key in the recipe's config (and so in the naive one unless it "
                        "replaces it), e.g. --set torch_compile=true; `KEY=` removes a key; repeatable")
    g.add_argument("--synthetic-rows", type=int, metavar="N",
                   help="train on N generated rows of SFT-like lengths (~350 tokens median, up to ~2,000) instead "
                        "of the recipe's data: enough tokens for large packed batches, and the same rows "
                        "everywhere (runs under runs/RECIPE-synthetic/)")
    p.add_argument("--verbose", action="store_true", help="stream Axolotl's output (it is always logged)")
    p.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    root = project_root(args)
    opt = B.Options(steps=args.steps, warmup=args.warmup, vs=args.vs, gpu_label=args.gpu_label,
                    preset=args.preset, model=args.model, seq=args.seq, micro_batch=args.micro_batch,
                    set=B.parse_set(args.set), synthetic_rows=args.synthetic_rows, quiet=not args.verbose)
    result, path = B.bench(args.recipe, root, opt, argv=command(args))
    print(render(result, str(path.relative_to(root))), end="")
    return 0


def command(args) -> list[str]:
    """The command line as given (defaults spelled out), for the result file."""
    out = ["bench", args.recipe]
    if args.vs:
        out += ["--vs", args.vs]
    out += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    for flag, key in (("--gpu-label", "gpu_label"), ("--preset", "preset"), ("--model", "model"),
                      ("--seq", "seq"), ("--micro-batch", "micro_batch"),
                      ("--synthetic-rows", "synthetic_rows")):
        if getattr(args, key, None):
            out += [flag, str(getattr(args, key))]
    for item in args.set or []:
        out += ["--set", item]
    return out


def _num(v, fmt="{:,.0f}"):
    return "-" if v is None else fmt.format(v)


def render(result: dict, path: str) -> str:
    """The result as a table (rich), plus the ratio, the notes and the result's path."""
    from rich.console import Console
    from rich.table import Table

    buf = io.StringIO()
    con = Console(file=buf, width=130, no_color=True, highlight=False)
    gpu = result["gpu"]
    t = Table(title=f"tunebook bench {result['recipe']} on {gpu['name'] or gpu['label']} "
                    f"({result['steps']['warmup']} warm-up + {result['steps']['measured']} measured steps)",
              title_justify="left")
    for c in ("variant", "tokens/s", "trainable tok/s", "MFU (planner)", "MFU (4N)", "peak alloc GiB",
              "peak reserved GiB", "samples/s", "ratio"):
        t.add_column(c, justify="left" if c == "variant" else "right")
    ratio = result.get("ratio") or {}
    for name, v in result["variants"].items():
        if "error" in v:
            t.add_row(name, "failed", "", "", "", "", "", "", "")
            continue
        mem = v.get("memory") or {}
        mfu = v.get("mfu") or {}
        r = "1.00x" if name == "naive" else (f"{ratio['tokens_per_s']:.2f}x" if ratio.get("tokens_per_s") else "-")
        t.add_row(name, _num(v["tokens_per_s"], "{:,.1f}" if v["tokens_per_s"] < 100 else "{:,.0f}"),
                  _num(v["trainable_tokens_per_s"], "{:,.1f}" if v["trainable_tokens_per_s"] < 100 else "{:,.0f}"),
                  _num(mfu.get("planner"), "{:.1%}"), _num(mfu.get("params"), "{:.1%}"),
                  _num(mem.get("peak_allocated_gib"), "{:.2f}"), _num(mem.get("peak_reserved_gib"), "{:.2f}"),
                  _num(v.get("samples_per_s"), "{:.3g}"), r)
    con.print(t)
    if ratio:
        con.print(f"ratio recipe/naive: {ratio['tokens_per_s']:.2f}x total tokens/s, "
                  f"{ratio['trainable_tokens_per_s']:.2f}x trainable tokens/s", markup=False)
    rec = result["variants"].get("recipe", {})
    why = (rec.get("mfu") or {}).get("why_null")
    if why:
        con.print(f"MFU: none ({why})", markup=False)
    if not rec.get("memory"):
        con.print("memory: none (no CUDA: Axolotl reports GPU memory only)", markup=False)
    for n in result.get("notes") or []:
        con.print(f"note: {n}", markup=False)
    for name, v in result["variants"].items():
        for c in v.get("changes") or []:
            con.print(f"{name}: {c}", markup=False)
    con.print(f"result: {path}", markup=False)
    return buf.getvalue()
