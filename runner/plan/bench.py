"""`tunebook bench`: measure how fast a recipe trains, and how much faster than the guide-style recipe.

The recipe's first training stage runs through Axolotl for `warmup + steps` optimizer steps (no checkpoints, no
evaluation, its own folder under runs/<recipe>/bench/<variant>/). From the per-step dicts the HF Trainer logs,
the steady state (the steps after warm-up) gives tokens/s (total and trainable), samples/s, MFU and peak memory.
`--vs naive` also runs the guide-style configuration of the same model and data in the same invocation and
reports the ratio. The result goes to benchmarks/results/<date>-<gpu>-<recipe>.json; docs/benchmarks.md
describes the method and the numbers.

Timing: Axolotl logs no timestamp per step, but with `include_tkps` each step's dict carries
'tokens/train_per_sec_per_gpu' = Δ trainable tokens / world size / seconds since the previous log, taken with
time.perf_counter() in the trainer process after the step's loss was read back (a device sync). So each step's
wall time is Δ 'tokens/trainable' / (rate x world size): exact to the rounding of the rate (2 decimals), and it
includes everything between two logs (data loading, optimizer step, logging) as a real run would. tqdm's
elapsed time ([mm:ss<...) is the fallback when a step trained no token (rate 0); it has 1 s resolution.
"""
from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import re
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path

import yaml

from runner import early_stopping as es
from runner.console import say
from runner.data import prepare as dataprep
from runner.errors import TunebookError
from runner.fsutil import atomic_write_json, atomic_write_text
from runner.layout import RunLayout, StageLayout
from runner.pipeline.lock import package_versions as lock_package_versions
from runner.plan import estimate as P
from runner.recipe.load import TRAIN_KINDS, load_recipe, looks_like_path
from runner.recipe.resolve import resolve, training_to_axolotl
from runner.train import trainlog
from runner.train.axolotl import (
    axolotl_cmd,
    child_env,
    dist_settings,
    launcher_args,
    run_logged,
)

DEFAULT_WARMUP, DEFAULT_STEPS = 3, 10
RESULTS_DIR = Path("benchmarks") / "results"
SCHEMA = 1
VARIANTS = ("naive",)
EXTRA_PACKAGES = ("liger_kernel", "triton", "flash_attn", "torchao", "deepspeed")

# Keys a benchmark run must not keep: checkpointing, evaluation, tracking and hub uploads would sit inside the
# timed window or write elsewhere.
BENCH_DROP = ("save_steps", "saves_per_epoch", "test_datasets", "metric_for_best_model", "greater_is_better",
              "evals_per_epoch", "eval_steps", "wandb_project", "wandb_name", "wandb_mode", "wandb_entity",
              "use_mlflow", "mlflow_experiment_name", "mlflow_run_name", "hub_model_id", "resume_from_checkpoint")

# The guide-style recipe the issue compares against: QLoRA or LoRA as the recipe's method, no packing, no Liger,
# paged 8-bit AdamW, micro batch 2 x accumulation 4, gradient checkpointing.
NAIVE = {"sample_packing": False, "optimizer": "paged_adamw_8bit", "micro_batch_size": 2,
         "gradient_accumulation_steps": 4, "gradient_checkpointing": True}
# Speed settings that the guide recipe does not have (removed from the naive config when present).
NAIVE_DROP = ("eval_sample_packing", "multipack_real_batches", "sample_packing_group_size",
              "sample_packing_bin_size", "sample_packing_sequentially", "sample_packing_eff_est", "sdpa_varlen",
              "pad_to_sequence_len", "torch_compile", "torch_compile_backend", "torch_compile_mode",
              "torch_compile_options", "selective_checkpointing", "activation_offloading")

# The training loop's bar has no description ("Loading weights: 13/13 [...]" and the like are other bars).
TQDM_RE = re.compile(r"^\s*\d+%\|[^|\n]*\|\s*(\d+)/(\d+) \[(?:(\d+):)?(\d+):(\d+)<", re.M)


