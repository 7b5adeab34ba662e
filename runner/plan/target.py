"""What a plan is for: the target machine, the recipe resolved as it would be there, the training tokens it will
see, and the plan of a recipe or of a bare model described by flags.

`tunebook plan`, `tunebook validate`'s fit check (runner.plan.fit) and `tunebook launch`'s cost estimate
(runner.ship.launch) all plan through this module, so a recipe is planned the same way everywhere: resolved for
the GPU it will train on (not for this machine), with the token count of its data.
"""
from __future__ import annotations

import json
from pathlib import Path

from runner.errors import TunebookError
from runner.hardware import Hardware, cpu_cores
from runner.plan import estimate as P
from runner.recipe.load import TRAIN_KINDS, Recipe, data_files
from runner.recipe.presets import load_preset
from runner.recipe.resolve import ResolvedRecipe, ResolvedStage, resolve

BYTES_PER_TOKEN = 3.6  # JSONL bytes per token: English text plus the JSON keys and quoting (rough)


def target_hardware(gpu: P.GPU, count: int, nodes: int = 1) -> Hardware:
    """The machine a plan is for, in runner.hardware's terms, so the recipe resolves as it would there
    (resolving on this machine would adapt it to the CPU: fp32, no LoRA kernels, no Liger), with the GPU's
    compute capability so Axolotl's GPU checks run as they would there."""
    return Hardware(cuda=True, gpu_name=gpu.name, gpu_count=count, gpu_memory_gib=gpu.memory_gib, bf16=gpu.bf16,
                    cpu_cores=cpu_cores(), cpu_name="", compute_capability=gpu.compute_capability, nodes=nodes)


def preset_gpu(rec: Recipe) -> dict:
    """The target GPU the recipe's preset names (`gpu: {id, count, ...}`), {} without a preset or one."""
    return (load_preset(rec.data["preset"], rec.root) if rec.data.get("preset") else {}).get("gpu") or {}


def resolve_for_gpu(rec: Recipe, gpu_id: str | None = None,
                    count: int | None = None) -> tuple[ResolvedRecipe, ResolvedStage, int]:
    """(resolved recipe, its first training stage, GPUs per run) as they would be on the target GPU: the
    given one, else the preset's, else a generic bf16 GPU (only bf16 support changes the config)."""
    wanted = preset_gpu(rec)
    table = P.load_gpus()
    gpu = table.get(gpu_id or str(wanted.get("id"))) or table["h100"]
    count = count or int(wanted.get("count") or 1)
    # With the model on disk, tunebook derives sequence length and packing from the data's real token
    # lengths: plan exactly the config that will train.
    resolved = resolve(rec, h=target_hardware(gpu, count), template_check=True)
    stage = next((s for s in resolved.stages if s.kind in TRAIN_KINDS and s.config), None)
    if stage is None:
        raise TunebookError(f"recipe '{rec.name}' has no training stage to plan", fix="Add an sft (or dpo) stage.")
    return resolved, stage, count


def recipe_tokens(resolved: ResolvedRecipe, stage: ResolvedStage) -> tuple[int | None, str]:
    """Training tokens per epoch: the data report when `make data` has run, else an estimate from bytes."""
    report = resolved.layout.data_report
    if report.is_file():
        try:
            tokens = json.loads(report.read_text(encoding="utf-8")).get("tokens_per_epoch")
        except ValueError:
            tokens = None
        if tokens:
            return int(tokens), f"from {report}"
    size = sum(p.stat().st_size for p in training_files(resolved, stage))
    if not size:
        return None, "no local training data found"
    return int(size / BYTES_PER_TOKEN), f"estimate: {size:,} bytes of training data / {BYTES_PER_TOKEN} per token"


def training_files(resolved: ResolvedRecipe, stage: ResolvedStage) -> list[Path]:
    """Local training data files of a stage: its Axolotl datasets, else the recipe's data block."""
    root = resolved.recipe.root
    found = []
    for ds in stage.config.get("datasets") or []:
        path = ds.get("path") if isinstance(ds, dict) else None
        if path and (root / path).is_file():
            found.append(root / path)
    if found:
        return found
    data = resolved.recipe.data
    body = next((s.body for s in resolved.recipe.stages if s.name == stage.name), {})
    block = body.get("data") or data.get("data") or {}
    return [root / f for keys, f in data_files(block) if keys[0] not in ("held_out", "output_schema")
            and (root / f).is_file()]


