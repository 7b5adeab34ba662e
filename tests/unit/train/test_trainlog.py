"""Reading Trainer logs: metrics dicts, trained share, and which epoch to keep."""
from __future__ import annotations

import json

from runner.train.trainlog import best_epoch, from_log, summary


def _ckpts(out, losses, steps_per_epoch=10):
    hist = []
    for e, loss in enumerate(losses, 1):
        hist.append({"epoch": float(e), "step": e * steps_per_epoch, "eval_loss": loss})
    for e in range(1, len(losses) + 1):
        d = out / f"checkpoint-{e * steps_per_epoch}"
        d.mkdir(parents=True)
        (d / "trainer_state.json").write_text(json.dumps({"epoch": float(e), "log_history": hist[:e]}))


def test_best_epoch_prefers_later_within_tolerance(tmp_path):
    _ckpts(tmp_path, [3.5, 1.3, 0.816, 0.6957, 0.6996, 0.699])
    b = best_epoch(tmp_path)
    assert b["epoch"] == 6 and b["checkpoint"] == "checkpoint-60" and b["lowest_eval_loss"] == 0.6957


def test_best_epoch_rejects_overfitting(tmp_path):
    _ckpts(tmp_path, [2.0, 1.0, 0.8, 0.9, 1.1])
    b = best_epoch(tmp_path)
    assert b["epoch"] == 3 and b["step"] == 30 and b["eval_loss_per_epoch"] == [2.0, 1.0, 0.8, 0.9, 1.1]


def test_no_checkpoints_no_choice(tmp_path):
    assert best_epoch(tmp_path) is None


def test_a_run_stopped_early_keeps_its_best_of_the_epochs_that_ran(tmp_path):
    # 10 epochs planned, stopped by the early-stopping rule after 3: three checkpoints, the last one's log has all.
    _ckpts(tmp_path, [0.112, 0.024, 0.0006])
    b = best_epoch(tmp_path)
    assert b["checkpoint"] == "checkpoint-30" and b["epochs_run"] == 3
    assert b["eval_loss_per_epoch"] == [0.112, 0.024, 0.0006]


def test_a_diverged_epoch_is_never_kept_and_is_null_in_the_records(tmp_path):
    nan = float("nan")
    _ckpts(tmp_path, [nan, 1.0, 0.8, nan])
    b = best_epoch(tmp_path)
    assert b["epoch"] == 3 and b["lowest_eval_loss"] == 0.8 and b["eval_loss_per_epoch"] == [None, 1.0, 0.8, None]
    json.dumps(b, allow_nan=False)
    s = summary([{"eval_loss": nan}, {"eval_loss": 0.5}])
    assert s["eval_loss"] == [None, 0.5] and s["eval_loss_best"] == 0.5
    json.dumps(s, allow_nan=False)
    empty = tmp_path / "all-nan"
    _ckpts(empty, [nan, nan])
    assert best_epoch(empty) is None and "eval_loss_best" not in summary([{"eval_loss": nan}])


def test_from_log_reads_trainer_dicts(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(" 17%|  | 1/6 [00:03<00:18] {'loss': '3.487', 'grad_norm': '2.002', 'tokens/trainable': 75, "
                   "'tokens/total': 256, 'epoch': '0.1667'}\r 33%| {'loss': '2.745', 'tokens/trainable': 161, "
                   "'tokens/total': 512, 'epoch': '0.3333'}\n{'train_runtime': '42.16', 'train_loss': '2.475', "
                   "'epoch': '1'}\n{'loss': 'x' broken\n")
    hist = from_log(log)
    assert [h.get("loss") for h in hist] == [3.487, 2.745, None]
    s = summary(hist)
    assert s["train_loss_first"] == 3.487 and s["train_loss_last"] == 2.745
    assert s["train_runtime_s"] == 42.16 and s["trained_share"] == round(161 / 512, 4)
