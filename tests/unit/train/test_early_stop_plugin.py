"""The early-stopping plugin (runner.train.early_stop_plugin): its callback driven with transformers' own
TrainerState/TrainerControl and inside a real Trainer on a toy module (no model, no Axolotl training), and the
plugin loaded and validated through Axolotl's plugin manager and config schema."""
from __future__ import annotations

import json

import pytest
from transformers import TrainerControl, TrainerState

from runner import early_stopping as es
from runner.train import trainlog
from runner.train.early_stop_plugin import EarlyStopCallback, EarlyStopPlugin, eval_losses

FACTS = [0.112, 0.024, 0.0006, 0.0003, 0.0003]
STEPS_PER_EPOCH = 7


def _callback(tmp_path, rule=es.DEFAULT, planned=10):
    return EarlyStopCallback(rule, tmp_path / "early_stop.json", planned)


def _epochs(cb, losses, state=None, control=None, steps=STEPS_PER_EPOCH, planned=10):
    """Evaluate after each epoch as the Trainer does (log first, then on_evaluate); stop when told to."""
    state = state or TrainerState(max_steps=steps * planned)
    control = control or TrainerControl()
    for loss in losses:
        state.global_step += steps
        state.epoch = state.global_step / steps
        state.log_history.append({"eval_loss": loss, "epoch": state.epoch, "step": state.global_step})
        control = cb.on_evaluate(None, state, control, metrics={"eval_loss": loss})
        if control.should_training_stop:
            break
    return state, control


def test_the_callback_stops_training_after_the_epoch_the_rule_fires(tmp_path):
    cb = _callback(tmp_path)
    state, control = _epochs(cb, FACTS[:2])
    assert not control.should_training_stop
    running = json.loads((tmp_path / "early_stop.json").read_text())
    assert running["finished"] is False and running["epochs_run"] == 2 and running["stopped_early"] is False

    state, control = _epochs(cb, FACTS[2:], state, control)
    assert control.should_training_stop and state.global_step == 3 * STEPS_PER_EPOCH
    cb.on_train_end(None, state, control)
    rec = json.loads((tmp_path / "early_stop.json").read_text())
    assert rec["stopped_early"] is True and rec["finished"] is True and rec["condition"] == "memorised"
    assert (rec["epochs_run"], rec["epochs_planned"], rec["step"]) == (3, 10, 21)
    assert rec["eval_loss_per_epoch"] == [0.112, 0.024, 0.0006]
    assert es.stop_message("sft", rec).startswith("sft: stopped after epoch 3 of 10: validation loss 0.0006")


def test_a_run_that_keeps_improving_runs_every_epoch_and_says_so(tmp_path):
    cb = _callback(tmp_path, planned=4)
    state, control = _epochs(cb, [1.20, 0.95, 0.90, 0.885], planned=4)
    assert not control.should_training_stop
    cb.on_train_end(None, state, control)
    rec = es.read_record(tmp_path / "early_stop.json")
    assert rec["stopped_early"] is False and rec["epochs_run"] == 4 and rec["reason"].startswith("all 4 planned")


def test_the_rule_firing_at_the_last_step_is_no_early_stop(tmp_path):
    cb = _callback(tmp_path, planned=3)
    state, control = _epochs(cb, [1.0, 0.5, 0.0001], planned=3)  # learned, but epoch 3 is the last anyway
    assert state.global_step == state.max_steps and not control.should_training_stop
    cb.on_train_end(None, state, control)
    rec = es.read_record(tmp_path / "early_stop.json")
    assert rec["stopped_early"] is False and "the rule was met only at the last" in rec["reason"]


def test_a_resumed_run_judges_the_epochs_before_the_interruption(tmp_path):
    # The trainer state comes back from the checkpoint with its log history: a fresh callback sees epochs 1-2.
    state = TrainerState(max_steps=70, global_step=14)
    state.log_history = [{"loss": 1.0, "step": 7}, {"eval_loss": 0.112, "step": 7}, {"eval_loss": 0.024, "step": 14}]
    state, control = _epochs(_callback(tmp_path), [0.0006], state)
    assert control.should_training_stop
    assert es.read_record(tmp_path / "early_stop.json")["epochs_run"] == 3


def test_losses_come_from_the_log_one_per_step_and_from_metrics_not_yet_logged():
    state = TrainerState(global_step=14)
    state.log_history = [{"eval_loss": 0.5, "step": 7}, {"loss": 0.4, "step": 8}, {"eval_loss": 0.45, "step": 7}]
    assert eval_losses(state) == [0.45]
    assert eval_losses(state, {"eval_loss": 0.3}) == [0.45, 0.3]
    state.log_history.append({"eval_loss": 0.3, "step": 14})
    assert eval_losses(state, {"eval_loss": 0.3}) == [0.45, 0.3]