# ---------------------------------------------------------------------------------------------------- configs
def bench_config(stage_cfg: dict, variant_dir: Path, warmup: int, steps: int) -> dict:
    """The stage's Axolotl config, set to run warmup + steps optimizer steps into its own folder, logging every
    step with token counts, saving and evaluating nothing on the way."""
    cfg = copy.deepcopy(stage_cfg)
    for k in BENCH_DROP:
        cfg.pop(k, None)
    # No evaluation, no early stopping: its record would land in the stage folder the benchmark copied it from.
    cfg = es.without_rule(cfg)
    paths = StageLayout(Path(variant_dir))
    cfg.update(max_steps=warmup + steps, logging_steps=1, include_tkps=True, save_strategy="no",
               save_first_step=False, eval_strategy="no", val_set_size=0, load_best_model_at_end=False,
               auto_resume_from_checkpoints=False, output_dir=str(paths.output),
               dataset_prepared_path=str(paths.prepared))
    return cfg


def naive_config(cfg: dict, cuda: bool) -> tuple[dict, list[str]]:
    """The guide-style configuration of the same model, data and method; and one line per change made."""
    out = copy.deepcopy(cfg)
    changes = []
    for k, v in NAIVE.items():
        if k == "optimizer" and not cuda:
            v = "adamw_torch"
            changes.append("optimizer adamw_torch instead of the guide's paged_adamw_8bit: bitsandbytes' paged "
                           "optimizers need CUDA")
        if out.get(k) != v:
            changes.append(f"{k}: {out.get(k)!r} -> {v!r}")
        out[k] = v
    liger = sorted(k for k in out if k.startswith("liger_"))
    for k in liger:
        del out[k]
    plugins = [p for p in out.get("plugins") or [] if "liger" not in str(p).lower()]
    if plugins != list(out.get("plugins") or []) or liger:
        changes.append("Liger off" + (f" ({', '.join(liger)})" if liger else ""))
    if plugins:
        out["plugins"] = plugins
    else:
        out.pop("plugins", None)
    for k in NAIVE_DROP:
        if k in out:
            changes.append(f"{k} removed (was {out.pop(k)!r})")
    return out, changes


def dump_config(path: Path, cfg: dict, title: str) -> None:

    atomic_write_text(path, f"# Written by `tunebook bench` ({title}). Do not edit: it is rewritten every run.\n"
                      + yaml.safe_dump(cfg, sort_keys=True, allow_unicode=True, width=120))


# ---------------------------------------------------------------------------------------------------- parsing
def train_steps(logs: list[dict]) -> list[dict]:
    """The per-step training dicts (they carry 'loss'), in order; eval and summary dicts are left out."""
    return [d for d in logs if "loss" in d and "eval_loss" not in d and "train_runtime" not in d]


def tqdm_elapsed(text: str, total: int) -> dict[int, float]:
    """Step -> seconds since the training loop started, from tqdm's progress bar for `total` steps (the first
    time each step count is drawn; 1 s resolution)."""
    out: dict[int, float] = {}
    for m in TQDM_RE.finditer(text.replace("\r", "\n")):
        n, tot = int(m.group(1)), int(m.group(2))
        if tot == total and n not in out:
            out[n] = int(m.group(3) or 0) * 3600 + int(m.group(4)) * 60 + int(m.group(5))
    return out


def _f(d: dict, key: str) -> float | None:
    v = d.get(key)
    return float(v) if isinstance(v, (int, float)) else None


