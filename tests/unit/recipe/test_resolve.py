"""Preset resolution: override order, provenance, hardware adaptation, DeepSpeed wiring."""
from __future__ import annotations

import json

import pytest

from runner.train.config_check import check_config
from runner.hardware import Hardware
from runner.recipe.load import load_recipe
from runner.recipe.resolve import SEED_PLUGIN, WIRING, resolve

ROWS = '{"instruction": "How many leave days?", "output": "27 days."}\n' * 3
PREFS = '{"prompt": "Hi?", "chosen": "Hello, how can I help?", "rejected": "What."}\n' * 3
CPU = Hardware(cuda=False, gpu_name=None, gpu_count=0, gpu_memory_gib=None, bf16=False, cpu_cores=2, cpu_name="x")
A100 = Hardware(cuda=True, gpu_name="NVIDIA A100-SXM4-80GB", gpu_count=1, gpu_memory_gib=80, bf16=True,
                cpu_cores=32, cpu_name="x")
T4 = Hardware(cuda=True, gpu_name="Tesla T4", gpu_count=1, gpu_memory_gib=15, bf16=False, cpu_cores=8, cpu_name="x")


def _res(project, text, hw, files=None):
    root = project({"t": text}, {"data/train.jsonl": ROWS, "data/prefs.jsonl": PREFS, **(files or {})})
    return resolve(load_recipe("t", root), hw, template_check=False)


BASE = """\
base_model: org/model
preset: {preset}
data: {{train: data/train.jsonl, format: alpaca}}
"""


def test_recipe_beats_preset_and_records_source(project):
    res = _res(project, BASE.format(preset="qlora-t4") + "training: {micro_batch_size: 8, lora: {r: 64}}\n", T4)
    sft = res.stages[0]
    assert sft.config["micro_batch_size"] == 8 and sft.sources["micro_batch_size"][0] == "recipe"
    assert sft.config["lora_r"] == 64 and sft.config["lora_alpha"] == 32  # alpha still the preset's
    assert sft.sources["lora_alpha"][0] == "preset qlora-t4"
    assert sft.config["adapter"] == "qlora" and sft.config["load_in_4bit"] is True
    assert sft.config["bnb_config_kwargs"]["bnb_4bit_use_double_quant"] is True
    assert sft.config["gradient_accumulation_steps"] == 4
    assert sft.sources["gradient_accumulation_steps"][0] == "preset qlora-t4"
    assert sft.sources["logging_steps"][0] == "tunebook default"
    # T4: fp16 from the preset stays on a GPU without bf16
    assert sft.config["fp16"] is True and sft.config["bf16"] is False
    assert sft.config["optimizer"] == "paged_adamw_8bit"


def test_stage_training_beats_recipe_and_axolotl_block_wins_last(project):
    text = BASE.format(preset="lora-a100") + """\
training: {learning_rate: 1.0e-4}
axolotl: {logging_steps: 7, learning_rate: 3.0e-4}
stages:
  - sft: {training: {learning_rate: 5.0e-5, epochs: 2}}
  - merge
"""
    sft = _res(project, text, A100).stages[0]
    assert sft.config["learning_rate"] == 3.0e-4 and sft.sources["learning_rate"][0] == "recipe axolotl:"
    assert sft.config["num_epochs"] == 2 and sft.sources["num_epochs"][0] == "stage sft"
    assert sft.config["logging_steps"] == 7


def test_cpu_adaptation(project):
    res = _res(project, BASE.format(preset="qlora-t4") + "training: {method: qlora}\n", CPU)
    sft = res.stages[0]
    assert sft.config["fp16"] is False and sft.config["bf16"] is False
    assert sft.config["optimizer"] == "adamw_torch"
    assert sft.sources["optimizer"] == ("hardware", "no CUDA GPU on this machine: paged_adamw_8bit needs CUDA")
    for k in ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel"):
        assert sft.config[k] is False
    assert sft.config["load_in_4bit"] is True  # bitsandbytes 4-bit runs on CPU
    assert sft.config["bnb_config_kwargs"]["bnb_4bit_compute_dtype"] == "float32"
    assert any("adapted the preset to the machine" in n and "paged_adamw_8bit -> adamw_torch" in n for n in res.notes)