def test_an_evaluation_before_the_first_step_is_no_epoch():
    """Axolotl evaluates the untrained model at step 0: counted as an epoch, it made a 10-epoch run "11 of 10"
    and shifted every epoch the rule judged by one."""
    state = TrainerState()
    state.log_history = [{"eval_loss": 2.74, "step": 0}, {"eval_loss": 1.09, "step": 5}]
    assert eval_losses(state) == [1.09]
    state.global_step = 0
    assert eval_losses(state, {"eval_loss": 2.74}) == [1.09]


def test_an_evaluation_a_few_steps_past_the_planned_epochs_is_no_epoch(tmp_path):
    """hr-bot with sample packing (measured): Axolotl planned 400 steps for 4 epochs of 99, the trainer evaluated at
    each epoch end and again at step 400 (epoch 4.04); counted, the record said 5 epochs ran of 4."""
    cb = _callback(tmp_path, planned=4)
    state = TrainerState(max_steps=400)
    for step, epoch, loss in [(99, 1.0, 1.1317), (198, 2.0, 0.7430), (297, 3.0, 0.5388), (396, 4.0, 0.55156),
                              (400, 4.0404, 0.551559)]:
        state.global_step, state.epoch = step, epoch
        state.log_history.append({"eval_loss": loss, "epoch": epoch, "step": step})
        cb.on_evaluate(None, state, TrainerControl(), metrics={"eval_loss": loss})
    assert eval_losses(state, planned=4) == [1.1317, 0.7430, 0.5388, 0.55156]
    cb.on_train_end(None, state, TrainerControl())
    rec = es.read_record(tmp_path / "early_stop.json")
    assert (rec["epochs_run"], rec["epochs_planned"], rec["stopped_early"]) == (4, 4, False)
    assert rec["reason"].startswith("all 4 planned epochs ran; after the last: validation loss 0.5516"), rec["reason"]


def test_a_last_epoch_cut_short_by_the_step_estimate_is_still_an_epoch(tmp_path):
    """support-faq (measured): 8 epochs planned, the packed step estimate ended training at epoch 7.87, and that
    evaluation is the eighth epoch's."""
    cb = _callback(tmp_path, planned=8)
    state = TrainerState(max_steps=424)
    losses = [0.882, 0.850, 0.516, 0.410, 0.227, 0.219, 0.225, 0.223]
    for k, loss in enumerate(losses, 1):
        state.global_step, state.epoch = (54 * k, float(k)) if k < 8 else (424, 7.87)
        state.log_history.append({"eval_loss": loss, "epoch": state.epoch, "step": state.global_step})
        cb.on_evaluate(None, state, TrainerControl(), metrics={"eval_loss": loss})
    cb.on_train_end(None, state, TrainerControl())
    rec = es.read_record(tmp_path / "early_stop.json")
    assert (rec["epochs_run"], rec["eval_loss_per_epoch"]) == (8, losses)


def test_only_the_main_process_writes_the_record_but_every_process_stops(tmp_path):
    state = TrainerState(max_steps=70, is_world_process_zero=False)
    cb = _callback(tmp_path)
    state, control = _epochs(cb, FACTS, state)
    cb.on_train_end(None, state, control)
    assert control.should_training_stop and not (tmp_path / "early_stop.json").exists()


def test_a_run_that_never_evaluated_leaves_no_record(tmp_path):
    cb = _callback(tmp_path)
    cb.on_train_end(None, TrainerState(max_steps=10, global_step=10), TrainerControl())
    assert not (tmp_path / "early_stop.json").exists()