def steady_state(logs: list[dict], warmup: int, world: int = 1, sequences_per_step: int | None = None,
                 tqdm: dict[int, float] | None = None) -> dict:
    """Throughput over the steps after warm-up, from the Trainer's per-step log dicts.

    Δ tokens between the end of warm-up (step `warmup`) and the last step, over the wall time of those steps:
    each step's seconds = Δ 'tokens/trainable' / ('tokens/train_per_sec_per_gpu' x world). `tqdm` (step ->
    elapsed seconds) is the fallback for steps that trained no token."""
    steps = train_steps(logs)
    if warmup < 1:
        raise TunebookError("warm-up must be at least 1 step", fix="Axolotl's first logged step has no timing; "
                                                                   "use --warmup 1 or more.")
    if len(steps) <= warmup:
        raise TunebookError(f"the run logged {len(steps)} training step(s), not more than the {warmup} warm-up "
                            "step(s): nothing left to measure",
                            fix="Check the log: the data may be too small for one packed batch, or training "
                                "stopped early.", exit_code=1)
    for d in steps:
        if _f(d, "tokens/total") is None or _f(d, "tokens/trainable") is None:
            raise TunebookError("the training log has no token counts ('tokens/total', 'tokens/trainable')",
                                fix="Run with include_tkps: true (tunebook bench sets it); Axolotl >= 0.19 "
                                    "logs them.", exit_code=1)
    base, window = steps[warmup - 1], steps[warmup:]
    seconds, source, prev = [], "tokens/train_per_sec_per_gpu", base
    for i, d in enumerate(window):
        dtr = _f(d, "tokens/trainable") - _f(prev, "tokens/trainable")
        rate = _f(d, "tokens/train_per_sec_per_gpu")
        seconds.append(dtr / (rate * max(1, world)) if rate and dtr > 0 else None)
        prev = d
    if any(s is None for s in seconds):
        step_no = range(warmup, warmup + len(window) + 1)
        if not tqdm or any(n not in tqdm for n in step_no):
            raise TunebookError("cannot time the measured steps: a step logged no tokens/s and the progress "
                                "bar has no elapsed time for it", fix="Run more steps (--steps).", exit_code=1)
        seconds = [tqdm[n] - tqdm[n - 1] for n in step_no[1:]]
        source = "tqdm elapsed (1 s resolution; some step trained no token)"
    total_s = sum(seconds)
    if total_s <= 0:
        raise TunebookError("the measured steps took no measurable time", fix="Run more steps (--steps).",
                            exit_code=1)
    last = window[-1]
    d_total = _f(last, "tokens/total") - _f(base, "tokens/total")
    d_train = _f(last, "tokens/trainable") - _f(base, "tokens/trainable")
    out = {
        "steps_logged": len(steps), "warmup_steps": warmup, "measured_steps": len(window),
        "timing_source": source, "seconds": round(total_s, 4),
        "step_seconds": [round(s, 4) for s in seconds],
        "tokens_total": int(d_total), "tokens_trainable": int(d_train),
        "tokens_per_s": round(d_total / total_s, 2),
        "trainable_tokens_per_s": round(d_train / total_s, 2),
        "tokens_per_s_per_gpu": round(d_total / total_s / max(1, world), 2),
        "trained_share": round(d_train / d_total, 4) if d_total else None,
        "samples_per_s": round(sequences_per_step * len(window) / total_s, 4) if sequences_per_step else None,
    }
    end = [d for d in logs if "train_runtime" in d]
    final = steps[-1]
    if end and _f(end[-1], "train_runtime"):
        rt = _f(end[-1], "train_runtime")
        out["including_warmup"] = {
            "train_runtime_s": rt, "tokens_total": int(_f(final, "tokens/total")),
            "tokens_per_s": round(_f(final, "tokens/total") / rt, 2),
            "method": "total tokens / train_runtime over every step, warm-up included (how the reference "
                      "README measured)"}
    out["memory"] = memory(steps, warmup)
    return out


