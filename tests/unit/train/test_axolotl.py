"""The Axolotl seam ($TUNEBOOK_AXOLOTL) and the stand-in behind it, checked against the outputs recorded from a real
Axolotl 0.19 run (tests/fixtures/axolotl/): tunebook's log reader gives the recorded run's numbers from the recorded
log, and the stand-in writes files of the recorded shape, so the bookkeeping tests on it test what real runs do."""
from __future__ import annotations

import json
import os
from pathlib import Path

from runner.train import trainlog
from runner.train.axolotl import axolotl_exe
from tests.conftest import REPO
from tests.fakes.pipeline_project import CHAIN, RESUME, train

FIXTURES = REPO / "tests" / "fixtures" / "axolotl"
# manifest.json's sft metrics of the recorded run (`make train RECIPE=ci-mini`, the run the fixtures come from).
RECORDED_SFT_METRICS = {"train_loss_first": 3.232, "train_loss_last": 1.337, "train_loss_min": 1.337,
                        "logged_steps": 6, "tokens_trainable": 2811, "tokens_total": 6144, "trained_share": 0.4575,
                        "train_runtime_s": 58.87, "train_loss": 2.063}


def sig4(x: float) -> float:
    """A value as the Trainer prints it in the log (4 significant digits)."""
    return float(f"{x:.4g}")


def test_axolotl_imports_tunebooks_plugin_from_this_checkout(tmp_path, monkeypatch):
    """The early-stopping plugin runs inside Axolotl's process: it must be this checkout's code even when the venv's
    editable install names another checkout (a git worktree)."""
    import subprocess
    import sys

    from runner.train.axolotl import child_env

    monkeypatch.setenv("PYTHONPATH", f"/elsewhere{os.pathsep}{REPO}")
    env = child_env()
    assert env["PYTHONPATH"].split(os.pathsep) == [str(REPO), "/elsewhere"]
    where = subprocess.run([sys.executable, "-c", "import runner; print(runner.__file__)"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where) == REPO / "runner" / "__init__.py"


def test_the_seam_names_the_stand_in(standin, monkeypatch):
    assert axolotl_exe() == str(standin.exe)
    monkeypatch.delenv("TUNEBOOK_AXOLOTL")
    assert axolotl_exe() != str(standin.exe) and Path(axolotl_exe()).name == "axolotl"


def test_the_recorded_log_reads_as_the_recorded_run(tmp_path):
    log = tmp_path / "train.log"
    log.write_text((FIXTURES / "sft-lora" / "train.log").read_text())
    assert trainlog.summary(trainlog.from_log(log)) == RECORDED_SFT_METRICS
    # trainer_state.json of the last checkpoint holds the same per-step history.
    ck = tmp_path / "output" / "checkpoint-6"
    ck.mkdir(parents=True)
    (ck / "trainer_state.json").write_text((FIXTURES / "sft-lora" / "trainer_state.json").read_text())
    state = trainlog.from_trainer_state(tmp_path / "output")
    assert [sig4(h["loss"]) for h in state] == [h["loss"] for h in trainlog.from_log(log) if "loss" in h]


def test_the_stand_in_writes_the_recorded_shapes(proj, standin):
    root = proj(RESUME)
    train(root)
    out = root / "runs/r/sft/output"
    call = standin.calls("train")[0]
    # tunebook runs Axolotl as `axolotl train CONFIG --launcher ...`, in a session of its own (so that a kill of
    # its process group reaches every trainer process, and Ctrl-C in tunebook's terminal is tunebook's to handle).
    assert call["argv"][:2] == ["train", str(root / "runs/r/sft/axolotl.yaml")] and "--launcher" in call["argv"]
    assert call["sid"] == call["pid"]
    recorded = json.loads((FIXTURES / "sft-lora" / "trainer_state.json").read_text())
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert set(state) == set(recorded)
    assert {k for h in state["log_history"] for k in h} == {k for h in recorded["log_history"] for k in h} | \
        {"tokens/train_per_sec_per_gpu"}
    assert set(json.loads((out / "adapter_config.json").read_text())) == \
        set(json.loads((FIXTURES / "sft-lora" / "adapter_config.json").read_text()))
    # Saved every 2 steps; tunebook's save_total_limit (2) keeps the last two, as the Trainer rotates them.
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    # What tunebook reads from the log and from the state agrees, as it does for a real run.
    hist_log = trainlog.from_log(root / "runs/r/sft/train.log")
    assert [h["loss"] for h in hist_log if "loss" in h] == [sig4(h["loss"]) for h in state["log_history"]]
    s = trainlog.summary(hist_log)
    assert set(s) == set(RECORDED_SFT_METRICS) and s["logged_steps"] == 6


def test_the_stand_in_merges_into_a_loadable_model(proj, standin, tiny_base):
    from transformers import AutoModelForCausalLM

    root = proj(CHAIN)
    train(root)
    merged = root / "runs/r/merge/merged"
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= \
        {p.name for p in merged.iterdir()}
    model = AutoModelForCausalLM.from_pretrained(merged)
    assert model.config.num_hidden_layers == 2
    # DPO's log has the reward keys tunebook reads (recorded key names).
    hist = trainlog.from_log(root / "runs/r/dpo/train.log")
    assert {"rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected"} <= set(hist[0])
