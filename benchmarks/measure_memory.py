"""Measure peak GPU memory of an Axolotl config and compare it with tunebook's planner.

On a GPU machine with Axolotl installed (see ../shared/gpu/README.md for an offline kit):

    python benchmarks/measure_memory.py gpu CONFIG.yaml [--steps 6] [--out result.json]

runs CONFIG for a few optimizer steps (no saving, no eval) and records torch.cuda.max_memory_allocated
(and reserved) over the training steps, with the model-loading peak kept apart, the tokens of every micro
batch (padding included), and the planner's estimate for the same config at the longest measured batch.
Add the result to the table in docs/planner-accuracy.md.

Without a GPU, `cpu-check` checks the activation terms of the planner on a tiny Llama with PEFT LoRA on the
CPU, from PyTorch's memory timeline (bf16 autocast, sdpa, reentrant checkpointing as Axolotl uses):

    python benchmarks/measure_memory.py cpu-check
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GIB = 1024 ** 3


def planner_estimate(cfg: dict, tokens_per_micro_batch: int | None) -> dict:
    """The planner's estimate for an Axolotl config dict, at the measured longest micro batch if given."""
    from runner.plan import estimate as P

    setup = P.TrainSetup.from_axolotl_config(cfg, ROOT)
    if tokens_per_micro_batch and not setup.packing:
        setup.max_row_tokens = max(1, tokens_per_micro_batch // setup.micro_batch)
    shape = P.load_model_shape(str(cfg["base_model"]), ROOT)
    est = P.estimate_memory(shape, setup)
    return {"peak_allocated_gib": round(est.peak_allocated_gib, 3), "peak_phase": est.peak_phase,
            "breakdown_gib": {k: round(v / GIB, 3) for k, v in est.breakdown.items()},
            "tokens_per_micro_batch": setup.tokens}


def measure_gpu(config: Path, steps: int) -> dict:
    """Train `config` for `steps` optimizer steps in this process and record memory per micro batch."""
    import torch
    import transformers
    import yaml
    from axolotl.cli.args import TrainerCliArgs
    from axolotl.cli.config import load_cfg
    from axolotl.cli.train import do_train

    raw = yaml.safe_load(config.read_text())
    out_dir = tempfile.mkdtemp(prefix="measure-")
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
    overrides = dict(max_steps=steps, save_strategy="no", output_dir=out_dir, logging_steps=1,
                     val_set_size=0, eval_strategy="no", save_first_step=False)
    rec = {"micro_batches": [], "load_peak_allocated_gib": None}
    original = transformers.Trainer.training_step

    def training_step(self, model, inputs, *args, **kwargs):
        if rec["load_peak_allocated_gib"] is None:  # keep the model-loading peak apart from training
            rec["load_peak_allocated_gib"] = torch.cuda.max_memory_allocated() / GIB
            torch.cuda.reset_peak_memory_stats()
        ids = inputs.get("input_ids")
        t0 = time.perf_counter()
        loss = original(self, model, inputs, *args, **kwargs)
        torch.cuda.synchronize()
        rec["micro_batches"].append({
            "tokens": int(ids.numel()) if ids is not None else None,
            "shape": list(ids.shape) if ids is not None else None,
            "seconds": round(time.perf_counter() - t0, 4),
            "max_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 3)})
        return loss

    transformers.Trainer.training_step = training_step
    cfg = load_cfg(str(config), **overrides)
    torch.cuda.reset_peak_memory_stats()
    do_train(cfg, TrainerCliArgs())
    mbs = rec["micro_batches"]
    tokens = [m["tokens"] for m in mbs if m["tokens"]]
    return {
        "config": str(config), "steps": steps, "gpu": torch.cuda.get_device_name(0),
        "versions": {m: __import__(m).__version__ for m in ("torch", "transformers", "peft", "axolotl")},
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 3),
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 3),
        "load_peak_allocated_gib": round(rec["load_peak_allocated_gib"] or 0, 3),
        "tokens_per_micro_batch_max": max(tokens, default=None),
        "tokens_per_micro_batch_mean": round(sum(tokens) / len(tokens)) if tokens else None,
        "micro_batches": mbs, "raw_config": raw}


def cpu_check() -> list[dict]:
    """Peak memory above the weights of tiny Llama runs on the CPU vs the planner's gradients + activations
    + logits (LoRA without Axolotl's Triton kernels, no Liger: both need CUDA)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from torch.profiler import ProfilerActivity, profile
    from transformers import LlamaConfig, LlamaForCausalLM

    from runner.plan.estimate import ModelShape, TrainSetup, estimate_memory

    cases = {  # name: (model keys, setup keys)
        "logits-dominated, checkpointing": (dict(vocab_size=16384), {}),
        "layer-dominated, checkpointing": (dict(vocab_size=512, intermediate_size=3072), {}),
        "layer-dominated, no checkpointing": (dict(vocab_size=512, intermediate_size=3072), dict(grad_ckpt=False)),
        "logits-dominated, no checkpointing": (dict(vocab_size=16384), dict(grad_ckpt=False)),
        "full fine-tune, checkpointing": (dict(vocab_size=512, intermediate_size=3072), dict(method="full")),
    }
    batch, seq, results = 2, 256, []
    for name, (model_keys, setup_keys) in cases.items():
        keys = {"vocab_size": 8192, "hidden_size": 512, "num_hidden_layers": 4, "intermediate_size": 1536,
                "num_attention_heads": 8, "num_key_value_heads": 2, "tie_word_embeddings": False, **model_keys}
        s = TrainSetup(**{"method": "lora", "seq_len": seq, "micro_batch": batch, "lora_r": 8, "lora_kernels": False,
                          "optimizer": "sgd", **setup_keys})
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(attn_implementation="sdpa", **keys)).to(torch.bfloat16)
        if s.grad_ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
            model.enable_input_require_grads()
        if s.method == "lora":
            model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", lora_dropout=0.0))
        model.train()
        ids = torch.randint(0, keys["vocab_size"], (batch, seq))
        mask = torch.ones(batch, seq, dtype=torch.long)
        mask[1, seq - 16:] = 0  # one padded row, so sdpa gets a mask as in unpacked training

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(input_ids=ids, attention_mask=mask, labels=ids)
            loss = out.loss
            del out
            loss.backward()

        step()  # warm-up; then gradients are freed, as the Trainer's zero_grad(set_to_none=True) does
        model.zero_grad(set_to_none=True)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                     with_stack=True) as prof:
            step()
        with tempfile.TemporaryDirectory() as tmp:
            prof.export_memory_timeline(os.path.join(tmp, "t.json"), device="cpu")
            sizes = json.loads(Path(tmp, "t.json").read_text())[1]
        totals = [sum(x) for x in sizes]
        measured = max(totals) - totals[0]
        est = estimate_memory(ModelShape.from_config({"model_type": "llama", **keys}), s)
        predicted = sum(est.breakdown[k] for k in ("gradients", "activations", "logits"))
        results.append({"case": name, "measured_mb": round(measured / 1e6, 2),
                        "predicted_mb": round(predicted / 1e6, 2),
                        "error_pct": round(100 * (predicted / measured - 1), 1), "phase": est.peak_phase})
        print(f"{name:36s} measured {measured / 1e6:8.2f} MB  planner {predicted / 1e6:8.2f} MB  "
              f"({100 * (predicted / measured - 1):+.1f}%)", flush=True)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gpu", help="measure an Axolotl config on this machine's GPU")
    g.add_argument("config", type=Path)
    g.add_argument("--steps", type=int, default=6, help="optimizer steps (the first includes warm-up)")
    g.add_argument("--out", type=Path, help="write the result as JSON here")
    sub.add_parser("cpu-check", help="check the planner's activation terms on the CPU (no GPU needed)")
    args = ap.parse_args()
    if args.cmd == "cpu-check":
        cpu_check()
        return 0
    result = measure_gpu(args.config, args.steps)
    result["planner"] = planner_estimate(result["raw_config"], result["tokens_per_micro_batch_max"])
    est, got = result["planner"]["peak_allocated_gib"], result["peak_allocated_gib"]
    result["planner"]["error_pct"] = round(100 * (est / got - 1), 1)
    text = json.dumps(result, indent=2, default=str)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(f"peak allocated {got:.2f} GiB (reserved {result['peak_reserved_gib']:.2f}); planner {est:.2f} GiB "
          f"({result['planner']['error_pct']:+.1f}%); longest micro batch {result['tokens_per_micro_batch_max']} "
          "tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