def memory(steps: list[dict], warmup: int) -> dict | None:
    """Peak allocated/reserved GiB. Axolotl reads torch.cuda.max_memory_allocated/reserved at every log and
    resets the peak, so each step's value is that step's peak (the first one includes loading the model)."""
    def peak(key, ds):
        vals = [_f(d, key) for d in ds if _f(d, key) is not None]
        return max(vals) if vals else None

    alloc = peak("memory/max_allocated (GiB)", steps)
    if not alloc:  # 0 on a CPU: Axolotl reports no memory without CUDA
        return None
    return {"peak_allocated_gib": alloc, "peak_reserved_gib": peak("memory/device_reserved (GiB)", steps),
            "peak_active_gib": peak("memory/max_active (GiB)", steps),
            "steady_peak_allocated_gib": peak("memory/max_allocated (GiB)", steps[warmup:]),
            "steady_peak_reserved_gib": peak("memory/device_reserved (GiB)", steps[warmup:])}


# ---------------------------------------------------------------------------------------------------- FLOPs
def gpu_for(h, label: str | None = None) -> tuple[str, P.GPU | None, str | None]:
    """(label for the file name, the GPU of recipes/presets/gpus.yaml or None, why there is no MFU)."""
    gpus = P.load_gpus()
    if not h.cuda:
        return (label or "cpu"), None, ("no GPU: MFU is measured against a GPU's dense bf16 tensor-core peak "
                                        "(recipes/presets/gpus.yaml); a CPU run only checks the plumbing")
    if label:
        gid = label
    else:
        name = (h.gpu_name or "").upper()
        mem = h.gpu_memory_gib or 0
        gid = None
        if "H200" in name:
            gid = "h200"
        elif "H100" in name:
            gid = "h100" if not re.search(r"PCIE|NVL", name) else ("h100-pcie" if "PCIE" in name else "h100-nvl")
        elif "A100" in name:
            gid = "a100-80" if mem > 50 else "a100-40"
        elif "A10G" in name:
            gid = "a10g"
        elif re.search(r"\bL4\b", name):
            gid = "l4"
        elif re.search(r"\bT4\b", name):
            gid = "t4"
        elif "3090" in name:
            gid = "rtx3090"
        elif "4090" in name:
            gid = "rtx4090"
        gid = gid or re.sub(r"[^a-z0-9]+", "-", (h.gpu_name or "gpu").lower()).strip("-")
    if gid in gpus:
        return gid, gpus[gid], None
    return gid, None, (f"'{gid}' is not in recipes/presets/gpus.yaml, so its peak FLOP/s is unknown (pass "
                       "--gpu-label with a listed id if it is one of them)")


def flops(cfg: dict, root: Path, world: int) -> dict:
    """FLOPs per token of a config, by the planner's formula and by the issue's 4 x params convention."""
    shape = P.load_model_shape(str(cfg["base_model"]), root)
    setup = P.TrainSetup.from_axolotl_config(cfg, root, n_gpus=world)
    k = 6 if setup.method == "full" else 4
    return {
        "model": {"name": str(cfg["base_model"]), "params": shape.params, "hidden": shape.hidden,
                  "layers": shape.layers, "intermediate": shape.intermediate, "vocab": shape.vocab},
        "per_token_planner": P.flops_per_token(shape, setup),
        "formula_planner": "runner.plan.estimate.flops_per_token: N = projections + output head; LoRA/QLoRA 4N + 6 x LoRA "
                           "params (full: 6N), + causal attention 3 x 2 x layers x seq x q_dim at the full "
                           "sequence length; gradient checkpointing adds the recomputed forward (2 x projections + "
                           "attention). Counts recomputation, so it is a hardware-FLOPs utilisation",
        "per_token_params": float(k * shape.params),
        "formula_params": f"{k} x params ({'full fine-tune: forward 2 + backward 4' if k == 6 else 'LoRA/QLoRA: forward 2 + input-gradient backward 2'}; "
                          "no attention, no recomputation): the issue's convention for its MFU targets",
        "_shape": shape, "_setup": setup,
    }


