"""Adapter variants (training.lora.variant) trained for real: SmolLM2 and Axolotl 0.19 on CPU, a few steps each on
the ci-mini rows. DoRA and rsLoRA reach peft as Axolotl's keys; PiSSA's adapter, relative to a residual base that
exists only inside the training process, is converted by tunebook into a rank-2r LoRA on the original base, and
merge-lora builds the model from that. The held-out rates of each variant on hr-bot are in docs/quality.md."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.conftest import REPO, make_project, run_cli

pytestmark = pytest.mark.e2e

RECIPE = """\
base_model: {model}
data: {{train: data/train.jsonl, format: alpaca}}
training:
  max_steps: 6
  learning_rate: 2.0e-3
  micro_batch_size: 4
  sequence_len: 256
  lora: {{r: 8, alpha: 16, variant: {variant}}}
stages: [{stages}]
"""


@pytest.fixture(scope="module")
def proj(tmp_path_factory, smollm2):
    root = tmp_path_factory.mktemp("variants")
    recipes = {"dora": RECIPE.format(model=smollm2, variant="dora", stages="sft"),
               "rslora": RECIPE.format(model=smollm2, variant="rslora", stages="sft"),
               "pissa": RECIPE.format(model=smollm2, variant="pissa", stages="sft, merge")}
    make_project(root, recipes)
    (root / "data").mkdir()
    shutil.copy(REPO / "recipes" / "data" / "ci-mini" / "train.jsonl", root / "data" / "train.jsonl")
    return root


def _losses(stage_dir: Path) -> list[float]:
    from runner.train import trainlog

    return [h["loss"] for h in trainlog.history(stage_dir) if h.get("loss") is not None]


def _tensors(path: Path) -> dict:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k).float() for k in f.keys()}


@pytest.mark.parametrize("variant,key", [("dora", "use_dora"), ("rslora", "use_rslora")])
def test_dora_and_rslora_train_as_peft_builds_them(proj, variant, key):
    r = run_cli("train", variant, "--quiet", cwd=proj)
    assert r.returncode == 0, r.stderr[-3000:]
    sft = proj / "runs" / variant / "sft"
    adapter = json.loads((sft / "output" / "adapter_config.json").read_text())
    assert adapter[key] is True and adapter["r"] == 8
    other = {"use_dora", "use_rslora"} - {key}
    assert not any(adapter.get(k) for k in other)
    weights = _tensors(sft / "output" / "adapter_model.safetensors")
    # DoRA trains a magnitude vector per adapted weight besides A and B.
    assert any("lora_magnitude_vector" in k for k in weights) == (variant == "dora")
    losses = _losses(sft)
    assert len(losses) == 6 and min(losses[-3:]) < losses[0], losses


def test_pissa_is_shipped_as_lora_on_the_original_base(proj, smollm2):
    r = run_cli("train", "pissa", "--quiet", cwd=proj)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "sft: PiSSA adapter converted to a rank-16 LoRA adapter on the original base model" in r.stderr
    sft = proj / "runs" / "pissa" / "sft"
    out = sft / "output"
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"], cfg["init_lora_weights"]) == (16, 32, True)
    init_cfg = json.loads((sft / "pissa_init" / "adapter_config.json").read_text())
    assert (init_cfg["r"], init_cfg["init_lora_weights"]) == (8, True)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    # The initial adapter saved inside Axolotl is PiSSA's: B0·A0 is about the best rank-8 part of each weight.
    # PiSSA's fast SVD (4 iterations) may turn within singular values that are nearly equal (24.9 and 24.5 here),
    # so what is compared is how much of the weight it captures: the residual is within 1% of the optimum, and
    # far from what a zero or random start leaves (the whole weight).
    base = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    init = _tensors(sft / "pissa_init" / "adapter_model.safetensors")
    a_key = next(k for k in init if k.endswith("layers.0.self_attn.q_proj.lora_A.weight"))
    b0a0 = init[a_key.replace("lora_A", "lora_B")] @ init[a_key] * (init_cfg["lora_alpha"] / init_cfg["r"])
    w = base.model.layers[0].self_attn.q_proj.weight.detach()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    optimum = torch.linalg.norm(w - (u[:, :8] * s[:8]) @ vh[:8])
    residual = torch.linalg.norm(w - b0a0)
    assert residual <= 1.01 * optimum and residual < 0.8 * torch.linalg.norm(w), (residual, optimum)

    # The shipped adapter on the original base is the model that trained; the last checkpoint's adapter, as
    # Axolotl saved it (relative to the residual base), would add B0·A0 a second time.
    from peft import PeftModel

    tok = AutoTokenizer.from_pretrained(out)
    rows = [json.loads(x) for x in (proj / "data" / "train.jsonl").read_text().splitlines()[:4]]
    texts = [tok.apply_chat_template([{"role": "user", "content": x["instruction"]},
                                      {"role": "assistant", "content": x["output"]}], tokenize=False) for x in rows]

    def loss(model) -> float:
        with torch.no_grad():
            enc = tok(texts, return_tensors="pt", padding=True)
            labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
            return model(**enc, labels=labels).loss.item()

    base_loss = loss(base)
    shipped = PeftModel.from_pretrained(base, out).eval()
    shipped_loss = loss(shipped)
    merged = AutoModelForCausalLM.from_pretrained(sft.parent / "merge" / "merged", dtype=torch.float32).eval()
    merged_loss = loss(merged)
    raw_dir = proj / "raw-checkpoint"
    ck = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    raw_dir.mkdir()
    shutil.copy(ck / "adapter_model.safetensors", raw_dir)
    raw_cfg = {**json.loads((ck / "adapter_config.json").read_text()), "init_lora_weights": True}
    (raw_dir / "adapter_config.json").write_text(json.dumps(raw_cfg))
    fresh = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    raw_loss = loss(PeftModel.from_pretrained(fresh, raw_dir).eval())
    assert shipped_loss < base_loss, (shipped_loss, base_loss)
    assert merged_loss == pytest.approx(shipped_loss, rel=0.01)
    assert raw_loss > base_loss + 1.0, (raw_loss, base_loss)
