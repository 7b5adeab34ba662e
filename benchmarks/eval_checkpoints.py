#!/usr/bin/env python3
"""Held-out "contains the key fact" score of every epoch checkpoint of a training stage.

tunebook keeps the epoch with the best validation loss; this measures what each epoch would have scored on the
held-out file, which is how the epoch and learning-rate rules in docs/quality.md were chosen. Greedy answers,
the stage's own chat template, end-of-turn stopping: the same generation as the eval stage.

Usage: .venv/bin/python benchmarks/eval_checkpoints.py runs/hr-bot/sft recipes/data/hr-bot/held_out.jsonl
       [checkpoint-396 ...]   (default: every checkpoint)
Writes <stage dir>/held_out_by_checkpoint.json.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml  # noqa: E402

from runner import metrics as mx  # noqa: E402
from runner import trainlog  # noqa: E402
from runner.evaluate import chat_template  # noqa: E402
from runner.fsutil import atomic_write_text  # noqa: E402
from runner.generate import ModelSpec, generate, load_tokenizer  # noqa: E402


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    stage, held = Path(sys.argv[1]), [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
    cfg = yaml.safe_load((stage / "axolotl.yaml").read_text())
    convs = [[{"role": "user", "content": r["instruction"]}] for r in held]
    names = sys.argv[3:] or [c.name for c in trainlog.checkpoints(stage / "output")]
    tokenizer = str(stage / "output") if (stage / "output" / "tokenizer.json").is_file() else cfg["base_model"]
    template = chat_template(cfg, load_tokenizer(ModelSpec(cfg["base_model"])))
    results = {}
    for name in names:
        ck = stage / "output" / name
        spec = (ModelSpec(cfg["base_model"], adapter=str(ck), label=name) if (ck / "adapter_config.json").is_file()
                else ModelSpec(str(ck), tokenizer=tokenizer, label=name))
        preds, _ = generate(spec, convs, template, 64, 16, quiet=True)
        ok = [mx.contains(p["text"], r["output"], r.get("key_fact")) == 1.0 for r, p in zip(held, preds)]
        results[name] = {"contains": round(sum(ok) / len(ok), 4), "correct": sum(ok), "rows": len(ok),
                         "stops": round(sum(p["stopped"] for p in preds) / len(preds), 4),
                         "wrong": {r["id"]: p["text"] for r, p, o in zip(held, preds, ok) if not o}}
        print(f"{name}: contains {sum(ok)}/{len(ok)} = {results[name]['contains']:.3f}, "
              f"stops {results[name]['stops']:.0%}", flush=True)
    atomic_write_text(stage / "held_out_by_checkpoint.json", json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