def test_inside_a_real_trainer_the_stop_epochs_checkpoint_is_saved(tmp_path):
    """transformers' own loop (save_strategy and eval_strategy epoch, as tunebook resolves them): the callback
    stops in on_evaluate, the stop epoch's checkpoint is still written, and tunebook's best-epoch choice works on
    the three epochs that ran out of ten planned."""
    import torch
    from transformers import Trainer, TrainingArguments

    class Scripted(torch.nn.Module):
        """A toy regression for training; its validation loss is the next value of a script (one eval row)."""

        def __init__(self, losses):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.script = iter(losses)

        def forward(self, x, labels=None):
            if self.training:
                return {"loss": ((self.w * x - labels) ** 2).mean()}
            return {"loss": torch.tensor(next(self.script)) + 0 * self.w.sum()}

    class Rows(torch.utils.data.Dataset):
        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            return {"x": torch.tensor([1.0]), "labels": torch.tensor([2.0])}

    out = tmp_path / "output"
    record = tmp_path / "early_stop.json"
    args = TrainingArguments(output_dir=str(out), num_train_epochs=10, per_device_train_batch_size=1,
                             per_device_eval_batch_size=1, eval_strategy="epoch", save_strategy="epoch",
                             save_total_limit=11, logging_steps=1, learning_rate=0.1, report_to="none",
                             disable_tqdm=True, use_cpu=True, save_only_model=True, prediction_loss_only=True,
                             remove_unused_columns=False, dataloader_num_workers=0)
    trainer = Trainer(model=Scripted(FACTS + [0.0003] * 5), args=args, train_dataset=Rows(2),
                      eval_dataset=Rows(1), callbacks=[EarlyStopCallback(es.DEFAULT, record, 10)])
    trainer.train()
    assert trainer.state.global_step == 6  # 3 epochs of 2 steps, of 20 planned
    assert [p.name for p in trainlog.checkpoints(out)] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    logged = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())["log_history"]
    assert [h["eval_loss"] for h in logged if "eval_loss" in h] == pytest.approx(FACTS[:3])
    best = trainlog.best_epoch(out)
    assert best["checkpoint"] == "checkpoint-6" and best["epochs_run"] == 3
    assert best["eval_loss_per_epoch"] == [0.112, 0.024, 0.0006]
    rec = es.read_record(record)
    assert rec["stopped_early"] and rec["finished"] and (rec["epochs_run"], rec["step"]) == (3, 6)


# ------------------------------------------------------------------------------------------- through Axolotl
MINIMAL = {"base_model": "org/model", "datasets": [{"path": "a.jsonl", "type": "chat_template", "ds_type": "json"}],
           "micro_batch_size": 1, "num_epochs": 10, "learning_rate": 1e-3, "sequence_len": 128, "output_dir": "/tmp/o"}


def _with_rule(**settings) -> dict:
    rule = {**es.DEFAULT.to_dict(), "record": "/tmp/r/sft/early_stop.json", **settings}
    return {**MINIMAL, "plugins": [es.AXOLOTL_PLUGIN], es.CONFIG_KEY: rule}


def test_the_plugin_loads_through_axolotls_plugin_manager():
    from axolotl.integrations.base import PluginManager, load_plugin
    from axolotl.integrations.config import merge_input_args
    from axolotl.utils.dict import DictDefault

    plugin = load_plugin(es.AXOLOTL_PLUGIN)
    assert isinstance(plugin, EarlyStopPlugin)
    PluginManager.get_instance().register(es.AXOLOTL_PLUGIN)
    assert "runner.train.early_stop_plugin.EarlyStoppingArgs" in PluginManager.get_instance().get_input_args()
    _, schema = merge_input_args()
    assert es.CONFIG_KEY in schema.model_fields
    cbs = plugin.add_callbacks_pre_trainer(DictDefault(_with_rule(patience=3)), model=None)
    assert len(cbs) == 1 and isinstance(cbs[0], EarlyStopCallback)
    assert cbs[0].rule == es.Rule(patience=3) and cbs[0].planned == 10
    assert str(cbs[0].path) == "/tmp/r/sft/early_stop.json"
    # The manager is a singleton that asks every plugin it ever registered: a config without the key gets nothing.
    assert plugin.add_callbacks_pre_trainer(DictDefault(MINIMAL), model=None) == []


def test_axolotls_validation_keeps_the_settings_and_applies_their_bounds():
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    from axolotl.integrations.base import PluginManager

    from runner.train.config_check import check_config

    assert check_config(_with_rule()) == []
    # As `axolotl train` does (prepare_plugins) before it validates: Axolotl itself keeps and checks the keys.
    PluginManager.get_instance().register(es.AXOLOTL_PLUGIN)
    out = validate_config(DictDefault(_with_rule(patience=3)))
    assert out[es.CONFIG_KEY]["patience"] == 3 and out[es.CONFIG_KEY]["record"] == "/tmp/r/sft/early_stop.json"
    assert any("tunebook_early_stopping.patience" in p for p in check_config(_with_rule(patience=0)))
    assert any("tunebook_early_stopping.min_delta" in p for p in check_config(_with_rule(min_delta=2.0)))
    assert any(p.startswith("tunebook_early_stopping.typo") for p in check_config(_with_rule(typo=1)))
