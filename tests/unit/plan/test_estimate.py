"""The planner: each part of the memory model against hand-computed values, the H100 measurements, the
tables it reads, advice, JSON and the CLI. Pure arithmetic: no torch, no network."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from runner.plan import estimate as P
from runner.errors import TunebookError

ROOT = Path(__file__).resolve().parents[3]
GIB = 1024 ** 3
# The 7.38B Llama shape measured on an H100 (../shared/gpu/README.md, `mkmodel.py l8b 4096 32 14336 32 8`).
L8B = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336,
       "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 49152, "tie_word_embeddings": False}
LIGER = {"packing": True, "liger_flce": True, "liger_rms_norm": True, "liger_glu": True}


@pytest.fixture
def l8b() -> P.ModelShape:
    return P.ModelShape.from_config(L8B, "l8b")


# ------------------------------------------------------------------------------------------------ shape
def test_parameter_counts_by_hand(l8b):
    per_layer = 4096 * 4096 * 2 + 4096 * 1024 * 2 + 3 * 4096 * 14336  # q, o; k, v; gate, up, down
    assert l8b.linear_params == 32 * per_layer == 6_979_321_856
    assert l8b.embed_params == 2 * 49152 * 4096  # untied: embedding + lm_head
    assert l8b.params == 6_979_321_856 + 402_653_184 + 65 * 4096 == 7_382_241_280
    # LoRA r=16: r * (in + out) per projection, 7 projections, 32 layers
    assert l8b.lora_params(16, "all-linear") == 32 * 16 * (8192 + 5120 + 5120 + 8192 + 3 * 18432) == 41_943_040
    assert l8b.lora_params(16, ["q_proj", "v_proj"]) == 32 * 16 * (8192 + 5120)


def test_config_variants_tied_head_dim_and_nesting():
    gemma = P.ModelShape.from_config(P._table("models.yaml")["models"]["Gemma-2-9B"]["config"])
    assert gemma.tied and gemma.head_dim == 256 and gemma.q_dim == 4096 != gemma.hidden
    assert round(gemma.params / 1e9, 2) == 9.24
    smol = P.ModelShape.from_config({"text_config": {"hidden_size": 576, "num_hidden_layers": 30,
                                                     "intermediate_size": 1536, "num_attention_heads": 9,
                                                     "num_key_value_heads": 3, "vocab_size": 49152}})
    assert smol.tied and smol.head_dim == 64 and smol.embed_params == 49152 * 576  # PretrainedConfig ties
    assert not P.ModelShape.from_config({**L8B, "tie_word_embeddings": None, "model_type": "qwen2"}).tied
    with pytest.raises(TunebookError, match="hidden_size"):
        P.ModelShape.from_config({"vocab_size": 10})


def test_shipped_table_matches_published_sizes():
    sizes = {"Llama-3.1-8B": 8.03, "Llama-3.1-70B": 70.55, "Llama-3.2-1B": 1.24, "Llama-3.2-3B": 3.21,
             "Mistral-7B-v0.3": 7.25, "Qwen2.5-7B": 7.62, "Qwen2.5-14B": 14.77, "Qwen2.5-32B": 32.76,
             "Qwen2.5-72B": 72.71, "Gemma-2-9B": 9.24, "SmolLM2-135M": 0.13, "SmolLM2-1.7B": 1.71}
    for name, billions in sizes.items():
        assert round(P.shipped_model(name).params / 1e9, 2) == billions, name


def test_load_model_shape_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(L8B))
    assert P.load_model_shape(str(folder), tmp_path).params == 7_382_241_280
    assert P.load_model_shape("m/config.json", tmp_path).hidden == 4096  # relative to the repo root
    snap = tmp_path / "hf" / "hub" / "models--acme--tiny" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps({**L8B, "num_hidden_layers": 2}))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    assert P.load_model_shape("acme/tiny", tmp_path).layers == 2
    assert P.load_model_shape("meta-llama/Llama-3.1-8B-Instruct", tmp_path).vocab == 128256
    assert P.load_model_shape(".cache/models/smollm2-135m-instruct", tmp_path).hidden == 576  # not prepared yet
    with pytest.raises(TunebookError) as err:
        P.load_model_shape("acme/unknown-model", tmp_path)
    assert "config.json" in err.value.fix


# ------------------------------------------------------------------------------------------------ memory parts
def test_qlora_weights_nf4_double_quant_and_16bit_layers(l8b):
    weights, _ = P._weights(l8b, P.TrainSetup(method="qlora"))
    lin = 6_979_321_856
    nf4 = lin // 2 + lin // 64 + lin // (64 * 256) * 4  # 4-bit + 8-bit absmax/64 + fp32 absmax/(64*256)
    assert weights == nf4 + (402_653_184 + 65 * 4096) * 2 == 4_406_255_616
    assert P._weights(l8b, P.TrainSetup(method="lora"))[0] == 7_382_241_280 * 2


def test_optimizer_states(l8b):
    n = 41_943_040
    est = P.estimate_memory(l8b, P.TrainSetup(method="lora", optimizer="adamw_torch_fused"))
    assert est.breakdown["optimizer"] == 8 * n  # two fp32 states of fp32 LoRA weights
    assert est.breakdown["lora_params"] == est.breakdown["gradients"] == 4 * n
    assert P.estimate_memory(l8b, P.TrainSetup(optimizer="adamw_8bit")).breakdown["optimizer"] == int(n * 2 * 1.016)
    paged = P.estimate_memory(l8b, P.TrainSetup(optimizer="paged_adamw_8bit"))
    assert paged.breakdown["optimizer"] == 0 and any("managed memory" in x for x in paged.notes)
    full = P.estimate_memory(l8b, P.TrainSetup(method="full", packing=True))
    assert full.breakdown["optimizer"] == 4 * l8b.params  # torch AdamW keeps bf16 states for bf16 weights


def test_activation_and_logit_terms_by_hand(l8b):
    kernels = P.TrainSetup(method="qlora", liger_rms_norm=True)
    # Axolotl's LoRA kernels keep X for qkv, o and the MLP, sdpa keeps q, k, v (repeated) and its output,
    # Liger's RMSNorm the mid residual, the MLP kernel gate and up.
    assert P._layer_bytes_per_token(l8b, kernels) == (
        2 * 4096 * 3 + 4 * 2 * 4096 + 2 * 4096 + 2 * 2 * 14336,   # 122,880
        3 * 2 * 4096 + 2 * 14336 + 2 * 4096)                       # grads in flight + recomputed output
    plain = P.TrainSetup(method="lora", lora_kernels=False)
    # PEFT's plain LoRA: one bf16 input copy per adapter; HF RMSNorm: fp32 copies; HF MLP: gate, silu, up
    saved = (3 * 2 * 4096 + 2 * 4096 + 2 * 2 * 4096 + 2 * 14336 + 2 * 16 * 7) + 4 * 2 * 4096 + 8 * 4096 \
        + 3 * 2 * 14336
    assert P._layer_bytes_per_token(l8b, plain) == (saved, 2 * 2 * 4096 + 3 * 2 * 14336 + 2 * 4096)
    assert P._logits_bytes(l8b, P.TrainSetup(), 4096) == (12 * 49152 + 2 * 4096) * 4096  # fp32 CE backward
    # Liger FLCE: chunks of next_pow2(4096 / ceil(V/h) = 342) = 512 rows of bf16 logits + input gradient
    assert P._logits_bytes(l8b, P.TrainSetup(liger_flce=True), 4096) == \
        2 * 49152 * 512 + 2 * 4096 * 512 + 2 * 4096 * 4096 + 4 * 4096


def test_checkpointing_stores_one_hidden_state_per_layer(l8b):
    s = P.TrainSetup(method="qlora", micro_batch=2, **LIGER)
    est = P.estimate_memory(l8b, s)
    saved, work = P._layer_bytes_per_token(l8b, s)
    dequant = 4096 * 14336 * 2  # the bf16 copy of the largest projection
    assert est.breakdown["activations"] == 32 * 2 * 4096 * 4096 + (saved + work) * 4096 + dequant
    no_ckpt = P.estimate_memory(l8b, P.TrainSetup(**{**s.__dict__, "grad_ckpt": False}))
    assert no_ckpt.peak_allocated_gib > est.peak_allocated_gib + 4  # every layer keeps its activations


def test_zero3_shards_and_offloads(l8b):
    full = P.TrainSetup(method="full", packing=True, zero_stage=3, n_gpus=4)
    est = P.estimate_memory(l8b, full)
    live = 2 * (6_979_321_856 // 32) * 2 + 49152 * 4096 * 2  # two gathered layers + the output head
    assert est.breakdown["weights"] == l8b.params * 2 // 4 + live
    assert est.breakdown["optimizer"] == l8b.params * 12 // 4  # fp32 master + two fp32 Adam states, sharded
    off = P.estimate_memory(l8b, P.TrainSetup(**{**full.__dict__, "offload": True, "offload_params": True}))
    assert off.breakdown["optimizer"] == 0 and off.breakdown["weights"] == live


def test_verdict_thresholds():
    assert P.verdict(8.4, 10) == "fits"
    assert P.verdict(8.5, 10) == "tight"
    assert P.verdict(9.99, 10) == "tight"
    assert P.verdict(10.0, 10) == "does not fit"


# ------------------------------------------------------------------------------------------------ measurements
# H100, Axolotl 0.19.0, seq 2048, LoRA r=16 on all seven projections, gradient checkpointing, bf16 compute.
MEASURED = [
    pytest.param(dict(method="qlora", micro_batch=2, optimizer="paged_adamw_8bit"), 5.9, id="qlora-nopack-mb2",
                 marks=pytest.mark.xfail(strict=True, reason=(
                     "at 2 x 2048 tokens the fp32 cross-entropy buffers alone put the peak above 5.9 GiB (see "
                     "test_no_packing_point_had_shorter_batches): the run's batches were shorter"))),
    pytest.param(dict(method="qlora", micro_batch=2, optimizer="adamw_torch_fused", **LIGER), 6.6,
                 id="qlora-pack-liger-mb2"),
    pytest.param(dict(method="lora", micro_batch=4, optimizer="adamw_torch_fused", **LIGER), 17.7,
                 id="lora-pack-liger-mb4"),
]


@pytest.mark.parametrize("setup,measured_gib", MEASURED)
def test_measured_points_within_15_percent(l8b, setup, measured_gib):
    est = P.estimate_memory(l8b, P.TrainSetup(seq_len=2048, grad_ckpt=True, lora_r=16, **setup))
    assert abs(est.peak_allocated_gib / measured_gib - 1) <= 0.15, est.peak_allocated_gib


def test_no_packing_point_had_shorter_batches(l8b):
    """The no-packing measurement cannot have had 2 x 2048-token batches: weights, LoRA, one bf16 hidden
    state per layer and the forward's own cross-entropy buffers (bf16 logits, their fp32 copy, the fp32
    log-softmax) already exceed 5.9 GiB by more than 15%. The planner plans that worst case (an upper
    bound) and matches the measurement for batches padded to ~850 tokens per row."""
    tokens = 2 * 2048
    weights, _ = P._weights(l8b, P.TrainSetup(method="qlora"))
    floor = weights + 41_943_040 * 4 + 32 * 2 * 4096 * tokens + (2 + 4 + 4) * 49152 * tokens
    assert floor / GIB > 5.9 * 1.15
    worst = P.estimate_memory(l8b, P.TrainSetup(method="qlora", micro_batch=2, optimizer="paged_adamw_8bit"))
    assert worst.peak_allocated_gib > 5.9  # never under the measurement
    rows = P.estimate_memory(l8b, P.TrainSetup(method="qlora", micro_batch=2, optimizer="paged_adamw_8bit",
                                               max_row_tokens=850))
    assert abs(rows.peak_allocated_gib / 5.9 - 1) <= 0.05


def test_h100_throughput_calibration(l8b):
    h100 = P.gpu_by_id("h100")
    lora = P.TrainSetup(method="lora", micro_batch=4, **LIGER)
    f = 4 * (6_979_321_856 + 49152 * 4096) + 6 * 41_943_040 + 3 * 2 * 32 * 2048 * 4096 \
        + 2 * 6_979_321_856 + 2 * 32 * 2048 * 4096
    assert P.flops_per_token(l8b, lora) == f
    tps, hours = P.estimate_time(l8b, lora, 7600 * 3600, 1, h100)
    assert tps == pytest.approx(989e12 * 0.35 / f)
    assert abs(tps / 7600 - 1) < 0.05 and hours == pytest.approx(7600 / tps)
    qtps, _ = P.estimate_time(l8b, P.TrainSetup(method="qlora", micro_batch=2, **LIGER), 1, 1, h100)
    assert abs(qtps / 6000 - 1) < 0.1


def test_tables_are_complete_and_dated():
    gpus = P.load_gpus()
    assert set(gpus) == {"t4", "l4", "a10g", "rtx3090", "rtx4090", "a100-40", "a100-80", "h100", "h200"}
    assert not gpus["t4"].bf16 and gpus["t4"].tflops == 65
    for gid in gpus:
        offers = P.prices(gid)
        assert offers and all(o["date"] and o["source"].startswith("https://") for o in offers), gid
        assert [o["usd_per_hour"] for o in offers] == sorted(o["usd_per_hour"] for o in offers)
    assert P.cost("h100", 10, 2)[0]["usd"] == round(P.prices("h100")[0]["usd_per_hour"] * 20, 2)


# ------------------------------------------------------------------------------------------------ config
def test_from_axolotl_config_reads_deepspeed_liger_and_adapter(tmp_path):
    ds = tmp_path / "ds" / "z3.json"
    ds.parent.mkdir()
    ds.write_text(json.dumps({"bf16": {"enabled": "auto"}, "zero_optimization": {
        "stage": 3, "offload_optimizer": {"device": "cpu"}, "offload_param": {"device": "cpu"}}}))
    cfg = {"adapter": "qlora", "load_in_4bit": True, "sequence_len": 4096, "micro_batch_size": 3,
           "gradient_accumulation_steps": 5, "sample_packing": True, "gradient_checkpointing": True,
           "lora_r": 32, "lora_target_linear": True, "optimizer": "adamw_torch_fused", "deepspeed": "ds/z3.json",
           "plugins": [P.LIGER_PLUGIN], "liger_fused_linear_cross_entropy": True, "liger_rms_norm": True,
           "bf16": "auto"}
    s = P.TrainSetup.from_axolotl_config(cfg, tmp_path, n_gpus=2)
    assert (s.method, s.seq_len, s.micro_batch, s.grad_accum, s.lora_r) == ("qlora", 4096, 3, 5, 32)
    assert s.packing and s.grad_ckpt and s.liger_flce and s.liger_rms_norm and not s.liger_glu
    assert (s.zero_stage, s.offload, s.offload_params, s.n_gpus, s.dtype) == (3, True, True, 2, "bf16")
    assert s.lora_targets == "all-linear" and s.lora_kernels  # Axolotl auto-enables its LoRA kernels
    ds.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    z2 = P.TrainSetup.from_axolotl_config({**cfg, "plugins": [], "rl": "dpo", "fp16": True, "bf16": False},
                                          tmp_path)
    assert (z2.zero_stage, z2.offload, z2.liger_flce, z2.lora_kernels, z2.dtype) == (2, False, False, False, "fp16")
    assert z2.tokens == 3 * 4096 * 2  # dpo: chosen and rejected in one batch
    full = P.TrainSetup.from_axolotl_config({"sequence_len": 512, "lora_mlp_kernel": False}, tmp_path)
    assert (full.method, full.dtype, full.lora_kernels) == ("full", "fp32", False)
    with pytest.raises(TunebookError, match="not found"):
        P.TrainSetup.from_axolotl_config({"deepspeed": "missing.json"}, tmp_path)


# ------------------------------------------------------------------------------------------------ advice
def test_advice_is_ordered_by_cost_and_re_estimated():
    shape = P.shipped_model("meta-llama/Llama-3.1-8B")
    setup = P.TrainSetup(method="full", seq_len=4096, micro_batch=4, grad_accum=2, grad_ckpt=False, packing=True)
    lines = P.advice(shape, setup, P.gpu_by_id("a100-40"))
    keys = ["micro batch 4 -> 1 with gradient accumulation 2 -> 8", "gradient_checkpointing: true",
            "liger_fused_linear_cross_entropy", "the qlora preset"]
    assert len(lines) == len(keys) and all(k in line for k, line in zip(keys, lines))
    peaks = [float(line.split("peak ")[1].split(" GiB")[0]) for line in lines]
    assert peaks == sorted(peaks, reverse=True)  # each step is re-estimated on top of the ones before
    assert lines[-1].endswith("(fits)") and all(line.endswith("(does not fit)") for line in lines[:-1])
    fitting = P.TrainSetup(method="qlora", packing=True, liger_flce=True)
    assert P.advice(shape, fitting, P.gpu_by_id("h100")) == []


def test_advice_ends_with_a_bigger_gpu_when_nothing_else_fits():
    shape = P.shipped_model("meta-llama/Llama-3.1-8B")
    tuned = P.TrainSetup(method="qlora", packing=True, seq_len=65536, liger_flce=True, liger_rms_norm=True,
                         zero_stage=3, offload=True, offload_params=True)
    lines = P.advice(shape, tuned, P.gpu_by_id("rtx4090"))
    assert len(lines) == 1 and lines[0].startswith("a bigger GPU: NVIDIA A100 40GB") and "/h at" in lines[0]


# ------------------------------------------------------------------------------------------------ plan, JSON, CLI
def test_plan_json_shape(l8b):
    setup = P.TrainSetup(method="qlora", micro_batch=2, **LIGER)
    plan = P.make_plan(l8b, setup, [P.gpu_by_id("t4"), P.gpu_by_id("h100")], primary="t4",
                       tokens_per_epoch=1_000_000, tokens_source="test", epochs=2)
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["peak_allocated_gib"] == pytest.approx(6.64, abs=0.01)
    assert set(data["breakdown_gib"]) == {"weights", "lora_params", "gradients", "optimizer", "activations",
                                          "logits", "overhead"}
    gpu = data["gpus"][1]
    assert gpu["id"] == "h100" and gpu["verdict"] == "fits" and gpu["tokens_per_s"] > 0
    assert gpu["hours"] == pytest.approx(2_000_000 / gpu["tokens_per_s"] / 3600, rel=1e-2)
    assert gpu["cost_usd"]["cheapest"]["usd"] > 0 and gpu["cost_usd"]["offers"]
    assert set(gpu) >= {"peak_allocated_gib", "breakdown_gib", "verdict", "tokens_per_s", "hours", "cost_usd"}


def _parse(argv: list[str]) -> argparse.Namespace:
    from runner.cli.plan import register

    parser = argparse.ArgumentParser(prog="tunebook")
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_model_form_checks_a_measured_configuration(tmp_path, monkeypatch, capsys):
    from runner.cli.plan import run_plan

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "config.json").write_text(json.dumps(L8B))
    args = _parse(["plan", "--model", str(tmp_path / "config.json"), "--method", "lora", "--seq", "2048",
                   "--micro-batch", "4", "--packing", "--liger", "--grad-ckpt", "--lora-r", "16", "--targets",
                   "all-linear", "--optimizer", "adamw_torch_fused", "--gpu", "h100", "--json"])
    assert run_plan(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert abs(data["peak_allocated_gib"] / 17.7 - 1) <= 0.15
    assert [g["id"] for g in data["gpus"]] == ["h100"] and data["gpus"][0]["verdict"] == "fits"
    args = _parse(["plan", "--model", str(tmp_path / "config.json"), "--method", "full", "--gpu", "l4"])
    assert run_plan(args) == 0
    text = capsys.readouterr().out
    assert "peak allocated" in text and "does not fit" in text and "in order of cost" in text


def test_cli_needs_exactly_one_form():
    from runner.cli.plan import run_plan

    with pytest.raises(TunebookError):
        run_plan(_parse(["plan"]))


@pytest.mark.parametrize("recipe", sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml")))
def test_plan_each_shipped_recipe_offline(recipe, monkeypatch, capsys):
    from runner.cli.plan import run_plan

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(ROOT)
    assert run_plan(_parse(["plan", recipe])) == 0
    text = capsys.readouterr().out
    for word in ("weights", "activations", "logits", "peak allocated", "verdict", "NVIDIA H100"):
        assert word in text, word


def test_cli_plans_the_recipe_of_root_not_of_the_current_folder(tmp_path, monkeypatch, capsys):
    """--root (and $TUNEBOOK_ROOT) name the project for `plan` as for every other command."""
    from runner.cli.main import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")  # main() sets it
    monkeypatch.delenv("TUNEBOOK_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    recipe = sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))[0]
    assert main(["--root", str(ROOT), "plan", recipe, "--gpu", "h100", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["gpus"][0]["id"] == "h100"
    monkeypatch.setenv("TUNEBOOK_ROOT", str(ROOT))
    assert main(["plan", recipe, "--gpu", "h100"]) == 0
    assert "peak allocated" in capsys.readouterr().out


def test_validate_warning_when_the_preset_gpu_is_too_small(monkeypatch):
    from runner.plan import fit as plan_fit
    from runner.plan.target import resolve_for_gpu
    from runner.recipe.load import load_recipe

    monkeypatch.chdir(ROOT)
    recipe = next(p.stem for p in sorted((ROOT / "recipes").glob("*.yaml")) if "preset:" in p.read_text())
    resolved, _, _ = resolve_for_gpu(load_recipe(recipe, ROOT))
    assert plan_fit.check_fits_preset(resolved) is None  # the shipped recipes train a 135M model
    monkeypatch.setattr(P, "load_model_shape", lambda *_: P.shipped_model("meta-llama/Llama-3.1-70B"))
    warning = plan_fit.check_fits_preset(resolved)
    assert warning and "does not fit" in warning and f"tunebook plan {resolved.recipe.name}" in warning