def mfu(tokens_per_s: float, fl: dict, gpu: P.GPU | None, world: int, why_not: str | None) -> dict:
    if gpu is None or not gpu.tflops:
        return {"planner": None, "params": None, "why_null": why_not}
    peak = gpu.tflops * 1e12 * max(1, world)
    return {"planner": round(tokens_per_s * fl["per_token_planner"] / peak, 4),
            "params": round(tokens_per_s * fl["per_token_params"] / peak, 4),
            "peak_flops": peak, "peak_source": f"recipes/presets/gpus.yaml {gpu.id}: {gpu.tflops:g} TFLOP/s dense "
                                               f"bf16 per GPU (spec sheet) x {max(1, world)} GPU(s)"}


def planner_prediction(fl: dict, gpu: P.GPU | None) -> dict:
    """What the planner predicts for this config, to set beside the measurement."""
    est = P.estimate_memory(fl["_shape"], fl["_setup"])
    out = {"peak_allocated_gib": round(est.peak_allocated_gib, 3), "peak_phase": est.peak_phase}
    if gpu is not None:
        tps, _ = P.estimate_time(fl["_shape"], fl["_setup"], 0, 1, gpu)
        out["tokens_per_s"] = round(tps)
        out["verdict"] = P.verdict(est.peak_allocated_gib, gpu.memory_gib)
    return out


# ---------------------------------------------------------------------------------------------------- running
@dataclasses.dataclass
class Options:
    steps: int = DEFAULT_STEPS
    warmup: int = DEFAULT_WARMUP
    vs: str | None = None
    gpu_label: str | None = None
    preset: str | None = None
    model: str | None = None
    seq: int | None = None
    micro_batch: int | None = None
    set: dict = dataclasses.field(default_factory=dict)   # raw Axolotl keys (--set KEY=VALUE), applied last
    synthetic_rows: int | None = None                      # train on generated rows instead of the recipe's data
    quiet: bool = True


def package_versions() -> dict:
    out = dict(lock_package_versions())
    for p in EXTRA_PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    out["python"] = sys.version.split()[0]
    return out


def resolve_for_bench(name: str, root: Path, opt: Options, h=None):
    """Resolve the recipe as `tunebook train` would, with the bench's --preset/--model applied to the recipe
    first; returns (resolved recipe, its first training stage)."""
    rec = load_recipe(name, root)
    if opt.preset or opt.model or opt.synthetic_rows:
        data = copy.deepcopy(rec.data)
        if opt.preset:
            data["preset"] = opt.preset
        if opt.model:
            if looks_like_path(opt.model) and not rec.resolve_path(opt.model).exists():
                raise TunebookError(f"--model {opt.model}: no such folder",
                                    fix="Give a model folder (config.json + weights + tokenizer) or a hub id.")
            data["base_model"] = opt.model
        changes = {"data": data}
        if opt.synthetic_rows:
            # Its own run folder, so the recipe's prepared data and reports are never overwritten.
            changes["name"] = f"{rec.name}-synthetic"
            path = RunLayout.for_recipe(root, changes["name"]).synthetic_rows
            write_synthetic(path, opt.synthetic_rows)
            data["data"] = {"train": str(path), "format": "alpaca"}
        rec = dataclasses.replace(rec, **changes)
    res = resolve(rec, h=h)
    stage = next((s for s in res.stages if s.kind in TRAIN_KINDS and s.config and s.kind != "merge"), None)
    if stage is None:
        raise TunebookError(f"recipe '{name}' has no training stage to benchmark", fix="Add an sft stage.")
    if stage.kind != "sft":
        res.notes.append(f"stage '{stage.name}' is {stage.kind}: tokens count chosen and rejected rows")
    cfg = stage.config
    if opt.seq:
        cfg["sequence_len"] = opt.seq
        stage.sources["sequence_len"] = ("tunebook bench --seq", None)
    if opt.micro_batch:
        cfg["micro_batch_size"] = opt.micro_batch
        stage.sources["micro_batch_size"] = ("tunebook bench --micro-batch", None)
    for k, v in (opt.set or {}).items():
        if v is None:
            cfg.pop(k, None)
            stage.sources.pop(k, None)
        else:
            cfg[k] = v
            stage.sources[k] = ("tunebook bench --set", None)
    return res, stage


