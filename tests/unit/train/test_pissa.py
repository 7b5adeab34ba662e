"""runner.train.pissa: a trained PiSSA adapter as plain LoRA on the original base, checked against peft's own
conversion and against the PiSSA model's outputs, on a tiny random Llama (no training: the adapter is moved
by hand as training would move it)."""
from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from runner.errors import TunebookError
from runner.train import pissa


def _tiny(tmp_path):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    base = LlamaForCausalLM(cfg).eval()
    base.save_pretrained(tmp_path / "base")  # PiSSA rewrites the base weights in place: keep the original
    return base


@pytest.mark.parametrize("rslora", [False, True])
def test_the_converted_adapter_on_the_original_base_is_the_trained_pissa_model(tmp_path, rslora):
    base = _tiny(tmp_path)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", use_rslora=rslora,
                                            init_lora_weights="pissa"))
    model.peft_config["default"].init_lora_weights = True  # as runner.train.pissa_plugin saves the init
    model.save_pretrained(tmp_path / "init")
    model.peft_config["default"].init_lora_weights = "pissa"
    with torch.no_grad():  # "training": every adapter weight moves
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(0.05 * torch.randn_like(p))
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    with torch.no_grad():
        want = model(ids).logits
    model.save_pretrained(tmp_path / "trained")
    model.save_pretrained(tmp_path / "peft", path_initial_model_for_weight_conversion=str(tmp_path / "init"))

    assert pissa.convert(tmp_path / "trained", tmp_path / "init") == 8
    ours, peft_own = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("trained", "peft"))
    assert ours.keys() == peft_own.keys() and all(torch.equal(ours[k], peft_own[k]) for k in ours)
    ours_cfg, peft_cfg = (json.loads((tmp_path / d / "adapter_config.json").read_text()) for d in ("trained", "peft"))
    assert (ours_cfg["r"], ours_cfg["init_lora_weights"]) == (8, True)
    assert ours_cfg["lora_alpha"] == pytest.approx(peft_cfg["lora_alpha"])

    original = LlamaForCausalLM.from_pretrained(tmp_path / "base").eval()
    with torch.no_grad():
        got = PeftModel.from_pretrained(original, tmp_path / "trained").eval()(ids).logits
        plain = LlamaForCausalLM.from_pretrained(tmp_path / "base").eval()(ids).logits
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    assert not torch.allclose(plain, want, atol=1e-3)  # the adapter matters: the test could fail

    with pytest.raises(TunebookError, match="converted already or trained without PiSSA"):
        pissa.convert(tmp_path / "trained", tmp_path / "init")


def test_a_missing_initial_adapter_is_an_error_that_says_to_retrain(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, "init_lora_weights": "pissa_niter_4"}))
    with pytest.raises(TunebookError) as e:
        pissa.convert(d, tmp_path / "pissa_init")
    assert "initial adapter is missing" in str(e.value) and "--force" in e.value.fix
    assert pissa.is_pissa({"peft_init_lora_weights": "pissa_niter_4"}) and not pissa.is_pissa({})


def test_only_an_adapter_saved_as_pissa_is_converted(tmp_path):
    # A dpo stage continuing an SFT adapter (from: adapter) loads it as saved: PiSSA's init never ran there.
    assert not pissa.trained_as_pissa(tmp_path)  # no adapter at all
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 16, "init_lora_weights": True}))
    assert not pissa.trained_as_pissa(tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 8, "init_lora_weights": "pissa_niter_4"}))
    assert pissa.trained_as_pissa(tmp_path)
    (tmp_path / "adapter_config.json").write_text("[1, 2]")
    assert not pissa.trained_as_pissa(tmp_path)
