"""`tunebook bench`: steady-state tokens/s, MFU and memory from synthetic Trainer logs, the naive (guide-style)
config builder, the bench config, GPU naming, and the lora-h100 / qlora-h100 presets (resolve, pass Axolotl's
validation, and match the planner's numbers their `why:` entries cite)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from runner.plan import bench as B
from runner.plan import estimate as P
from runner.train import trainlog
from runner.train.config_check import check_config
from runner.errors import TunebookError
from runner.hardware import Hardware
from runner.recipe.load import load_recipe
from runner.recipe.resolve import SEED_PLUGIN, resolve

ROOT = Path(__file__).resolve().parents[3]
L8B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
       "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 49152,
       "tie_word_embeddings": False}
CPU = Hardware(cuda=False, gpu_name=None, gpu_count=0, gpu_memory_gib=None, bf16=False, cpu_cores=2, cpu_name="x")
H100 = Hardware(cuda=True, gpu_name="NVIDIA H100 80GB HBM3", gpu_count=1, gpu_memory_gib=79.1, bf16=True,
                cpu_cores=16, cpu_name="x")
GIB = 1024 ** 3


# ------------------------------------------------------------------------------------------------ synthetic logs
def _log_text(steps, world=1, memory=None, runtime=None):
    """A train.log as Axolotl writes it: tqdm bars and the Trainer's dict reprs (numbers as strings)."""
    lines, prev_tr, n = [], None, len(steps)
    t = 0.0
    for i, (seconds, d_trainable, d_total) in enumerate(steps, 1):
        t += seconds
        tr = (prev_tr or 0) + d_trainable
        d = {"loss": "2.5", "grad_norm": "1.0", "learning_rate": "0.0002"}
        mem = (memory or [(0, 0)] * n)[i - 1]
        d.update({"memory/max_active (GiB)": str(mem[0]), "memory/max_allocated (GiB)": str(mem[0]),
                  "memory/device_reserved (GiB)": str(mem[1])})
        if prev_tr is not None:
            d["tokens/train_per_sec_per_gpu"] = str(round(d_trainable / world / seconds, 2))
        d["tokens/trainable"] = tr
        d["tokens/total"] = sum(s[2] for s in steps[:i])
        d["epoch"] = "0.5"
        prev_tr = tr
        lines.append(f"{100 * i // n}%|###| {i}/{n} [00:{int(t):02d}<00:10,  1.00s/it]{d}")
    if runtime:
        lines.append(str({"train_runtime": str(runtime), "train_samples_per_second": "1.0", "train_loss": "2.5",
                          "epoch": "1"}))
    return "\r".join(lines) + "\n"


def _logs(tmp_path, text):
    log = tmp_path / "train.log"
    log.write_text(text)
    return trainlog.from_log(log), text


def test_steady_state_tokens_per_second_excludes_warmup(tmp_path):
    # Warm-up steps are slow (5 s, 3 s); measured steps take 2 s each with 4096 total / 1000 trainable tokens.
    steps = [(5.0, 900, 4096), (3.0, 1000, 4096), (2.0, 1000, 4096), (2.0, 1000, 4096), (2.0, 1000, 4096)]
    logs, text = _logs(tmp_path, _log_text(steps, runtime=14.0))
    m = B.steady_state(logs, warmup=2, world=1, sequences_per_step=8, tqdm=B.tqdm_elapsed(text, 5))
    assert m["measured_steps"] == 3 and m["steps_logged"] == 5
    assert m["timing_source"] == "tokens/train_per_sec_per_gpu"
    assert m["step_seconds"] == [2.0, 2.0, 2.0] and m["seconds"] == 6.0
    assert m["tokens_total"] == 3 * 4096 and m["tokens_trainable"] == 3000
    assert m["tokens_per_s"] == pytest.approx(2048.0) and m["trainable_tokens_per_s"] == pytest.approx(500.0)
    assert m["trained_share"] == pytest.approx(1000 / 4096, abs=1e-4)
    assert m["samples_per_s"] == pytest.approx(4.0)  # 8 sequences per step, 2 s per step
    # The reference README's way (warm-up included) is kept beside it: 5 x 4096 / 14 s.
    assert m["including_warmup"]["tokens_per_s"] == pytest.approx(5 * 4096 / 14.0, abs=0.01)
    assert m["memory"] is None  # a CPU run logs zeros


