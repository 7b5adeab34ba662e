#!/usr/bin/env python3
"""Held-out score of every epoch checkpoint of a recipe's training stage, as its eval stage would score it.

tunebook keeps the epoch with the best validation loss; this measures what each epoch would have scored on the
held-out file, which is how the epoch and learning-rate rules in docs/quality.md were chosen. It calls the eval
stage's own pieces: the prepared held-out rows (with the recipe's system prompt), the chat template training
used, greedy generation with end-of-turn stopping, and the same scoring (`contains`, `stops`).

Usage: .venv/bin/python benchmarks/eval_checkpoints.py [--root PROJECT] <recipe> [checkpoint-396 ...]
(default: every checkpoint; PROJECT defaults to this checkout)
Needs a finished `tunebook train <recipe>`. Writes runs/<recipe>/<stage>/held_out_by_checkpoint.json.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runner.evaluate import metrics as mx  # noqa: E402
from runner.train import trainlog  # noqa: E402
from runner.evaluate.stage import chat_template, eval_settings, held_out_rows, score_rows  # noqa: E402
from runner.fsutil import atomic_write_text  # noqa: E402
from runner.evaluate.generate import ModelSpec, generate, load_tokenizer  # noqa: E402
from runner.recipe.load import TRAIN_KINDS, load_recipe  # noqa: E402
from runner.recipe.resolve import resolve  # noqa: E402


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    args = sys.argv[1:]
    root = ROOT
    if args[:1] == ["--root"]:  # another project (benchmarks/temp_project.py keeps none: a copy of one)
        root, args = Path(args[1]), args[2:]
    res = resolve(load_recipe(args[0], root))
    stage = next(s for s in res.stages if s.kind in TRAIN_KINDS)
    settings = eval_settings(res)
    _, rows = held_out_rows(res, stage, settings)
    base = str(stage.config["base_model"])
    template = chat_template(stage.config, load_tokenizer(ModelSpec(base)))
    out_dir = stage.output_dir
    tokenizer = str(out_dir) if (out_dir / "tokenizer.json").is_file() else base
    names = args[1:] or [c.name for c in trainlog.checkpoints(out_dir)]
    results = {}
    for name in names:
        ck = out_dir / name
        spec = (ModelSpec(base, adapter=str(ck), label=name) if (ck / "adapter_config.json").is_file()
                else ModelSpec(str(ck), tokenizer=tokenizer, label=name))
        preds, _ = generate(spec, [r["conversation"] for r in rows], template, settings["max_new_tokens"],
                            settings["batch_size"], quiet=True)
        scores = score_rows(rows, preds, ["contains"], None)
        agg = mx.aggregate(scores)
        correct = sum(s["contains"] == 1.0 for s in scores)
        results[name] = {"contains": round(agg["contains"], 4), "correct": correct, "rows": len(rows),
                         "stops": round(agg["stops"], 4),
                         "wrong": {r["id"]: p["text"] for r, p, s in zip(rows, preds, scores) if s["contains"] < 1}}
        print(f"{name}: contains {correct}/{len(rows)} = {agg['contains']:.3f}, stops {agg['stops']:.0%}", flush=True)
    atomic_write_text(stage.run_dir / "held_out_by_checkpoint.json", json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
