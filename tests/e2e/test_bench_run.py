"""`tunebook bench --vs naive` on the real SmolLM2 with real Axolotl on CPU: both configurations run, and the
result JSON carries the steady-state throughput, the exact configs, versions and hardware."""
from __future__ import annotations

import datetime as dt
import json

import pytest

from tests.conftest import REPO, make_project, run_cli

pytestmark = pytest.mark.e2e

RECIPE = """\
base_model: {model}
data: {{train: data/train.jsonl, format: alpaca}}
training: {{max_steps: 50, micro_batch_size: 2, sequence_len: 256, learning_rate: 1.0e-4}}
stages: [sft]
"""


def test_bench_vs_naive_on_cpu(tmp_path, smollm2):
    data = REPO / "recipes" / "data" / "ci-mini"
    root = make_project(tmp_path, {"tiny": RECIPE.format(model=smollm2)},
                        {"data/train.jsonl": (data / "train.jsonl").read_text()})
    r = run_cli("bench", "tiny", "--vs", "naive", "--steps", "2", "--warmup", "1", cwd=root,
                env={"TUNEBOOK_DEVICE": "cpu"}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    path = root / "benchmarks" / "results" / f"{dt.date.today().isoformat()}-cpu-tiny.json"
    assert f"result: {path.relative_to(root)}" in r.stdout and "naive" in r.stdout
    res = json.loads(path.read_text())
    assert res["recipe"] == "tiny" and res["steps"] == {"warmup": 1, "measured": 2}
    assert res["command"].startswith("tunebook bench tiny --vs naive --steps 2 --warmup 1")
    assert res["hardware"]["cuda"] is False and res["gpu"]["label"] == "cpu"
    assert res["packages"]["axolotl"] and res["packages"]["torch"]
    for name in ("recipe", "naive"):
        v = res["variants"][name]
        assert v["measured_steps"] == 2 and v["timing_source"] == "tokens/train_per_sec_per_gpu"
        assert v["tokens_per_s"] > 0 and 0 < v["trainable_tokens_per_s"] <= v["tokens_per_s"]
        assert len(v["step_seconds"]) == 2 and v["samples_per_s"] > 0
        assert v["config"]["max_steps"] == 3 and v["config"]["save_strategy"] == "no"
        assert v["config"]["output_dir"] == f"<root>/runs/tiny/bench/{name}/output"
        assert v["mfu"]["planner"] is None and "no GPU" in v["mfu"]["why_null"]
        assert v["memory"] is None and v["flops_per_token"]["per_token_params"] > 0
        assert (root / "runs" / "tiny" / "bench" / name / "train.log").is_file()
    naive = res["variants"]["naive"]
    assert naive["config"]["optimizer"] == "adamw_torch" and naive["config"]["micro_batch_size"] == 2
    assert naive["config"]["gradient_accumulation_steps"] == 4 and naive["config"]["sample_packing"] is False
    assert any("paged optimizers need CUDA" in c for c in naive["changes"])
    ratio = res["ratio"]
    assert ratio["tokens_per_s"] == pytest.approx(
        res["variants"]["recipe"]["tokens_per_s"] / naive["tokens_per_s"], rel=1e-2)
    assert ratio["trainable_tokens_per_s"] > 0