def test_steady_state_per_gpu_rate_and_rounding(tmp_path):
    # Two GPUs: Axolotl logs the per-GPU rate of the summed trainable tokens; rates are rounded to 2 decimals.
    steps = [(4.0, 5000, 16384), (1.3, 7001, 16384), (1.7, 6999, 16384)]
    logs, _ = _logs(tmp_path, _log_text(steps, world=2))
    m = B.steady_state(logs, warmup=1, world=2)
    assert m["seconds"] == pytest.approx(3.0, rel=1e-4)
    assert m["tokens_per_s"] == pytest.approx(2 * 16384 / 3.0, rel=1e-4)
    assert m["tokens_per_s_per_gpu"] == pytest.approx(16384 / 3.0, rel=1e-4)


def test_tqdm_fallback_when_a_step_trains_no_token(tmp_path):
    steps = [(3.0, 500, 1024), (2.0, 0, 1024), (4.0, 400, 1024)]  # step 2: every label masked, rate 0
    logs, text = _logs(tmp_path, _log_text(steps))
    assert B.tqdm_elapsed(text, 3) == {1: 3, 2: 5, 3: 9}
    m = B.steady_state(logs, warmup=1, tqdm=B.tqdm_elapsed(text, 3))
    assert m["timing_source"].startswith("tqdm") and m["seconds"] == 6
    assert m["tokens_per_s"] == pytest.approx(2048 / 6, abs=0.01)
    with pytest.raises(TunebookError, match="cannot time"):
        B.steady_state(logs, warmup=1, tqdm={})


def test_tqdm_parses_hours_and_ignores_other_bars():
    text = ("Loading weights: 100%|####| 13/13 [00:02<00:00, 5.1it/s]\n"
            " 8%|#| 1/13 [1:02:03<10:00, 3.2s/it]\r 15%|#| 2/13 [1:02:05<10:00, 2.0s/it]\r"
            " 15%|#| 2/13 [1:02:07<10:00, 2.0s/it]")
    assert B.tqdm_elapsed(text, 13) == {1: 3723, 2: 3725}


def test_steady_state_refuses_what_it_cannot_measure(tmp_path):
    logs, _ = _logs(tmp_path, _log_text([(1.0, 10, 64), (1.0, 10, 64)]))
    with pytest.raises(TunebookError, match="nothing left to measure"):
        B.steady_state(logs, warmup=2)
    with pytest.raises(TunebookError, match="at least 1"):
        B.steady_state(logs, warmup=0)
    no_tokens = [{"loss": 1.0, "epoch": 0.1}, {"loss": 1.0, "epoch": 0.2}]
    with pytest.raises(TunebookError, match="token counts"):
        B.steady_state(no_tokens, warmup=1)


def test_memory_peaks_over_steps_and_steady_window(tmp_path):
    mem = [(9.5, 10.2), (6.6, 7.4), (6.7, 7.5), (6.6, 7.5)]  # the first step includes loading the model
    logs, _ = _logs(tmp_path, _log_text([(2.0, 100, 4096)] * 4, memory=mem))
    m = B.steady_state(logs, warmup=1)["memory"]
    assert m["peak_allocated_gib"] == 9.5 and m["peak_reserved_gib"] == 10.2
    assert m["steady_peak_allocated_gib"] == 6.7 and m["steady_peak_reserved_gib"] == 7.5