def test_full_ft_multigpu_deepspeed(project, repo_root):
    res = _res(project, BASE.format(preset="full-ft-multigpu") + "stages: [sft]\n", A100)
    sft = res.stages[0]
    ds = sft.config["deepspeed"]
    assert ds.endswith("recipes/presets/zero3_bf16.json")
    assert json.load(open(ds))["zero_optimization"]["stage"] == 3
    assert sft.config["adapter"] is None and sft.config["learning_rate"] == 1.0e-5
    # On a CPU, DeepSpeed goes.
    cpu = _res(project, BASE.format(preset="full-ft-multigpu") + "stages: [sft]\n", CPU).stages[0]
    assert "deepspeed" not in cpu.config


def test_dpo_chains_from_merged_sft(project):
    text = BASE.format(preset="lora-a100") + """\
stages:
  - sft
  - dpo: {data: {train: data/prefs.jsonl, format: preference}}
  - merge
"""
    res = _res(project, text, A100)
    sft, dpo, merge = res.stages
    assert dpo.config["base_model"] == str(sft.run_dir / "merged")
    assert dpo.config["rl"] == "dpo" and dpo.config["learning_rate"] == 5.0e-5
    assert dpo.config["datasets"][0]["type"] == "chat_template.default"
    assert dpo.config["datasets"][0]["path"].endswith("runs/t/data/dpo/train.jsonl")
    assert merge.config["lora_model_dir"] == str(dpo.output_dir)
    assert merge.config["base_model"] == str(sft.run_dir / "merged")
    assert "lora_model_dir" not in dpo.config


def test_dpo_from_adapter(project):
    text = BASE.format(preset="lora-a100") + """\
stages:
  - sft
  - dpo: {from: adapter, data: {train: data/prefs.jsonl}}
"""
    sft, dpo = _res(project, text, A100).stages
    assert dpo.config["base_model"] == "org/model" and dpo.config["lora_model_dir"] == str(sft.output_dir)


def test_resolved_configs_pass_axolotl_validation(project):
    for preset, hw in (("qlora-t4", T4), ("lora-a100", A100), ("qlora-t4", CPU)):
        res = _res(project, BASE.format(preset=preset), hw)
        assert check_config(res.stages[0].config) == [], preset


def test_axolotl_rejects_bad_raw_key(project):
    res = _res(project, BASE.format(preset="lora-a100") + "axolotl: {lora_dropout: lots}\n", A100)
    problems = check_config(res.stages[0].config)
    assert problems and any("lora_dropout" in p for p in problems)


def test_cpu_turns_preset_qlora_into_lora(project):
    res = _res(project, BASE.format(preset="qlora-t4"), CPU)
    sft = res.stages[0]
    assert sft.config["adapter"] == "lora" and sft.config["load_in_4bit"] is False
    assert "bnb_config_kwargs" not in sft.config
    assert "4-bit QLoRA -> LoRA" in res.notes[0]
    # On the T4 the preset keeps 4-bit.
    assert _res(project, BASE.format(preset="qlora-t4"), T4).stages[0].config["load_in_4bit"] is True


def test_checkpoint_interval(project):
    own = _res(project, BASE.format(preset="lora-a100") + "training: {max_steps: 8, save_steps: 2}\n", A100).stages[0]
    assert own.config["save_steps"] == 2 and "saves_per_epoch" not in own.config
    auto = _res(project, BASE.format(preset="lora-a100") + "training: {max_steps: 8}\n", A100).stages[0]
    assert auto.config["save_steps"] == 4 and auto.config["auto_resume_from_checkpoints"] is True
    default = _res(project, BASE.format(preset="lora-a100"), A100).stages[0]
    assert default.config["saves_per_epoch"] == 2