WORDS = ("the of and to in is that for it as with was on be by this are or from at an which have not has but "
         "all were when we there can more if no out so said what up its about into than them only other new some "
         "could time these two may then do first any my now such like our over man me even most made after also "
         "did many before must through back years where much your way well down should because each just those "
         "people how too little state good very make world still own see men work long get here between both "
         "life being under never day same another know while last might us great old year off come since against "
         "go came right used take three system order model data train answer question policy leave days team "
         "report value number water place point group part case line hand small large end general program "
         "process public service level example result change company market power rate level field form").split()


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    """n alpaca rows of common English words with SFT-like lengths: instruction ~40 words (lognormal, 5-400),
    answer ~250 words (lognormal, 16-1200), so that rows run from a few dozen to ~2,000 tokens (median ~350 with
    a chat template). The same n and seed give the same rows on every machine. For speed and memory only."""
    import random

    rnd = random.Random(seed)

    def text(median, sigma, lo, hi):
        k = int(min(hi, max(lo, rnd.lognormvariate(0, sigma) * median)))
        return " ".join(rnd.choice(WORDS) for _ in range(k))

    return [{"instruction": text(40, 0.7, 5, 400), "output": text(250, 0.8, 16, 1200)} for _ in range(n)]


def write_synthetic(path: Path, n: int) -> None:
    import json


    if n < 1:
        raise TunebookError("--synthetic-rows must be at least 1")
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in synthetic_rows(n)))


def parse_set(items: list[str] | None) -> dict:
    """--set KEY=VALUE pairs (VALUE read as YAML: true, 4, [a, b]; `KEY=` or `KEY=null` removes the key)."""
    out = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise TunebookError(f"--set {item!r}: expected KEY=VALUE", fix="For example --set torch_compile=true.")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise TunebookError(f"--set {item!r}: the value is not YAML ({exc})") from None
    return out


def overridden_preset_keys(res, stage) -> list[str]:
    """Preset settings that a derived default replaced (the bench measures what `tunebook train` runs)."""

    if not res.preset:
        return []
    preset_keys = training_to_axolotl(res.preset.get("training") or {})
    out = []
    for k, v in preset_keys.items():
        src = stage.sources.get(k, (None,))[0]
        if src == "derived" and stage.config.get(k) != v:
            out.append(f"{k}: preset {res.preset['name']} says {v!r}, the derived default {stage.config.get(k)!r} "
                       "won")
    return out


def run_variant(name: str, cfg: dict, res, root: Path, opt: Options, world: int, title: str) -> dict:
    """Run one configuration through Axolotl and measure it."""
    # Each variant's folder is laid out as a stage's (config, log, output).
    paths = StageLayout(res.layout.bench / name)
    vdir = paths.dir
    shutil.rmtree(vdir, ignore_errors=True)
    vdir.mkdir(parents=True)
    cfg = bench_config(cfg, vdir, opt.warmup, opt.steps)
    path = paths.config
    dump_config(path, cfg, title)
    log = paths.log
    env = child_env({"WANDB_MODE": "disabled"})
    say(f"bench: {name}: {opt.warmup} warm-up + {opt.steps} measured steps ({path.relative_to(root)})")
    t0 = time.time()
    try:
        run_logged(axolotl_cmd("train", str(path), *launcher_args(res.hardware)), log, f"bench {name}", env,
                   opt.quiet)
    except TunebookError as exc:
        raise TunebookError(f"benchmark run '{name}' failed: {exc.what}", where=str(log),
                            fix="Read the log. Out of memory on a GPU means the micro batch is too large for "
                                "this model and sequence length: `tunebook plan RECIPE` sizes it.",
                            exit_code=1) from None
    wall = time.time() - t0
    text = log.read_text(errors="replace")
    seqs = int(cfg.get("micro_batch_size") or 1) * int(cfg.get("gradient_accumulation_steps") or 1) * world
    measured = steady_state(trainlog.from_log(log), opt.warmup, world, seqs, tqdm_elapsed(text, cfg["max_steps"]))
    measured["wall_s_including_startup"] = round(wall, 1)
    measured["sequences_per_step"] = seqs
    return {"config": cfg, "config_path": str(path.relative_to(root)), "log": str(log.relative_to(root)),
            "measure": measured}



