"""`tunebook plan`: will a recipe (or a bare model + flags) fit, how long will it take, what will it cost.

Two forms: `tunebook plan RECIPE` plans the recipe's first training stage from its resolved Axolotl config;
`tunebook plan --model PATH_OR_ID --method ... --seq ...` plans any configuration, e.g. to check a
measurement against the model. Both are offline and print tables, or JSON with --json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from runner.plan import estimate as P
from runner.errors import TunebookError
from runner.recipe.load import TRAIN_KINDS
BYTES_PER_TOKEN = 3.6  # JSONL bytes per token: English text plus the JSON keys and quoting (rough)


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
    root = Path.cwd()
    if bool(args.recipe) == bool(args.model):
        raise TunebookError("give either a recipe or --model, not both" if args.recipe else
                            "nothing to plan", fix="Run `tunebook plan RECIPE` or `tunebook plan --model "
                                                   "path/to/model --method qlora --seq 2048 ...`.")
    plan = _recipe_plan(args, root) if args.recipe else _model_plan(args, root)
    print(json.dumps(plan.to_dict(), indent=2) if args.json else plan.render(), end="" if not args.json else "\n")
    return 0


def _gpus(args, preset_gpu: dict | None) -> tuple[list[P.GPU], str | None]:
    """The GPUs to show and the primary one: --gpu as given, else the preset's GPU first, then all."""
    if args.gpu:
        return [P.gpu_by_id(g) for g in dict.fromkeys(args.gpu)], args.gpu[0]
    table = P.load_gpus()
    if not preset_gpu:
        return list(table.values()), None
    gid = str(preset_gpu.get("id", ""))
    first = table.get(gid) or P.GPU(id=gid or "preset", name=preset_gpu.get("name", gid),
                                    memory_gib=float(preset_gpu["memory_gib"]))
    return [first] + [g for g in table.values() if g.id != first.id], first.id


def _model_plan(args, root: Path) -> P.Plan:
    shape = P.load_model_shape(args.model, root)
    targets = "all-linear" if args.targets in ("all-linear", "all_linear") else \
        [t.strip() for t in args.targets.split(",") if t.strip()]
    setup = P.TrainSetup(
        method=args.method, seq_len=args.seq, micro_batch=args.micro_batch, grad_accum=args.grad_accum,
        packing=args.packing, liger_flce=args.liger, liger_rms_norm=args.liger, liger_glu=args.liger,
        grad_ckpt=args.grad_ckpt, lora_r=args.lora_r, lora_targets=targets, lora_dropout=args.lora_dropout,
        lora_kernels=not args.no_lora_kernels and args.method != "full", optimizer=args.optimizer,
        zero_stage=args.zero, offload=args.offload, offload_params=args.offload and args.zero == 3,
        n_gpus=args.gpus or 1, dtype=args.dtype, max_row_tokens=args.max_row_tokens)
    gpus, primary = _gpus(args, None)
    source = "--tokens" if args.tokens else ""
    return P.make_plan(shape, setup, gpus, primary=primary, tokens_per_epoch=args.tokens, tokens_source=source,
                       epochs=args.epochs or 1.0)


def target_hardware(gpu: P.GPU, count: int):
    """The machine a plan is for, in runner.hardware's terms, so the recipe resolves as it would there
    (resolving on this machine would adapt it to the CPU: fp32, no LoRA kernels, no Liger)."""
    from runner.hardware import Hardware, cpu_cores

    return Hardware(cuda=True, gpu_name=gpu.name, gpu_count=count, gpu_memory_gib=gpu.memory_gib, bf16=gpu.bf16,
                    cpu_cores=cpu_cores(), cpu_name="")


def resolve_for_gpu(name: str, root: Path, gpu_id: str | None = None, count: int | None = None):
    """(resolved recipe, its first training stage, GPUs per run) as they would be on the target GPU: the
    given one, else the preset's, else a generic bf16 GPU (only bf16 support changes the config)."""
    from runner.recipe.presets import load_preset
    from runner.recipe.load import load_recipe
    from runner.recipe.resolve import resolve

    rec = load_recipe(name, root)
    preset_gpu = (load_preset(rec.data["preset"], root) if rec.data.get("preset") else {}).get("gpu") or {}
    table = P.load_gpus()
    gpu = table.get(gpu_id or str(preset_gpu.get("id"))) or table["h100"]
    count = count or int(preset_gpu.get("count") or 1)
    # With the model on disk, tunebook derives sequence length and packing from the data's real token
    # lengths: plan exactly the config that will train.
    resolved = resolve(rec, h=target_hardware(gpu, count), template_check=True)
    stage = next((s for s in resolved.stages if s.kind in TRAIN_KINDS and s.config), None)
    if stage is None:
        raise TunebookError(f"recipe '{name}' has no training stage to plan", fix="Add an sft (or dpo) stage.")
    return resolved, stage, count


def _recipe_plan(args, root: Path) -> P.Plan:
    resolved, stage, n_gpus = resolve_for_gpu(args.recipe, root, (args.gpu or [None])[0], args.gpus)
    cfg, rec = stage.config, resolved.recipe
    setup = P.TrainSetup.from_axolotl_config(cfg, root, n_gpus=n_gpus)
    if args.max_row_tokens:
        setup.max_row_tokens = args.max_row_tokens
    shape = P.load_model_shape(str(cfg.get("base_model") or rec.data["base_model"]), root)
    tokens, source = (args.tokens, "--tokens") if args.tokens else recipe_tokens(resolved, stage, root)
    gpus, primary = _gpus(args, (resolved.preset or {}).get("gpu"))
    return P.make_plan(shape, setup, gpus, primary=primary, tokens_per_epoch=tokens, tokens_source=source,
                       epochs=args.epochs or float(cfg.get("num_epochs") or 1),
                       title=f"{rec.name} / {stage.name} ({stage.kind})")


def recipe_tokens(resolved, stage, root: Path) -> tuple[int | None, str]:
    """Training tokens per epoch: the data report when `make data` has run, else an estimate from bytes."""
    report = Path(resolved.run_root) / "data" / "report.json"
    if report.is_file():
        try:
            tokens = json.loads(report.read_text(encoding="utf-8")).get("tokens_per_epoch")
        except ValueError:
            tokens = None
        if tokens:
            return int(tokens), f"from {report}"
    size = sum(p.stat().st_size for p in training_files(resolved, stage, root))
    if not size:
        return None, "no local training data found"
    return int(size / BYTES_PER_TOKEN), f"estimate: {size:,} bytes of training data / {BYTES_PER_TOKEN} per token"


def training_files(resolved, stage, root: Path) -> list[Path]:
    """Local training data files of a stage: its Axolotl datasets, else the recipe's data block."""
    found = []
    for ds in stage.config.get("datasets") or []:
        path = ds.get("path") if isinstance(ds, dict) else None
        if path and (root / path).is_file():
            found.append(root / path)
    if found:
        return found
    from runner.recipe.load import data_files, normalise_stages

    data = resolved.recipe.data
    body = next((s.body for s in normalise_stages(data) if s.name == stage.name), {})
    block = body.get("data") or data.get("data") or {}
    return [root / f for keys, f in data_files(block) if keys[0] != "held_out" and (root / f).is_file()]
