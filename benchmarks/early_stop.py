#!/usr/bin/env python3
"""Early stopping on the 128-row company-facts set (benchmarks/data/company-facts/, issue 19 item 5): the same
recipe trained with the shipped defaults and again with `training: {early_stopping: false}`, then scored on the
held-out questions by its eval stage. The recipe names only the model and the data (every other setting derived).

Usage: .venv/bin/python benchmarks/early_stop.py [--only on|off]
Needs `make model`. Trains in a temporary project (benchmarks/temp_project.py); writes
benchmarks/results/early-stop-company-facts-<date>[-on|-off].json with the command, each run's rule, epochs, stop
reason, validation losses, kept epoch, held-out `contains` and training time. One training at a time: on 2 cores two
trainings at once slow each other several times over. Each run is ~5-12 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import sys

import temp_project as tp

DATA = tp.ROOT / "benchmarks" / "data" / "company-facts"
RECIPE = """\
base_model: {model}
data:
  train: data/train.jsonl
  format: alpaca
  held_out: data/held_out.jsonl
stages: [sft, eval]
eval:
  metrics: [contains]
  compare_base: false
{training}"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=("on", "off"), help="run only the variant with early stopping on or off")
    args = ap.parse_args()
    runs = []
    for on in [v == "on" for v in ([args.only] if args.only else ["on", "off"])]:
        training = "" if on else "training: {early_stopping: false}\n"
        run = tp.train(RECIPE.format(model=tp.MODEL, training=training),
                       {"data/train.jsonl": DATA / "train.jsonl", "data/held_out.jsonl": DATA / "held_out.jsonl"})
        runs.append({"early_stopping": on, **run})
    result = {"command": " ".join(["benchmarks/early_stop.py", *sys.argv[1:]]), **tp.machine(),
              "data": str(DATA.relative_to(tp.ROOT)), "runs": runs}
    print(tp.write_result("early-stop-company-facts" + (f"-{args.only}" if args.only else ""), result))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