def _portable(obj, root: Path):
    """The same data with the project root written as <root> (results are committed)."""
    import json

    text = json.dumps(obj, default=str)
    return json.loads(text.replace(str(root), "<root>"))


def result_name(date: str, gpu_label: str, recipe: str, opt: Options) -> str:
    parts = [date, gpu_label, recipe]
    if opt.preset:
        parts.append(opt.preset)
    if opt.model:
        parts.append(Path(opt.model.rstrip("/")).name)
    if opt.seq:
        parts.append(f"seq{opt.seq}")
    if opt.micro_batch:
        parts.append(f"mb{opt.micro_batch}")
    for k, v in (opt.set or {}).items():
        parts.append(f"{k}-{'unset' if v is None else v}")
    if opt.synthetic_rows:
        parts.append(f"synthetic{opt.synthetic_rows}")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(parts)) + ".json"


def bench(name: str, root: Path, opt: Options, argv: list[str] | None = None, h=None) -> tuple[dict, Path]:
    """Run the benchmark; write and return (result, path of the JSON)."""

    if opt.steps < 1:
        raise TunebookError("--steps must be at least 1")
    if opt.warmup < 1:
        raise TunebookError("--warmup must be at least 1", fix="Axolotl's first logged step has no timing.")
    if opt.vs and opt.vs not in VARIANTS:
        raise TunebookError(f"--vs {opt.vs}: unknown comparison", fix=f"Use one of: {', '.join(VARIANTS)}.")
    root = Path(root).resolve()
    res, stage = resolve_for_bench(name, root, opt, h)
    hw = res.hardware
    dist = dist_settings()
    world = ((dist["gpus"] or hw.gpu_count or 1) * (dist["nnodes"] or 1)) if hw.cuda else 1
    label, gpu, why_no_mfu = gpu_for(hw, opt.gpu_label)
    notes = list(res.notes)
    overridden = overridden_preset_keys(res, stage)
    for line in overridden:
        notes.append("derived default replaced a preset setting: " + line)
    for note in notes:
        say(note)
    dataprep.prepare(res, quiet=True)

    variants = {"recipe": {"what": f"the recipe's stage '{stage.name}' as `tunebook train` resolves it"
                                   + (f" (preset {res.preset['name']})" if res.preset else ""),
                           "sources": {k: v[0] for k, v in stage.sources.items()}}}
    if opt.vs == "naive":
        ncfg, changes = naive_config(stage.config, hw.cuda)
        variants["naive"] = {"what": "the guide-style recipe: the same model, data and method, no packing, no "
                                     "Liger, paged 8-bit AdamW, micro batch 2 x accumulation 4, gradient "
                                     "checkpointing", "changes": changes, "_cfg": ncfg}
    date = dt.date.today().isoformat()
    result = {
        "schema": SCHEMA, "tool": "tunebook bench", "date": date,
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "tunebook " + " ".join(argv) if argv else None,
        "recipe": name, "stage": stage.name,
        "overrides": {k: getattr(opt, k) for k in ("preset", "model", "seq", "micro_batch", "set", "synthetic_rows")
                      if getattr(opt, k)},
        "steps": {"warmup": opt.warmup, "measured": opt.steps},
        "gpu": {"label": label, "id": gpu.id if gpu else None, "name": gpu.name if gpu else hw.gpu_name,
                "peak_tflops_bf16_dense": gpu.tflops if gpu else None, "world_size": world},
        "hardware": hw.to_dict(), "packages": package_versions(),
        "definitions": DEFINITIONS, "notes": notes, "variants": {}, "ratio": None,
    }
    path = root / RESULTS_DIR / result_name(date, label, name, opt)
    failure = None
    for vname, info in variants.items():
        cfg = info.pop("_cfg", None) or stage.config
        try:
            run = run_variant(vname, cfg, res, root, opt, world, f"{name} {vname}")
        except TunebookError as exc:
            if vname == "recipe":
                raise
            failure = exc
            result["variants"][vname] = {**info, "error": str(exc)}
            break
        fl = flops(run["config"], root, world)
        m = run["measure"]
        entry = {**info, **{k: v for k, v in run.items() if k != "measure"}, **m,
                 "flops_per_token": {k: v for k, v in fl.items() if not k.startswith("_")},
                 "mfu": mfu(m["tokens_per_s"], fl, gpu, world, why_no_mfu),
                 "planner": (planner_prediction(fl, gpu) if hw.cuda else
                             {"why_null": "planned for GPUs only; this config was adapted to the CPU"})}
        if m["memory"] is None:
            entry["memory_why_null"] = "no CUDA: Axolotl reports GPU memory only"
        result["variants"][vname] = entry
    if "naive" in result["variants"] and "error" not in result["variants"]["naive"]:
        a, b = result["variants"]["recipe"], result["variants"]["naive"]
        result["ratio"] = {
            "tokens_per_s": round(a["tokens_per_s"] / b["tokens_per_s"], 3) if b["tokens_per_s"] else None,
            "trainable_tokens_per_s": (round(a["trainable_tokens_per_s"] / b["trainable_tokens_per_s"], 3)
                                       if b["trainable_tokens_per_s"] else None),
            "which": "tokens_per_s (total tokens, padding included, per second of the steady state) is the one "
                     "the issue's targets and the reference README use; trainable_tokens_per_s counts only "
                     "tokens with a label (useful work: padding and masked prompts excluded)"}
    result = _portable(result, root)
    atomic_write_json(path, result)
    if failure:
        raise TunebookError(f"{failure.what} (the recipe's own measurement is in {path.relative_to(root)})",
                            where=failure.where, fix=failure.fix, exit_code=1)
    return result, path


