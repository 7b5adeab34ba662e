"""Each default rule: rows, token lengths and hardware in; settings and reasons out."""
from __future__ import annotations

import pytest

from runner.recipe.derive import derive_defaults, epochs_for, learning_rate_for, percentile, round_seq
from runner.hardware import Hardware
from runner.recipe.load import load_recipe
from runner.train.trainlog import summary

CPU = Hardware(cuda=False, gpu_name=None, gpu_count=0, gpu_memory_gib=None, bf16=False, cpu_cores=2, cpu_name="x")


@pytest.mark.parametrize("rows,epochs", [(24, 10), (100, 10), (327, 4), (600, 3), (1200, 3), (5000, 2), (50000, 1)])
def test_epochs_from_rows(rows, epochs):
    e, why = epochs_for(rows)
    assert e == epochs and str(rows) in why


def test_learning_rate_by_method_and_size():
    assert learning_rate_for("full", 300)[0] == 1.0e-5
    assert learning_rate_for("lora", 300)[0] == 2.0e-3
    assert learning_rate_for("qlora", 50000)[0] == 2.0e-4


def test_rounding_and_percentile():
    assert round_seq(61) == 128 and round_seq(129) == 192 and round_seq(700) == 704
    assert percentile(list(range(1, 101)), 0.99) == 99 and percentile([5], 0.99) == 5


def _rows(n, answer_words=5):
    return "".join(f'{{"instruction": "Question number {i}?", "output": "{"word " * answer_words}{i}."}}\n'
                   for i in range(n))


def test_derived_from_real_tokenizer(project, smollm2):
    root = project({"t": f"base_model: {smollm2}\ndata: {{train: d.jsonl}}\n"}, {"d.jsonl": _rows(300)})
    rec = load_recipe("t", root)
    out, why = derive_defaults(rec, None, CPU, smollm2, None)
    assert out["epochs"] == 4 and "300 rows" in why["epochs"]
    assert out["learning_rate"] == 2.0e-3
    assert out["sample_packing"] is True and out["micro_batch_size"] == 1
    # ~20 tokens per row with the ChatML template and its injected system prompt: packs of 1024
    assert out["sequence_len"] % 64 == 0 and 128 <= out["sequence_len"] <= 2048
    assert "p99 of 300 rows" in why["sequence_len"]
    assert out["_validation_fraction"] == 0.1
    assert "OMP_NUM_THREADS=2" in why["threads"]


def test_no_validation_split_for_tiny_data(project, smollm2):
    root = project({"t": f"base_model: {smollm2}\ndata: {{train: d.jsonl}}\n"}, {"d.jsonl": _rows(40)})
    out, _ = derive_defaults(load_recipe("t", root), None, CPU, smollm2, None)
    assert "_validation_fraction" not in out and out["epochs"] == 10


def test_preference_only_recipe_derives_no_sft_settings(project, smollm2):
    prefs = '{"prompt": "a?", "chosen": "yes", "rejected": "no"}\n' * 5
    root = project({"t": f"base_model: {smollm2}\ndata: {{train: p.jsonl}}\nstages: [dpo]\n"}, {"p.jsonl": prefs})
    out, _ = derive_defaults(load_recipe("t", root), None, CPU, smollm2, None)
    assert "epochs" not in out and "sample_packing" not in out


def test_trained_share_from_trainer_logs():
    hist = [{"loss": 2.0, "tokens/trainable": 100, "tokens/total": 400},
            {"loss": 1.0, "tokens/trainable": 250, "tokens/total": 1000}]
    s = summary(hist)
    assert s["trained_share"] == 0.25 and s["tokens_total"] == 1000 and s["train_loss_last"] == 1.0


def test_preset_batch_shape_kept_on_gpu_derived_on_cpu(project, smollm2):
    from runner.recipe.resolve import resolve

    A100 = Hardware(cuda=True, gpu_name="A100", gpu_count=1, gpu_memory_gib=80, bf16=True, cpu_cores=8, cpu_name="x")
    root = project({"t": f"base_model: {smollm2}\npreset: lora-a100\ndata: {{train: d.jsonl}}\n"},
                   {"d.jsonl": _rows(2500, 20)})  # not a small fact set: the preset's batch shape is sized for its GPU
    gpu = resolve(load_recipe("t", root), A100).stages[0]
    assert gpu.config["micro_batch_size"] == 4 and gpu.sources["micro_batch_size"][0] == "preset lora-a100"
    assert gpu.sources["sequence_len"][0] == "derived" and gpu.config["sequence_len"] < 4096
    cpu = resolve(load_recipe("t", root), CPU).stages[0]
    assert cpu.config["micro_batch_size"] == 1 and cpu.sources["micro_batch_size"][0] == "derived"


def test_small_fact_set_gets_no_accumulation_and_no_dropout(project, smollm2):
    root = project({"t": f"base_model: {smollm2}\ndata: {{train: d.jsonl}}\n"}, {"d.jsonl": _rows(300, 40)})
    out, why = derive_defaults(load_recipe("t", root), None, CPU, smollm2, None)
    packs = int(why["gradient_accumulation_steps"].split("≈ ")[1].split()[0])
    assert packs >= 64  # enough packs that a large set would accumulate
    assert out["gradient_accumulation_steps"] == 1 and "learns per step" in why["gradient_accumulation_steps"]
    assert out["lora"] == {"dropout": 0.0} and "300 rows" in why["lora_dropout"]


