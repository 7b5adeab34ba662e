"""The 4-bit QLoRA path and the derived defaults, on the real SmolLM2 with real Axolotl (CPU). `make train` on the CI
recipe is in test_ci_mini_run.py, with the tests that use its run."""
from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.conftest import REPO, generate_reply, make_project, run_cli

pytestmark = pytest.mark.e2e


QLORA = """\
base_model: {model}
preset: qlora-t4
data: {{train: data/train.jsonl, format: alpaca}}
training: {{method: qlora, max_steps: 3, micro_batch_size: 4, sequence_len: 256}}
stages: [sft, merge]
"""


def test_qlora_preset_on_cpu(tmp_path, smollm2):
    data = REPO / "recipes" / "data" / "ci-mini" / "train.jsonl"
    root = make_project(tmp_path, {"q": QLORA.format(model=smollm2)}, {"data/train.jsonl": data.read_text()})
    r = run_cli("train", "q", "--quiet", cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "adapted the preset to the machine (no CUDA GPU): fp16 off, optimizer paged_adamw_8bit -> adamw_torch" in r.stderr
    cfg = yaml.safe_load((root / "runs/q/sft/axolotl.yaml").read_text())
    assert cfg["adapter"] == "qlora" and cfg["load_in_4bit"] is True
    assert cfg["bnb_config_kwargs"]["bnb_4bit_use_double_quant"] is True
    log = (root / "runs/q/sft/train.log").read_text()
    assert "Linear4bit" in log or "4bit" in log.lower()
    assert (root / "runs/q/sft/output/adapter_model.safetensors").is_file()
    merged = root / "runs/q/merge/merged"
    assert json.loads((merged / "config.json").read_text()).get("quantization_config") is None
    assert len(generate_reply(merged).strip()) > 0


DERIVED = """\
base_model: {model}
data: {{train: data/train.jsonl}}
training: {{epochs: 2}}
stages: [sft]
"""


def test_derived_defaults_pack_report_trained_share_and_keep_an_epoch(tmp_path, smollm2):
    """A recipe naming only a model and data (epochs cut to 2 to keep the test short): packing is derived,
    the trained share is reported, and the epoch kept is chosen on the validation split and recorded."""
    # 100 rows: the fewest that get a validation split (runner.recipe.derive), so the fewest steps per epoch.
    rows = (REPO / "recipes" / "data" / "hr-bot" / "train.jsonl").read_text().splitlines()[:100]
    root = make_project(tmp_path, {"d": DERIVED.format(model=smollm2)}, {"data/train.jsonl": "\n".join(rows) + "\n"})
    r = run_cli("train", "d", "--quiet", cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    run = root / "runs" / "d"
    cfg = yaml.safe_load((run / "sft" / "axolotl.yaml").read_text())
    assert cfg["sample_packing"] is True and cfg["micro_batch_size"] == 1
    assert cfg["sequence_len"] == 128 and cfg["gradient_accumulation_steps"] == 1 and cfg["lora_dropout"] == 0.0
    assert cfg["num_epochs"] == 2  # the recipe's value beats the derived 10
    assert "SmolLM" not in cfg["chat_template_jinja"] and cfg["eot_tokens"] == ["<|im_end|>"]
    # ~10% of the 100 rows (fewer if near-duplicates were dropped) became the validation split.
    n_val = sum(1 for _ in open(run / "data" / "main" / "validation.jsonl"))
    n_train = sum(1 for _ in open(run / "data" / "main" / "train.jsonl"))
    assert 8 <= n_val <= 10 and n_train + n_val <= 100
    share = re.search(r"sft: (\d+)% of the computed tokens were trained \((\d+) of (\d+)\)", r.stderr)
    assert share, r.stderr[-2000:]
    trained, total = int(share.group(2)), int(share.group(3))
    assert 0.3 < trained / total < 0.7  # answers only, no padding, no injected system prompt
    best = json.loads((run / "sft" / "best_epoch.json").read_text())
    assert len(best["eval_loss_per_epoch"]) == 2 and best["epochs_run"] == pytest.approx(2, abs=0.1)
    assert best["eval_loss"] <= best["lowest_eval_loss"] * (1 + best["tolerance"])
    assert f"sft: kept epoch {best['epoch']:g} of" in r.stderr
    manifest = json.loads((run / "manifest.json").read_text())["stages"]["sft"]
    assert manifest["best_epoch"]["checkpoint"] == best["checkpoint"]
    assert manifest["metrics"]["trained_share"] == pytest.approx(trained / total, abs=0.01)
    kept = run / "sft" / "output" / best["checkpoint"] / "adapter_model.safetensors"
    assert kept.read_bytes() == (run / "sft" / "output" / "adapter_model.safetensors").read_bytes()