# ------------------------------------------------------------------------------------------------ FLOPs and MFU
@pytest.fixture
def l8b_dir(tmp_path):
    d = tmp_path / "l8b"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(L8B))
    return d


def test_mfu_by_the_issues_convention_and_the_planners(l8b_dir, tmp_path):
    cfg = {"base_model": str(l8b_dir), "adapter": "lora", "lora_r": 16, "lora_target_linear": True,
           "sequence_len": 2048, "micro_batch_size": 4, "sample_packing": True, "gradient_checkpointing": True,
           "bf16": True, "plugins": [P.LIGER_PLUGIN], "liger_fused_linear_cross_entropy": True}
    fl = B.flops(cfg, tmp_path, world=1)
    params = 7_382_241_280
    assert fl["per_token_params"] == 4 * params
    shape = P.ModelShape.from_config(L8B)
    assert fl["per_token_planner"] == P.flops_per_token(shape, P.TrainSetup.from_axolotl_config(cfg))
    assert round(fl["per_token_planner"] / 1e9, 1) == 45.1  # docs/planner-accuracy.md, row 3
    h100 = P.gpu_by_id("h100")
    # The issue: 12,000 tokens/s is "about 36% MFU counting 4 x params FLOPs/token".
    m = B.mfu(12000, fl, h100, 1, None)
    assert m["params"] == pytest.approx(12000 * 4 * params / 989e12, abs=1e-4) and round(m["params"], 2) == 0.36
    # The reference bf16 LoRA run (~7,600 tokens/s) is the planner's calibration point: 34.6%.
    assert B.mfu(7600, fl, h100, 1, None)["planner"] == pytest.approx(0.346, abs=0.001)
    # Two GPUs: the peak doubles.
    assert B.mfu(12000, fl, h100, 2, None)["params"] == pytest.approx(m["params"] / 2, abs=1e-4)
    none = B.mfu(5.0, fl, None, 1, "no GPU")
    assert none["planner"] is None and none["params"] is None and none["why_null"] == "no GPU"
    full = B.flops({**cfg, "adapter": None}, tmp_path, 1)
    assert full["per_token_params"] == 6 * params


def test_gpu_labels():
    assert B.gpu_for(CPU)[0] == "cpu" and B.gpu_for(CPU)[1] is None and "no GPU" in B.gpu_for(CPU)[2]
    label, gpu, why = B.gpu_for(H100)
    assert (label, gpu.id, gpu.tflops, why) == ("h100", "h100", 989.0, None)
    pcie = dataclasses.replace(H100, gpu_name="NVIDIA H100 PCIe")
    label, gpu, why = B.gpu_for(pcie)
    assert label == "h100-pcie" and gpu is None and "not in recipes/presets/gpus.yaml" in why
    assert B.gpu_for(pcie, "h100")[1].id == "h100"  # --gpu-label wins
    a100 = dataclasses.replace(H100, gpu_name="NVIDIA A100-SXM4-80GB", gpu_memory_gib=79.2)
    assert B.gpu_for(a100)[0] == "a100-80"
    assert B.gpu_for(dataclasses.replace(H100, gpu_name="NVIDIA L40S", gpu_memory_gib=44))[0] == "nvidia-l40s"
    assert B.gpu_for(dataclasses.replace(H100, gpu_name="NVIDIA L4", gpu_memory_gib=22))[0] == "l4"
    assert B.gpu_for(dataclasses.replace(H100, gpu_name="Tesla T4", gpu_memory_gib=15))[0] == "t4"


def test_result_name():
    o = B.Options()
    assert B.result_name("2026-11-23", "cpu", "ci-mini", o) == "2026-11-23-cpu-ci-mini.json"
    o = B.Options(preset="qlora-h100", model="/tmp/models/l8b/", seq=4096, micro_batch=4)
    assert (B.result_name("2026-11-23", "h100", "hr-bot", o)
            == "2026-11-23-h100-hr-bot-qlora-h100-l8b-seq4096-mb4.json")