def test_tf32_is_turned_off_on_a_gpu_without_it_and_axolotl_accepts_the_result(project):
    """lora-a100, lora-h100, qlora-h100 and full-ft-multigpu ask for tf32, which transformers refuses before
    Ampere: on a T4 (sm 7.5) tunebook turns it off, with the reason, instead of crashing the training."""
    from runner.plan import estimate as P
    from runner.plan.target import target_hardware

    t4 = target_hardware(P.gpu_by_id("t4"), 1)
    for preset in ("lora-a100", "lora-h100", "qlora-h100"):
        res = _res(project, BASE.format(preset=preset), t4)
        sft = res.stages[0]
        assert sft.config["tf32"] is False and sft.sources["tf32"][0] == "hardware", preset
        assert "no TF32" in sft.sources["tf32"][1] and "7.5" in sft.sources["tf32"][1]
        assert sft.config["fp16"] is True and sft.config["bf16"] is False
        assert any("tf32 off" in n for n in res.notes)
        assert check_config(sft.config, t4) == []
    a100 = _res(project, BASE.format(preset="lora-a100"), target_hardware(P.gpu_by_id("a100-80"), 1)).stages[0]
    assert a100.config["tf32"] is True and a100.config["bf16"] is True


def test_axolotl_validates_with_the_gpus_capabilities(project):
    """With a GPU profile, Axolotl's own GPU checks run (without capabilities they never do): fp8 needs sm 9.0."""
    from runner.plan import estimate as P
    from runner.plan.target import target_hardware

    text = BASE.format(preset="lora-h100") + "axolotl: {fp8: true}\n"
    a100 = target_hardware(P.gpu_by_id("a100-80"), 1)
    sft = _res(project, text, a100).stages[0]
    assert any("fp8" in p for p in check_config(sft.config, a100))
    assert check_config(sft.config) == []  # what validation without capabilities (the old check) saw


# ---------------------------------------------------------------------------------------------- early stopping
EPOCHS = """\
base_model: org/model
data: {{train: data/train.jsonl, format: alpaca, validation_fraction: 0.25}}
training: {{epochs: 10{training}}}
{rest}"""


def _sft(project, training="", rest="", hw=CPU):
    res = _res(project, EPOCHS.format(training=training, rest=rest), hw)
    return res, res.stages[0]


def test_early_stopping_is_derived_for_an_sft_stage_with_a_validation_split(project):
    from runner import early_stopping as es

    res, sft = _sft(project)
    rule = sft.config["tunebook_early_stopping"]
    assert rule == {"patience": 2, "min_delta": 0.01, "min_gain": 0.005, "memorised": 0.005, "min_epochs": 2,
                    "record": str(sft.paths.early_stop)}
    assert sft.paths.early_stop == sft.run_dir / "early_stop.json"
    src, why = sft.sources["tunebook_early_stopping"]
    assert src == "derived" and "under 0.005 per trained token" in why and "docs/quality.md" in why
    assert sft.config["plugins"] == [SEED_PLUGIN, es.AXOLOTL_PLUGIN] and sft.sources["plugins"][0] == WIRING
    assert "plus tunebook's early stopping" in sft.sources["plugins"][1]
    # Every epoch's checkpoint is still kept: the rule only ever makes fewer of them.
    assert sft.config["save_strategy"] == "epoch" and sft.config["eval_strategy"] == "epoch"
    assert sft.config["save_total_limit"] >= 11 and not sft.notes
    assert "load_best_model_at_end" not in sft.config and "early_stopping_patience" not in sft.config
    assert check_config(sft.config) == []


