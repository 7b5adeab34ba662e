#!/usr/bin/env python3
"""Seconds per training step of SmolLM2-135M on this CPU, per adapter setting: what the CPU defaults rest on.

One step = forward + backward + AdamW on one packed sequence of 128 tokens (half of them labelled, as in the
hr-bot packs), fp32 unless the variant says otherwise, sdpa, OMP_NUM_THREADS = cores. Variants: LoRA r16 on
all seven projections with and without dropout, LoRA on the MLP projections only, LoRA r64, a full fine-tune
(embeddings frozen), and LoRA with bf16 base weights or under bf16 autocast (fast only where the CPU has AVX-512
BF16).
Prints a JSON object and writes it to benchmarks/results/cpu-step-<date>-<avx2|avx512bf16>.json.

Usage: .venv/bin/python benchmarks/cpu_step.py [--steps 4] [--variants all-linear,all-linear-dropout,...]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runner import hardware  # noqa: E402
from runner.fsutil import atomic_write_text  # noqa: E402

MODEL = ROOT / ".cache" / "models" / "smollm2-135m-instruct"
MLP = ["gate_proj", "up_proj", "down_proj"]
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")
# name -> (LoRA settings, None for a full fine-tune; precision: fp32, bf16 base weights (peft keeps the adapter
# in fp32), or fp32 weights under bf16 autocast (what transformers' Trainer does for `bf16: true` on a CPU))
VARIANTS = {
    "all-linear": (LORA, "fp32"),
    "all-linear-dropout0.05": ({**LORA, "lora_dropout": 0.05}, "fp32"),
    "mlp-only": ({**LORA, "target_modules": MLP}, "fp32"),
    "all-linear-r64": ({**LORA, "r": 64, "lora_alpha": 128}, "fp32"),
    "full": (None, "fp32"),
    "all-linear-bf16": (LORA, "bf16"),
    "all-linear-autocast": (LORA, "autocast"),
}


def step_time(variant: str, steps: int, warmup: int = 3, seq: int = 128) -> float:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    lora, precision = VARIANTS[variant]
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=dtype, attn_implementation="sdpa")
    if lora is None:
        model.get_input_embeddings().weight.requires_grad_(False)  # tied to lm_head in SmolLM2
    else:
        model = get_peft_model(model, LoraConfig(**lora))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size - 1, (1, seq))
    labels = ids.clone()
    labels[:, : seq // 2] = -100
    times = []
    for _ in range(warmup + steps):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "autocast"):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
    return sum(times[warmup:]) / steps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(hardware.cpu_cores()))
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    flags = next((l for l in open("/proc/cpuinfo") if l.startswith("flags")), "").split()
    out = {"date": datetime.date.today().isoformat(), "command": " ".join(["benchmarks/cpu_step.py", *sys.argv[1:]]),
           "cpu": hardware.detect().cpu_name,
           "threads": torch.get_num_threads(), "avx512_bf16": "avx512_bf16" in flags, "torch": torch.__version__,
           "seq": 128, "seconds_per_step": {}}
    for v in args.variants.split(","):
        out["seconds_per_step"][v] = round(step_time(v, args.steps), 3)
        print(f"{v}: {out['seconds_per_step'][v]:.3f} s/step", file=sys.stderr, flush=True)
    # Machines change between sessions: the file name says which instruction set the figures come from.
    isa = "avx512bf16" if out["avx512_bf16"] else "avx2"
    dest = ROOT / "benchmarks" / "results" / f"cpu-step-{out['date']}-{isa}.json"
    atomic_write_text(dest, json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
