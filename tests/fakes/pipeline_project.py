"""A small project for the pipeline's bookkeeping tests (tests/unit/pipeline): data files, recipes over the tiny
base model (conftest.build_tiny_base), and helpers that run `tunebook` in-process and read what it wrote.
The training itself is the stand-in Axolotl's (tests/fakes/axolotl_standin.py, fixture `standin`)."""
from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import make_project, status_rows, tunebook

ROWS = "".join(json.dumps({"instruction": f"What is item {i}?", "output": f"Item {i} is number {i}."}) + "\n"
               for i in range(24))
HELD = "".join(json.dumps({"instruction": f"What is thing {i}?", "output": f"Thing {i}."}) + "\n" for i in range(4))
PREFS = "".join(json.dumps({"prompt": f"Question {i}?", "chosen": f"Polite answer {i}.",
                            "rejected": f"Rude answer {i}."}) + "\n" for i in range(16))
FILES = {"data/train.jsonl": ROWS, "data/held.jsonl": HELD, "data/prefs.jsonl": PREFS}

# SFT -> DPO (on the merged SFT model) -> merge.
CHAIN = """\
base_model: {model}
data: {{train: data/train.jsonl, format: alpaca, held_out: data/held.jsonl}}
training: {{max_steps: 4, micro_batch_size: 4, sequence_len: 256}}
stages:
  - sft
  - dpo:
      data: {{train: data/prefs.jsonl, format: preference}}
      training: {{max_steps: 3, micro_batch_size: 2}}
  - merge
"""
# Six steps, a checkpoint every two.
RESUME = """\
base_model: {model}
data: {{train: data/train.jsonl, format: alpaca, held_out: data/held.jsonl}}
training: {{max_steps: 6, micro_batch_size: 4, sequence_len: 256}}
axolotl: {{save_steps: 2}}
stages: [sft, merge]
"""
# A real eval stage (generation with the tiny model) with one gate.
EVAL = """\
base_model: {model}
data: {{train: data/train.jsonl, format: alpaca, held_out: data/held.jsonl}}
training: {{max_steps: 2, micro_batch_size: 4, sequence_len: 256}}
eval: {{max_new_tokens: 4, gates: {{exact_match: {threshold}}}}}
stages: [sft, merge, eval]
"""
# Epochs with a validation split: one checkpoint and one eval per epoch, the best epoch kept.
EPOCHS = """\
base_model: {model}
data: {{train: data/train.jsonl, format: alpaca, validation_fraction: 0.25}}
training: {{epochs: 3, micro_batch_size: 6, sequence_len: 256, sample_packing: false}}
stages: [sft]
"""


def new_project(where: Path, model: Path, text: str, name: str = "r", **fmt) -> Path:
    return make_project(where, {name: text.format(model=model, **fmt)}, dict(FILES))


def tb(root: Path, *args: str):
    """`tunebook --root ROOT ARGS` in-process."""
    return tunebook("--root", str(root), *args)


def train(root: Path, *args: str, name: str = "r", ok: bool = True):
    r = tb(root, "train", name, "--quiet", *args)
    if ok:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def lock(root: Path, name: str = "r") -> dict:
    return json.loads((root / "runs" / name / "tunebook.lock").read_text())


def manifest(root: Path, name: str = "r") -> dict:
    return json.loads((root / "runs" / name / "manifest.json").read_text())


def status(root: Path, name: str = "r") -> dict[str, tuple[str, str]]:
    r = tb(root, "status", name)
    assert r.returncode == 0, r.stderr[-2000:]
    return status_rows(r.stdout)


def states(root: Path, name: str = "r") -> dict[str, str]:
    return {s: v[0] for s, v in status(root, name).items()}


def trained_stages(standin) -> list[str]:
    """The stage folders the stand-in was asked to train in, in order."""
    return [Path(c["config"]).parent.name for c in standin.calls("train")]
