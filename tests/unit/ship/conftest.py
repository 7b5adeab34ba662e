"""What the ship tests share: a project holding recipe `faq` with a fabricated run folder (hand-written files:
bookkeeping only, nothing trained)."""
from __future__ import annotations

from pathlib import Path

from tests.conftest import make_project

FAQ_RECIPE = """
    name: faq
    description: Answers FAQ questions.
    base_model: ./models/base
    data: {train: data/train.jsonl, format: alpaca, held_out: data/held.jsonl}
    stages: [sft, merge, eval]
    """


def faq_project(root: Path, run_files: dict[str, str | bytes]) -> Path:
    """The `faq` project at `root`, with `run_files` (path under runs/faq/ -> text or bytes) written."""
    files = {"data/train.jsonl": '{"instruction": "a", "output": "b"}\n',
             "data/held.jsonl": '{"instruction": "a", "output": "b"}\n',
             "models/base/config.json": "{}"}
    root = make_project(root, {"faq": FAQ_RECIPE}, files)
    run = root / "runs/faq"
    for rel, data in run_files.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_bytes(data if isinstance(data, bytes) else data.encode())
    return root