def test_the_recipe_overrides_the_rule_key_by_key_and_a_stage_overrides_the_recipe(project):
    _, sft = _sft(project, training=", early_stopping: {patience: 3, min_delta: 0.005}")
    rule = sft.config["tunebook_early_stopping"]
    assert (rule["patience"], rule["min_delta"], rule["memorised"], rule["min_epochs"]) == (3, 0.005, 0.005, 2)
    src, why = sft.sources["tunebook_early_stopping"]
    assert src == "recipe" and why.startswith("training.early_stopping (min_delta 0.005, patience 3; the rest derived)")
    _, staged = _sft(project, training=", early_stopping: false",
                     rest="stages:\n  - sft: {training: {early_stopping: {min_epochs: 4}}}\n")
    assert staged.config["tunebook_early_stopping"]["min_epochs"] == 4
    assert staged.sources["tunebook_early_stopping"][0] == "stage sft"
    _, on = _sft(project, training=", early_stopping: true")
    assert on.config["tunebook_early_stopping"]["patience"] == 2 and on.sources["tunebook_early_stopping"][0] == "recipe"


def test_early_stopping_false_turns_it_off(project):
    res, sft = _sft(project, training=", early_stopping: false")
    assert "tunebook_early_stopping" not in sft.config and sft.config["plugins"] == [SEED_PLUGIN]
    assert sft.notes == ["early stopping off: training.early_stopping is false (recipe)"]
    assert sft.early_stopping_off == "training.early_stopping is false (recipe)"
    assert not any("early_stopping" in n for n in res.notes)
    assert check_config(sft.config) == []


def test_max_steps_one_planned_epoch_or_no_validation_split_turn_it_off(project):
    _, steps = _sft(project, training=", max_steps: 40")
    assert "tunebook_early_stopping" not in steps.config
    assert steps.notes == ["early stopping off: max_steps is set: the stage runs a fixed number of steps"]
    _, two = _sft(project, rest="axolotl: {num_epochs: 2}\n")  # the raw block wins, and the rule sees its value
    assert "tunebook_early_stopping" not in two.config
    assert two.early_stopping_off == "2 epochs planned, not more than min_epochs (2): nothing to cut short"
    res = _res(project, "base_model: org/model\ndata: {train: data/train.jsonl, format: alpaca}\n"
                        "training: {epochs: 10}\n", CPU)
    assert "tunebook_early_stopping" not in res.stages[0].config
    assert "no validation split" in res.stages[0].early_stopping_off


def test_asking_for_it_where_it_cannot_apply_is_a_recipe_note(project):
    res, sft = _sft(project, training=", max_steps: 40, early_stopping: {patience: 3}")
    assert "tunebook_early_stopping" not in sft.config
    assert ("stage sft: training.early_stopping is set but cannot apply: max_steps is set: the stage runs a fixed "
            "number of steps") in res.notes


def test_a_raw_plugin_list_keeps_its_plugins_and_gets_the_rule_added(project):
    from runner import early_stopping as es

    _, sft = _sft(project, rest="axolotl: {plugins: [axolotl.integrations.grokfast.GrokfastPlugin]}\n")
    assert sft.config["plugins"] == ["axolotl.integrations.grokfast.GrokfastPlugin", SEED_PLUGIN, es.AXOLOTL_PLUGIN]
    assert sft.sources["plugins"][0] == "recipe axolotl:" and "early stopping" in sft.sources["plugins"][1]
    _, steps = _sft(project, rest="axolotl: {eval_strategy: steps, eval_steps: 5}\n")
    assert "tunebook_early_stopping" not in steps.config and "once per epoch" in steps.early_stopping_off


def test_a_dpo_stage_gets_no_early_stopping(project):
    res = _res(project, EPOCHS.format(training="", rest="stages:\n  - sft\n  - dpo: {data: {train: data/prefs.jsonl, "
                                                        "format: preference}, training: {epochs: 5}}\n"), CPU)
    sft, dpo = res.stages
    assert "tunebook_early_stopping" in sft.config and "tunebook_early_stopping" not in dpo.config
    assert dpo.early_stopping_off.startswith("dpo stages") and not any("early stopping" in n for n in dpo.notes)


