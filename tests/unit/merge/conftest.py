"""Two source recipes trained by the stand-in Axolotl (sft, eval-less, merge) over the tiny base, and merge
recipes over them: the merge bookkeeping without a real training."""
from __future__ import annotations

import pytest

from tests.fakes.pipeline_project import FILES, train
from tests.conftest import make_project

SOURCE = """\
base_model: {model}
data: {{train: data/train.jsonl, format: alpaca, held_out: data/held.jsonl}}
training: {{max_steps: 2, micro_batch_size: 4, sequence_len: 256}}
stages: [sft, merge]
"""


@pytest.fixture
def merge_proj(tmp_path, tiny_base, standin):
    """merge_proj(merge_block) -> project root with sources a and b trained (stand-in) and recipe m merging them."""
    def make(merge_block: str, train_sources: bool = True):
        root = make_project(tmp_path / "proj", {"a": SOURCE.format(model=tiny_base),
                                                "b": SOURCE.format(model=tiny_base),
                                                "m": f"base_model: {tiny_base}\n{merge_block}"}, dict(FILES))
        if train_sources:
            for name in ("a", "b"):
                train(root, name=name)
        return root
    return make