# ------------------------------------------------------------------------------------------------ presets and configs
RECIPE = "base_model: {model}\npreset: {preset}\ndata: {{train: data/train.jsonl, format: alpaca}}\n"
ROWS = '{"instruction": "How many leave days?", "output": "27 days."}\n' * 3


def _stage(project, preset, model, hw):
    root = project({"t": RECIPE.format(model=model, preset=preset)}, {"data/train.jsonl": ROWS})
    return resolve(load_recipe("t", root), hw, template_check=False).stages[0], root


@pytest.mark.parametrize("preset", ["lora-h100", "qlora-h100"])
def test_h100_presets_resolve_and_pass_axolotl_validation(project, l8b_dir, preset):
    st, _ = _stage(project, preset, l8b_dir, H100)
    c = st.config
    assert check_config(c) == []
    assert c["sample_packing"] is True and c["attn_implementation"] == "sdpa"
    assert c["plugins"] == [P.LIGER_PLUGIN, SEED_PLUGIN]
    assert all(c[k] is True for k in ("liger_rope", "liger_rms_norm", "liger_glu_activation",
                                      "liger_fused_linear_cross_entropy"))
    assert c["optimizer"] == "adamw_torch_fused" and c["bf16"] is True and c["sequence_len"] == 2048
    assert c["adapter"] == ("qlora" if preset.startswith("qlora") else "lora")
    assert st.sources["micro_batch_size"][0] == f"preset {preset}"
    # Every speed choice carries its reason.
    why = yaml.safe_load((ROOT / "recipes" / "presets" / f"{preset}.yaml").read_text())["why"]
    for key in ("sample_packing", "attn_implementation", "plugins", "liger_fused_linear_cross_entropy",
                "gradient_checkpointing", "micro_batch_size", "optimizer"):
        assert key in why, key


@pytest.mark.parametrize("preset", ["lora-h100", "qlora-h100"])
def test_h100_presets_on_a_cpu_drop_the_cuda_only_parts(project, l8b_dir, preset):
    st, _ = _stage(project, preset, l8b_dir, CPU)
    c = st.config
    assert check_config(c) == []
    assert c["plugins"] == [SEED_PLUGIN] and c["bf16"] is False and c["gradient_checkpointing"] is False


def _planner(st, root, **change):
    shape = P.load_model_shape(st.config["base_model"], root)
    setup = dataclasses.replace(P.TrainSetup.from_axolotl_config(st.config, root), **change)
    return P.estimate_memory(shape, setup).peak_allocated_gib


def test_lora_h100_batch_and_checkpointing_are_the_planners(project, l8b_dir):
    """No checkpointing, and the largest micro batch that 'fits' an H100 for the 7.38B shape at 2048."""
    st, root = _stage(project, "lora-h100", l8b_dir, H100)
    h100 = P.gpu_by_id("h100")
    mb = st.config["micro_batch_size"]
    assert st.config["gradient_checkpointing"] is False
    assert P.verdict(_planner(st, root), h100.memory_gib) == "fits"
    assert P.verdict(_planner(st, root, micro_batch=mb + 1), h100.memory_gib) != "fits"
    assert round(_planner(st, root), 1) == 63.1  # the number the preset's why: cites


def test_qlora_h100_fits_the_t4_budget_and_needs_checkpointing_for_it(project, l8b_dir):
    """The issue: the QLoRA preset fits 15 GiB at 2048 tokens. The planner decides checkpointing (without it
    even micro batch 1 is not a 'fit' in 15 GiB) and the micro batch (the largest that fits 15 GiB and a real
    T4's usable memory)."""
    st, root = _stage(project, "qlora-h100", l8b_dir, H100)
    t4 = P.gpu_by_id("t4")
    mb = st.config["micro_batch_size"]
    assert st.config["gradient_checkpointing"] is True and st.config["sequence_len"] == 2048
    peak = _planner(st, root)
    assert peak < 0.85 * 15 and P.verdict(peak, t4.memory_gib) == "fits"
    assert P.verdict(_planner(st, root, micro_batch=mb + 1), t4.memory_gib) != "fits"
    assert P.verdict(_planner(st, root, grad_ckpt=False, micro_batch=1), 15) != "fits"
    assert (round(peak, 1), round(_planner(st, root, grad_ckpt=False, micro_batch=1), 1)) == (11.8, 13.0)