DEFINITIONS = {
    "tokens_per_s": "Δ tokens/total (every input id computed, padding included) between the end of warm-up and "
                    "the last step, over the wall time of those steps, all GPUs together",
    "trainable_tokens_per_s": "the same for tokens/trainable (tokens with a label: answers, not prompts or "
                              "padding)",
    "step_seconds": "each measured step's wall time = Δ tokens/trainable / (tokens/train_per_sec_per_gpu x "
                    "world size), both logged by Axolotl at every step (include_tkps), timed with "
                    "perf_counter after the step's loss is read back",
    "samples_per_s": "sequences per second: micro batch x accumulation x GPUs per step (a packed sequence of "
                     "several rows counts once)",
    "mfu": "tokens_per_s x FLOPs per token / (GPUs x the GPU's dense bf16 peak in recipes/presets/gpus.yaml); "
           "'planner' uses runner.plan.estimate.flops_per_token (attention and recomputation counted), 'params' the "
           "issue's 4 x params (6 x for a full fine-tune)",
    "memory": "peak of torch.cuda.max_memory_allocated / max_memory_reserved over the logged steps (Axolotl "
              "resets the peak at every log; the first step includes loading the model); 'steady_' over the "
              "measured steps only",
    "ratio": "recipe / naive, both measured in this invocation on this machine",
}