def test_resolve_shows_the_rule_with_its_source_and_why_it_is_off(tmp_path, tiny_base):
    from tests.conftest import make_project, tunebook

    recipe = ("base_model: {m}\ndata: {{train: data/train.jsonl, format: alpaca, validation_fraction: 0.25}}\n"
              "training: {{epochs: 10{t}}}\nstages: [sft]\n")
    root = make_project(tmp_path, {"on": recipe.format(m=tiny_base, t=""),
                                   "off": recipe.format(m=tiny_base, t=", early_stopping: false")},
                        {"data/train.jsonl": ROWS * 4})
    r = tunebook("--root", str(root), "resolve", "on")
    assert r.returncode == 0, r.stderr[-2000:]
    row = next(line for line in r.stdout.splitlines() if line.startswith("│ tunebook_early_stopping"))
    assert "derived" in row and "stop after an epoch" in row, r.stdout
    js = json.loads(tunebook("--root", str(root), "resolve", "on", "--json").stdout)["sft"]
    assert js["sources"]["tunebook_early_stopping"] == "derived"
    assert js["config"]["tunebook_early_stopping"]["patience"] == 2
    off = tunebook("--root", str(root), "resolve", "off")
    assert off.returncode == 0 and "tunebook_early_stopping" not in off.stdout
    assert "note: stage sft: early stopping off: training.early_stopping is false (recipe)" in off.stdout


def test_every_training_stage_applies_its_seed_before_the_model_is_built(project):
    # Axolotl seeds only its Trainer, after peft drew the LoRA matrices: the seed plugin makes one seed one init.
    _, sft = _sft(project, training=", seed: 7")
    assert SEED_PLUGIN in sft.config["plugins"] and sft.config["seed"] == 7
    src, why = sft.sources["plugins"]
    assert src == WIRING and "applies seed 7 before the model and adapter are built" in why
    res = _res(project, "base_model: org/model\ndata: {train: data/train.jsonl, format: alpaca}\n"
                        "training: {epochs: 1}\nstages:\n  - sft\n  - dpo: {data: {train: data/prefs.jsonl, "
                        "format: preference}}\n", CPU)
    assert [st.config["plugins"][0] for st in res.stages] == [SEED_PLUGIN, SEED_PLUGIN]
    assert check_config(sft.config) == []


@pytest.mark.parametrize("variant,keys", [
    ("dora", {"peft_use_dora": True}), ("rslora", {"peft_use_rslora": True}),
    ("pissa", {"peft_init_lora_weights": "pissa_niter_4"}), ("lora", {})])
def test_an_adapter_variant_resolves_to_its_peft_keys_with_provenance_and_passes_axolotl(project, variant, keys):
    from runner.recipe.resolve import LORA_VARIANTS, PISSA_PLUGIN

    _, sft = _sft(project, training=f", lora: {{variant: {variant}}}")
    got = {k: sft.config[k] for ks in LORA_VARIANTS.values() for k in ks if k in sft.config}
    assert got == keys
    for k in keys:
        src, why = sft.sources[k]
        assert src == "recipe" and why.startswith(f"training.lora.variant: {variant} (")
    assert (PISSA_PLUGIN in sft.config["plugins"]) == (variant == "pissa")
    assert check_config(sft.config) == []


def test_a_stage_variant_replaces_the_recipe_variant(project):
    _, sft = _sft(project, training=", lora: {variant: dora}",
                  rest="stages:\n  - sft: {training: {lora: {variant: rslora}}}\n")
    assert "peft_use_dora" not in sft.config and sft.config["peft_use_rslora"] is True
    assert sft.sources["peft_use_rslora"][0] == "stage sft"
    _, plain = _sft(project, training=", lora: {variant: pissa}",
                    rest="stages:\n  - sft: {training: {lora: {variant: lora}}}\n")
    assert "peft_init_lora_weights" not in plain.config


def test_an_unknown_variant_is_refused_with_the_choices(project):
    from runner.errors import RecipeErrors

    with pytest.raises(RecipeErrors) as e:
        _sft(project, training=", lora: {variant: vera}")
    assert "variant" in str(e.value) and "dora" in str(e.value)


def test_a_variant_on_a_full_fine_tune_is_a_note_and_sets_nothing(project):
    res, sft = _sft(project, training=", method: full, lora: {variant: dora}", rest="stages: [sft]\n")
    assert "peft_use_dora" not in sft.config and sft.config.get("adapter") is None
    assert "stage sft: training.lora.variant has no effect on a full fine-tune (method: full)" in res.notes