def plan_gpus(gpu_ids: list[str] | None, preset_gpu: dict | None) -> tuple[list[P.GPU], str | None]:
    """The GPUs to show and the primary one: `gpu_ids` as given, else the preset's GPU first, then all."""
    if gpu_ids:
        return [P.gpu_by_id(g) for g in dict.fromkeys(gpu_ids)], gpu_ids[0]
    table = P.load_gpus()
    if not preset_gpu:
        return list(table.values()), None
    gid = str(preset_gpu.get("id", ""))
    first = table.get(gid) or P.GPU(id=gid or "preset", name=preset_gpu.get("name", gid),
                                    memory_gib=float(preset_gpu["memory_gib"]))
    return [first] + [g for g in table.values() if g.id != first.id], first.id


def bare_setup(method: str = "lora", seq_len: int = 2048, micro_batch: int = 1, grad_accum: int = 1,
               packing: bool = False, liger: bool = False, grad_ckpt: bool = False, lora_r: int = 16,
               targets: str = "all-linear", lora_dropout: float = 0.0, lora_kernels: bool = True,
               optimizer: str = "adamw_torch_fused", zero_stage: int = 0, offload: bool = False, n_gpus: int = 1,
               dtype: str = "bf16", max_row_tokens: int | None = None) -> P.TrainSetup:
    """A training setup described by `tunebook plan --model` flags: `targets` is all-linear or comma-separated
    module names; Liger means all its kernels; LoRA kernels exist only for adapters; ZeRO-3 offload moves the
    parameters too."""
    lora_targets = "all-linear" if targets in ("all-linear", "all_linear") else \
        [t.strip() for t in targets.split(",") if t.strip()]
    return P.TrainSetup(
        method=method, seq_len=seq_len, micro_batch=micro_batch, grad_accum=grad_accum, packing=packing,
        liger_flce=liger, liger_rms_norm=liger, liger_glu=liger, grad_ckpt=grad_ckpt, lora_r=lora_r,
        lora_targets=lora_targets, lora_dropout=lora_dropout, lora_kernels=lora_kernels and method != "full",
        optimizer=optimizer, zero_stage=zero_stage, offload=offload, offload_params=offload and zero_stage == 3,
        n_gpus=n_gpus, dtype=dtype, max_row_tokens=max_row_tokens)


def model_plan(model: str, root: Path, setup: P.TrainSetup, gpu_ids: list[str] | None = None,
               tokens: int | None = None, epochs: float | None = None) -> P.Plan:
    """The plan of a bare model (a folder, config.json or hub id) trained with `setup`."""
    shape = P.load_model_shape(model, root)
    gpus, primary = plan_gpus(gpu_ids, None)
    source = "--tokens" if tokens else ""
    return P.make_plan(shape, setup, gpus, primary=primary, tokens_per_epoch=tokens, tokens_source=source,
                       epochs=epochs or 1.0)


def recipe_plan(rec: Recipe, gpu_ids: list[str] | None = None, n_gpus: int | None = None, tokens: int | None = None,
                epochs: float | None = None, max_row_tokens: int | None = None) -> P.Plan:
    """The plan of a recipe's first training stage, resolved for the first of `gpu_ids` (else its preset's GPU).
    `tokens`, `epochs` and `max_row_tokens` override what the data and the config say."""
    root = rec.root
    resolved, stage, n_gpus = resolve_for_gpu(rec, (gpu_ids or [None])[0], n_gpus)
    cfg = stage.config
    setup = P.TrainSetup.from_axolotl_config(cfg, root, n_gpus=n_gpus)
    if max_row_tokens:
        setup.max_row_tokens = max_row_tokens
    shape = P.load_model_shape(str(cfg.get("base_model") or rec.data["base_model"]), root)
    tokens, source = (tokens, "--tokens") if tokens else recipe_tokens(resolved, stage)
    gpus, primary = plan_gpus(gpu_ids, (resolved.preset or {}).get("gpu"))
    return P.make_plan(shape, setup, gpus, primary=primary, tokens_per_epoch=tokens, tokens_source=source,
                       epochs=epochs or float(cfg.get("num_epochs") or 1),
                       title=f"{rec.name} / {stage.name} ({stage.kind})")
