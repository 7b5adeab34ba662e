"""`tunebook plan`: will a recipe (or a bare model + flags) fit, how long will it take, what will it cost.

Two forms: `tunebook plan RECIPE` plans the recipe's first training stage from its resolved Axolotl config;
`tunebook plan --model PATH_OR_ID --method ... --seq ...` plans any configuration, e.g. to check a
measurement against the model. Both are offline and print tables, or JSON with --json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from runner.cli.common import loaded_recipe
from runner.errors import TunebookError
from runner.plan import estimate as P
from runner.plan import target as T


def register(subparsers) -> None:
    """Add the `plan` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "plan", help="estimate peak GPU memory, time and cost before renting a GPU",
        description="Estimate peak GPU memory (with its breakdown), a verdict per GPU, training time and "
                    "cost, offline. Give a recipe, or --model with flags describing the run.")
    p.add_argument("recipe", nargs="?", help="recipe name (recipes/NAME.yaml)")
    p.add_argument("--gpu", action="extend", nargs="+", metavar="ID",
                   help="GPU id(s) to plan for: " + ", ".join(P.load_gpus()) + " (default: the preset's GPU "
                        "plus a comparison over all)")
    p.add_argument("--gpus", type=int, metavar="N", help="GPUs per run (default: the preset's count, or 1)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--tokens", type=int, metavar="N", help="training tokens per epoch (overrides the data)")
    p.add_argument("--epochs", type=float, metavar="N", help="epochs (default: the config's num_epochs, or 1)")
    p.add_argument("--max-row-tokens", type=int, metavar="N",
                   help="without packing: the longest row, which sets the padded batch length "
                        "(default: the sequence length, the worst case)")
    g = p.add_argument_group("bare model form (instead of a recipe)")
    g.add_argument("--model", metavar="PATH_OR_ID", help="model folder, config.json, or hub id")
    g.add_argument("--method", choices=("full", "lora", "qlora"), default="lora")
    g.add_argument("--seq", type=int, default=2048, help="sequence length")
    g.add_argument("--micro-batch", type=int, default=1)
    g.add_argument("--grad-accum", type=int, default=1)
    g.add_argument("--packing", action="store_true", help="sample packing")
    g.add_argument("--liger", action="store_true",
                   help="Liger rope/rms_norm/glu and fused linear cross entropy")
    g.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing")
    g.add_argument("--lora-r", type=int, default=16)
    g.add_argument("--targets", default="all-linear", help="all-linear, or comma-separated module names")
    g.add_argument("--lora-dropout", type=float, default=0.0)
    g.add_argument("--no-lora-kernels", action="store_true",
                   help="Axolotl's fused LoRA kernels off (they are on by default for lora/qlora)")
    g.add_argument("--optimizer", default="adamw_torch_fused")
    g.add_argument("--zero", type=int, choices=(0, 2, 3), default=0, help="DeepSpeed ZeRO stage")
    g.add_argument("--offload", action="store_true", help="ZeRO CPU offload (optimizer; and params at stage 3)")
    g.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    p.set_defaults(func=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    """Build the plan the arguments describe and print it (tables, or JSON with --json)."""
    if bool(args.recipe) == bool(args.model):
        raise TunebookError("give either a recipe or --model, not both" if args.recipe else
                            "nothing to plan", fix="Run `tunebook plan RECIPE` or `tunebook plan --model "
                                                   "path/to/model --method qlora --seq 2048 ...`.")
    if args.recipe:
        plan = T.recipe_plan(loaded_recipe(args), args.gpu, args.gpus, tokens=args.tokens, epochs=args.epochs,
                             max_row_tokens=args.max_row_tokens)
    else:
        setup = T.bare_setup(
            method=args.method, seq_len=args.seq, micro_batch=args.micro_batch, grad_accum=args.grad_accum,
            packing=args.packing, liger=args.liger, grad_ckpt=args.grad_ckpt, lora_r=args.lora_r,
            targets=args.targets, lora_dropout=args.lora_dropout, lora_kernels=not args.no_lora_kernels,
            optimizer=args.optimizer, zero_stage=args.zero, offload=args.offload, n_gpus=args.gpus or 1,
            dtype=args.dtype, max_row_tokens=args.max_row_tokens)
        # --model is a path typed on this command line: relative to the current folder, not the project.
        plan = T.model_plan(args.model, Path.cwd(), setup, args.gpu, tokens=args.tokens, epochs=args.epochs)
    print(json.dumps(plan.to_dict(), indent=2) if args.json else plan.render(), end="" if not args.json else "\n")
    return 0