METHODS = BASE.format(preset="lora-a100") + """\
stages:
  - sft
  - orpo: {data: {train: data/prefs.jsonl, format: preference}}
  - kto: {data: {train: data/prefs.jsonl, format: preference}, training: {micro_batch_size: 1}}
  - simpo: {data: {train: data/prefs.jsonl, format: preference}, training: {max_steps: 40}}
"""


def test_preference_methods_resolve_to_their_trainers_and_pass_axolotl_validation(project):
    res = _res(project, METHODS, A100)
    sft, orpo, kto, simpo = res.stages
    assert [s.config["rl"] for s in (orpo, kto, simpo)] == ["orpo", "kto", "simpo"]
    # Each chains from the previous stage's merged model and reads its own prepared file, in its own shape.
    assert kto.config["base_model"] == str(orpo.run_dir / "merged")
    assert orpo.config["datasets"][0]["type"] == "chat_template.argilla"
    assert kto.config["datasets"][0]["type"]["field_label"] == "label"
    assert simpo.config["datasets"][0]["type"] == "chat_template.default"
    # What each trainer requires, with the reason shown by resolve.
    assert kto.config["remove_unused_columns"] is False
    assert kto.config["micro_batch_size"] == 2 and "KL term" in kto.sources["micro_batch_size"][1]
    assert "warmup_ratio" not in simpo.config and simpo.config["warmup_steps"] == 2  # ceil(0.05 x 40)
    # SimPO's own defaults (recipes/presets/defaults.yaml, methods:), from tunebook, with why.
    assert (simpo.config["rl_beta"], simpo.config["simpo_gamma"], simpo.config["cpo_alpha"]) == (2.0, 1.0, 0.0)
    assert simpo.sources["simpo_gamma"][0] == "tunebook default" and "gamma/beta" in simpo.sources["simpo_gamma"][1]
    assert orpo.config["rl_beta"] == 0.1 and "simpo_gamma" not in orpo.config and "cpo_alpha" not in kto.config
    assert "rl_beta" not in sft.config
    # Refining stages get the small steps; resolve explains each method.
    assert orpo.config["learning_rate"] == 5.0e-5 and orpo.config["num_epochs"] == 1
    assert any(n.startswith("KTO: unpaired examples") for n in kto.notes)
    assert any("ORPO is SFT and preference tuning in one" in n and "continues from stage sft" in n
               for n in res.notes)
    for s in (orpo, kto, simpo):
        assert check_config(s.config) == [], s.name


def test_a_stage_setting_overrides_the_method_default(project):
    text = BASE.format(preset="lora-a100") + """\
stages:
  - sft
  - simpo: {data: {train: data/prefs.jsonl, format: preference}, training: {beta: 2.5, gamma: 0.5}}
"""
    simpo = _res(project, text, A100).stages[1]
    assert (simpo.config["rl_beta"], simpo.config["simpo_gamma"]) == (2.5, 0.5)
    assert simpo.sources["simpo_gamma"][0] == "stage simpo"


def test_orpo_as_the_first_stage_learns_the_answers_with_sft_defaults(project):
    text = """\
base_model: org/model
preset: lora-a100
data: {train: data/prefs.jsonl, format: preference}
stages: [orpo, merge]
"""
    res = _res(project, text, A100)
    orpo, merge = res.stages
    assert orpo.config["base_model"] == "org/model" and orpo.config["rl"] == "orpo"
    assert orpo.config["datasets"][0]["path"].endswith("runs/t/data/main/train.jsonl")
    # Not the 1 epoch at 5e-5 of a stage that refines another: the training defaults of a first stage.
    assert orpo.config["num_epochs"] != 1 and orpo.config["learning_rate"] != 5.0e-5
    assert not any("ORPO is SFT" in n for n in res.notes)
    assert merge.config["lora_model_dir"] == str(orpo.output_dir)
    assert check_config(orpo.config) == []