def test_naive_config_is_the_guide_recipe(project, l8b_dir):
    st, _ = _stage(project, "qlora-h100", l8b_dir, H100)
    cfg = {**st.config, "torch_compile": True}
    naive, changes = B.naive_config(cfg, cuda=True)
    assert naive["sample_packing"] is False and naive["optimizer"] == "paged_adamw_8bit"
    assert naive["micro_batch_size"] == 2 and naive["gradient_accumulation_steps"] == 4
    assert naive["gradient_checkpointing"] is True
    assert naive["plugins"] == [SEED_PLUGIN] and not [k for k in naive if k.startswith("liger_")]
    assert "torch_compile" not in naive
    # Same model, method, data, sequence length and precision.
    for k in ("base_model", "adapter", "load_in_4bit", "datasets", "sequence_len", "bf16", "lora_r",
              "attn_implementation"):
        assert naive[k] == st.config[k], k
    assert cfg["plugins"] == [P.LIGER_PLUGIN, SEED_PLUGIN]  # the input is left alone
    assert any("Liger off" in c for c in changes) and any("sample_packing" in c for c in changes)
    assert check_config(naive) == []
    lora, _ = B.naive_config(_stage(project, "lora-h100", l8b_dir, H100)[0].config, cuda=True)
    assert lora["adapter"] == "lora" and lora["load_in_4bit"] is False
    cpu, changes = B.naive_config(cfg, cuda=False)
    assert cpu["optimizer"] == "adamw_torch" and any("paged optimizers need CUDA" in c for c in changes)


def test_bench_config_runs_warmup_plus_steps_and_saves_nothing(project, l8b_dir, tmp_path):
    st, _ = _stage(project, "lora-h100", l8b_dir, H100)
    cfg = {**st.config, "save_steps": 3, "test_datasets": [{"path": "x"}], "metric_for_best_model": "eval_loss",
           "wandb_project": "p"}
    out = B.bench_config(cfg, tmp_path / "v", warmup=3, steps=10)
    assert out["max_steps"] == 13 and out["logging_steps"] == 1 and out["include_tkps"] is True
    assert out["save_strategy"] == "no" and out["eval_strategy"] == "no"
    assert out["auto_resume_from_checkpoints"] is False
    for k in ("save_steps", "test_datasets", "metric_for_best_model", "wandb_project"):
        assert k not in out
    assert out["output_dir"] == str(tmp_path / "v" / "output")
    assert out["dataset_prepared_path"] == str(tmp_path / "v" / "prepared")
    assert check_config(out) == []


def test_bench_config_drops_early_stopping_and_keeps_the_other_plugins(project, l8b_dir, tmp_path):
    from runner import early_stopping as es

    st, _ = _stage(project, "lora-h100", l8b_dir, H100)
    rule = {**es.DEFAULT.to_dict(), "record": str(tmp_path / "sft" / "early_stop.json")}
    cfg = {**st.config, "plugins": [*st.config["plugins"], es.AXOLOTL_PLUGIN], es.CONFIG_KEY: rule}
    out = B.bench_config(cfg, tmp_path / "v", warmup=3, steps=10)
    assert es.CONFIG_KEY not in out and out["plugins"] == [P.LIGER_PLUGIN, SEED_PLUGIN]
    only = B.bench_config({**cfg, "plugins": [es.AXOLOTL_PLUGIN]}, tmp_path / "w", warmup=3, steps=10)
    assert "plugins" not in only