def test_large_set_accumulates_and_keeps_dropout(project, smollm2):
    root = project({"t": f"base_model: {smollm2}\ndata: {{train: d.jsonl}}\n"}, {"d.jsonl": _rows(2500, 20)})
    out, why = derive_defaults(load_recipe("t", root), None, CPU, smollm2, None)
    assert out["gradient_accumulation_steps"] == 2 and "lora" not in out and "lora_dropout" not in why


def test_full_fine_tune_derives_no_adapter_dropout(project, smollm2):
    recipe = f"base_model: {smollm2}\ndata: {{train: d.jsonl}}\ntraining: {{method: full}}\nstages: [sft]\n"
    root = project({"t": recipe}, {"d.jsonl": _rows(300)})
    out, _ = derive_defaults(load_recipe("t", root), None, CPU, smollm2, None)
    assert "lora" not in out and out["learning_rate"] == 1.0e-5


def test_derived_dropout_beats_the_preset_and_the_recipe_beats_both(project, smollm2):
    from runner.recipe.resolve import resolve

    root = project({"a": f"base_model: {smollm2}\npreset: qlora-t4\ndata: {{train: d.jsonl}}\n",
                    "b": f"base_model: {smollm2}\npreset: qlora-t4\ndata: {{train: d.jsonl}}\n"
                         "training: {lora: {dropout: 0.1}}\n"}, {"d.jsonl": _rows(300)})
    a = resolve(load_recipe("a", root), CPU).stages[0]
    assert a.config["lora_dropout"] == 0.0 and a.sources["lora_dropout"][0] == "derived"
    assert "small fact set" in a.sources["lora_dropout"][1]
    b = resolve(load_recipe("b", root), CPU).stages[0]
    assert b.config["lora_dropout"] == 0.1 and b.sources["lora_dropout"][0] == "recipe"


@pytest.mark.parametrize("epochs,keep", [(2, 4), (4, 5), (8, 9)])
def test_every_epoch_checkpoint_is_kept_for_the_best_epoch_choice(project, smollm2, epochs, keep):
    from runner.recipe.resolve import resolve

    root = project({"t": f"base_model: {smollm2}\ndata: {{train: d.jsonl}}\ntraining: {{epochs: {epochs}}}\n"},
                   {"d.jsonl": _rows(300)})
    st = resolve(load_recipe("t", root), CPU).stages[0]
    # Axolotl replaces an unset limit with 4, which would delete the early epochs before the choice.
    assert st.config["save_strategy"] == "epoch" and st.config["save_total_limit"] == keep
    assert st.config["test_datasets"][0]["path"].endswith("validation.jsonl")


@pytest.mark.parametrize("gpu,count", [("t4", 1), ("a10g", 1), ("a100-80", 1), ("h100", 1)])
def test_small_fact_set_keeps_the_measured_steps_per_epoch_on_every_gpu(project, smollm2, gpu, count):
    """The measured rule (docs/quality.md: one optimizer step per pack at 2e-3) holds on a GPU too: the preset's
    micro batch 2 x accumulation 4 must not meet the derived learning rate (8x fewer steps, another training)."""
    from runner.plan import estimate as P
    from runner.plan.target import target_hardware
    from runner.recipe.resolve import resolve

    root = project({"t": f"base_model: {smollm2}\npreset: qlora-t4\ndata: {{train: d.jsonl}}\n"},
                   {"d.jsonl": _rows(300, 40)})
    rec = load_recipe("t", root)
    on_cpu = resolve(rec, CPU).stages[0].config
    st = resolve(rec, target_hardware(P.gpu_by_id(gpu), count)).stages[0]
    c = st.config
    assert (c["micro_batch_size"], c["gradient_accumulation_steps"]) == (1, 1)
    assert st.sources["micro_batch_size"][0] == "derived" and "on a GPU too" in st.sources["micro_batch_size"][1]
    assert c["learning_rate"] == on_cpu["learning_rate"] == 2.0e-3
    assert (c["sequence_len"], c["sample_packing"]) == (on_cpu["sequence_len"], True)  # same packs, same steps


def test_small_fact_set_on_several_gpus_scales_the_learning_rate_by_the_square_root(project, smollm2):
    from runner.plan import estimate as P
    from runner.plan.target import target_hardware
    from runner.recipe.resolve import resolve

    root = project({"t": f"base_model: {smollm2}\npreset: lora-h100\ndata: {{train: d.jsonl}}\n"},
                   {"d.jsonl": _rows(300, 40)})
    st = resolve(load_recipe("t", root), target_hardware(P.gpu_by_id("h100"), 4)).stages[0]
    assert st.config["learning_rate"] == pytest.approx(4.0e-3)  # 2e-3 x sqrt(4 GPUs)
    assert "sqrt(4)" in st.sources["learning_rate"][1] and "not measured" in st.sources["learning_rate"][1]
