#!/usr/bin/env python3
"""Adapter variants on hr-bot (issue 20 item 2): the hr-bot recipe's training as shipped (its preset, its
derived settings, seed 42), once per `training.lora.variant` (lora, dora, rslora, pissa), each scored by the eval
stage on hr-bot's 45 held-out questions (`contains`, as docs/quality.md reports hr-bot). The forgetting check is
left out (it costs ~2 minutes a run and does not depend on the variant's speed or score).

Usage: .venv/bin/python benchmarks/lora_variants.py [VARIANT ...]   (default: all four)
Needs `make model`. Trains in a temporary project (benchmarks/temp_project.py), one variant after the other (never
two trainings at once on 2 cores); writes benchmarks/results/lora-variants-hr-bot-<date>.json with the command,
each variant's kept epoch, held-out scores, seconds per step and training time. ~8-12 minutes a variant.
"""
from __future__ import annotations

import json
import sys

import yaml

import temp_project as tp

VARIANTS = ("lora", "dora", "rslora", "pissa")
HR = tp.ROOT / "recipes" / "data" / "hr-bot"


def recipe(variant: str) -> str:
    """recipes/hr-bot.yaml with its data in the project, the variant set, and [sft, eval]."""
    rec = yaml.safe_load((tp.ROOT / "recipes" / "hr-bot.yaml").read_text())
    rec.pop("name", None)
    rec["base_model"] = str(tp.MODEL)
    rec["data"].update(train="data/train.jsonl", held_out="data/held_out.jsonl")
    rec["stages"] = ["sft", "eval"]
    # A measurement, not a release: no forgetting check, no gates (a variant under a gate would end the run),
    # and no base-model answers (the same for every variant).
    for key in ("forgetting", "gates"):
        rec["eval"].pop(key, None)
    rec["eval"]["compare_base"] = False
    training = rec.setdefault("training", {})
    training.setdefault("lora", {})["variant"] = variant
    return yaml.safe_dump(rec, sort_keys=False)


def main() -> int:
    variants = sys.argv[1:] or list(VARIANTS)
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        sys.exit(f"unknown variant(s) {', '.join(bad)}; choose from {', '.join(VARIANTS)}")
    runs = []
    for v in variants:
        data = {"data/train.jsonl": HR / "train.jsonl", "data/held_out.jsonl": HR / "held_out.jsonl"}
        run = tp.train(recipe(v), data)
        runs.append({"variant": v, **run})
        print(json.dumps(runs[-1]), flush=True)
    result = {"command": " ".join(["benchmarks/lora_variants.py", *sys.argv[1:]]), **tp.machine(),
              "recipe": "recipes/hr-bot.yaml", "runs": runs}
    print(tp.write_result("lora-variants-hr-bot", result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