def test_bench_refuses_bad_options(tmp_path):
    with pytest.raises(TunebookError, match="--warmup"):
        B.bench("x", tmp_path, B.Options(warmup=0))
    with pytest.raises(TunebookError, match="--steps"):
        B.bench("x", tmp_path, B.Options(steps=0))


def test_render_table(tmp_path):
    v = {"tokens_per_s": 7600.0, "trainable_tokens_per_s": 5000.0, "samples_per_s": 3.7,
         "mfu": {"planner": 0.346, "params": 0.227}, "memory": {"peak_allocated_gib": 17.7, "peak_reserved_gib": 19.0}}
    result = {"recipe": "r", "gpu": {"name": "NVIDIA H100 80GB SXM", "label": "h100"},
              "steps": {"warmup": 3, "measured": 10},
              "variants": {"recipe": v, "naive": {**v, "tokens_per_s": 1300.0, "trainable_tokens_per_s": 900.0,
                                                  "changes": ["sample_packing: True -> False"]}},
              "ratio": {"tokens_per_s": 5.846, "trainable_tokens_per_s": 5.556}, "notes": ["a note"]}
    from runner.cli.bench import render

    text = render(result, "benchmarks/results/x.json")
    assert "7,600" in text and "34.6%" in text and "5.85x" in text and "17.70" in text
    assert "naive: sample_packing: True -> False" in text and "result: benchmarks/results/x.json" in text


def test_set_overrides_parse_and_name_the_result():
    assert B.parse_set(["torch_compile=true", "lora_r=32", "plugins=[a, b]", "sdpa_varlen="]) == {
        "torch_compile": True, "lora_r": 32, "plugins": ["a", "b"], "sdpa_varlen": None}
    with pytest.raises(TunebookError, match="KEY=VALUE"):
        B.parse_set(["torch_compile"])
    o = B.Options(set={"torch_compile": True, "sdpa_varlen": None})
    assert B.result_name("d", "h100", "r", o) == "d-h100-r-torch_compile-True-sdpa_varlen-unset.json"


def test_synthetic_rows_are_deterministic_with_sft_like_lengths():
    rows = B.synthetic_rows(2000)
    assert rows == B.synthetic_rows(2000) and rows != B.synthetic_rows(2000, seed=1)
    words = sorted(len(r["instruction"].split()) + len(r["output"].split()) for r in rows)
    assert 250 < words[len(words) // 2] < 400 and words[-1] <= 1600 and words[0] >= 21


def test_resolve_for_bench_applies_overrides_without_touching_the_recipe(project):
    root = project({"t": RECIPE.format(model="org/model", preset="qlora-t4")}, {"data/train.jsonl": ROWS})
    opt = B.Options(preset="qlora-h100", seq=4096, micro_batch=4, synthetic_rows=50,
                    set={"torch_compile": True, "lora_dropout": None})
    res, st = B.resolve_for_bench("t", root, opt, h=H100)
    c = st.config
    assert res.preset["name"] == "qlora-h100" and c["sequence_len"] == 4096 and c["micro_batch_size"] == 4
    assert c["torch_compile"] is True and "lora_dropout" not in c
    assert st.sources["sequence_len"][0] == "tunebook bench --seq"
    assert st.sources["torch_compile"][0] == "tunebook bench --set"
    # Synthetic data runs in its own folder; the recipe's data and run folder are left alone.
    assert res.run_root == root / "runs" / "t-synthetic"
    src = root / "runs" / "t-synthetic" / "source" / "train.jsonl"
    assert res.data["data"] == {"train": str(src), "format": "alpaca"} and len(src.read_text().splitlines()) == 50
    assert "preset: qlora-t4" in (root / "recipes" / "t.yaml").read_text()
    with pytest.raises(TunebookError, match="no such folder"):
        B.resolve_for_bench("t", root, B.Options(model="./nowhere"), h=H100)
