"""The pipeline's bookkeeping, through the `tunebook` commands, on the stand-in Axolotl (tests/fakes/axolotl_standin.py
behind $TUNEBOOK_AXOLOTL) and a 2-layer base model: which stages run, which are skipped and why, what `status`
says, --force/--until, a failed stage and the resume from its last checkpoint, the epoch kept, gates.
Nothing is trained; real Axolotl runs are in tests/e2e."""
from __future__ import annotations

import json
from pathlib import Path

from tests.fakes.pipeline_project import (CHAIN, EPOCHS, EVAL, RESUME, ROWS, lock, manifest, new_project, states,
                                          status, tb, train, trained_stages)


# ---------------------------------------------------------------------------------------------- what re-runs


def test_touching_preference_data_reruns_dpo_and_merge_only(proj, standin):
    root = proj(CHAIN)
    train(root)
    sft_entry = lock(root)["stages"]["sft"]
    prefs = root / "data/prefs.jsonl"
    prefs.write_text(prefs.read_text() + json.dumps({"prompt": "Where do I park my bike?", "chosen": "In the yard.",
                                                     "rejected": "No idea."}) + "\n")

    st = status(root)
    assert st["sft"][0] == "done"
    assert st["dpo"] == ("stale", "data dpo:data/prefs.jsonl changed")
    assert st["merge"] == ("stale", "upstream stage dpo will re-run")
    assert len(standin.calls()) == 4, "status runs nothing"

    n = len(standin.calls())
    r = train(root)
    assert "sft: up to date" in r.stderr
    assert "dpo: re-running because data dpo:data/prefs.jsonl changed" in r.stderr
    assert "merge: re-running because upstream stage dpo produced a new result" in r.stderr
    assert trained_stages(standin)[2:] == ["dpo"] and len(standin.calls("merge-lora")) == 3
    assert len(standin.calls()) == n + 2
    assert lock(root)["stages"]["sft"] == sft_entry


def test_touching_the_main_data_reruns_everything_downstream(proj, standin):
    root = proj(CHAIN)
    train(root)
    (root / "data/train.jsonl").write_text(ROWS + json.dumps({"instruction": "Where is the canteen?",
                                                              "output": "On the ground floor."}) + "\n")
    st = status(root)
    assert st["sft"][0] == "stale" and "data main:data/train.jsonl changed" in st["sft"][1]
    assert st["dpo"] == ("stale", "upstream stage sft will re-run") and st["merge"][0] == "stale"
    r = train(root)
    assert "sft: re-running because data main:data/train.jsonl changed" in r.stderr
    assert "dpo: re-running because upstream stage sft produced a new result" in r.stderr
    assert trained_stages(standin) == ["sft", "dpo", "sft", "dpo"]


def test_a_changed_setting_reruns_with_the_reason(proj, standin):
    root = proj(CHAIN)
    train(root)
    recipe = root / "recipes/r.yaml"
    recipe.write_text(recipe.read_text().replace("max_steps: 3, micro_batch_size: 2",
                                                 "max_steps: 3, micro_batch_size: 2, beta: 0.2"))
    st = status(root)
    assert st["sft"][0] == "done" and st["dpo"] == ("stale", "its resolved Axolotl config changed")
    r = train(root)
    assert "dpo: re-running because its resolved Axolotl config changed" in r.stderr
    assert trained_stages(standin) == ["sft", "dpo", "dpo"]


def test_modified_outputs_make_a_stage_stale(proj, standin):
    root = proj(CHAIN)
    train(root)
    (root / "runs/r/merge/merged/model.safetensors").write_bytes(b"not the merged model")
    st = status(root)
    assert st["merge"] == ("stale", "its outputs are missing or were modified")
    assert st["sft"][0] == "done" and st["dpo"][0] == "done"
    train(root)
    assert trained_stages(standin) == ["sft", "dpo"] and len(standin.calls("merge-lora")) == 3
    assert status(root)["merge"][0] == "done"


def test_force_and_until(proj, standin):
    root = proj(CHAIN)
    r = train(root, "--until", "sft")
    # sft merges its adapter for dpo (which trains on the merged model); the merge stage does not run.
    assert trained_stages(standin) == ["sft"]
    assert [Path(c["config"]).relative_to(root / "runs/r").as_posix() for c in standin.calls("merge-lora")] == \
        ["sft/merge.yaml"]
    assert set(lock(root)["stages"]) == {"sft"}
    assert states(root) == {"sft": "done", "dpo": "not run", "merge": "not run"}
    assert "dpo:" not in r.stdout

    train(root)
    assert trained_stages(standin) == ["sft", "dpo"], "sft is up to date after --until"
    r = train(root, "--force", "sft")
    assert trained_stages(standin) == ["sft", "dpo", "sft"]
    # The forced stage made the same result from the same inputs: what depends on it stays up to date.
    assert "dpo: up to date" in r.stderr and "merge: up to date" in r.stderr

    bad = tb(root, "train", "r", "--force", "nope")
    assert bad.returncode == 2 and "recipe r has no stage 'nope'" in bad.stderr and "sft, dpo, merge" in bad.stderr
    assert len(standin.calls("train")) == 3


# ---------------------------------------------------------------------------------------------- failure and resume


def test_a_failed_stage_leaves_no_lock_entry_and_the_next_run_resumes(proj, standin, monkeypatch):
    root = proj(RESUME)
    out = root / "runs/r/sft/output"
    monkeypatch.setenv("TUNEBOOK_STANDIN_FAIL_AT", "5")
    r = train(root, ok=False)
    assert r.returncode == 1
    assert "stage 'sft' failed: Axolotl exited with code 1" in r.stderr
    assert "RuntimeError: stand-in: failing at step 5" in r.stderr  # the log's tail is quoted
    assert "runs/r/sft/train.log" in r.stderr
    assert not (root / "runs/r/tunebook.lock").exists() or "sft" not in lock(root)["stages"]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert states(root) == {"sft": "not run", "merge": "not run"}

    monkeypatch.delenv("TUNEBOOK_STANDIN_FAIL_AT")
    r = train(root)
    assert "sft: resuming from checkpoint-4 (a previous run of this stage was interrupted)" in r.stderr
    second = standin.calls("train")[-1]
    assert second["resumed_from"] == str(out / "checkpoint-4") and second["first_step"] == 5
    log = (root / "runs/r/sft/train.log").read_text()
    assert f"Using auto-resume functionality to resume from checkpoint at {out / 'checkpoint-4'}" in log
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    assert [h["step"] for h in state["log_history"] if "loss" in h] == [1, 2, 3, 4, 5, 6]
    assert set(lock(root)["stages"]) == {"sft", "merge"}


def test_a_resumed_stage_ends_as_an_uninterrupted_one(proj, standin, monkeypatch, tmp_path, tiny_base):
    root = proj(RESUME)
    monkeypatch.setenv("TUNEBOOK_STANDIN_FAIL_AT", "3")
    train(root, ok=False)
    monkeypatch.delenv("TUNEBOOK_STANDIN_FAIL_AT")
    train(root)
    clean = new_project(tmp_path / "clean", tiny_base, RESUME)
    train(clean)
    for f in ("adapter_model.safetensors", "adapter_config.json"):
        assert (root / "runs/r/sft/output" / f).read_bytes() == (clean / "runs/r/sft/output" / f).read_bytes()
    assert lock(root)["stages"]["sft"]["output_hash"] == lock(clean)["stages"]["sft"]["output_hash"]


def test_changed_inputs_after_a_failure_start_fresh(proj, standin, monkeypatch):
    root = proj(RESUME)
    monkeypatch.setenv("TUNEBOOK_STANDIN_FAIL_AT", "5")
    train(root, ok=False)
    monkeypatch.delenv("TUNEBOOK_STANDIN_FAIL_AT")
    (root / "data/train.jsonl").write_text(ROWS + ROWS.splitlines()[1].replace("item 1", "item one") + "\n")
    r = train(root)
    assert "sft: inputs changed since the last attempt; starting fresh" in r.stderr
    assert "resuming" not in r.stderr
    assert standin.calls("train")[-1]["resumed_from"] is None and standin.calls("train")[-1]["first_step"] == 1


def test_a_failed_merge_keeps_the_trained_stage(proj, standin, monkeypatch):
    root = proj(RESUME)
    monkeypatch.setenv("TUNEBOOK_STANDIN_FAIL", "merge-lora")
    r = train(root, ok=False)
    assert r.returncode == 1 and "stage 'merge' failed: Axolotl exited with code 1" in r.stderr
    assert set(lock(root)["stages"]) == {"sft"}
    assert not (root / "runs/r/merge/merged").exists()
    st = status(root)
    assert st["sft"][0] == "done" and st["merge"][0] == "not run"
    monkeypatch.delenv("TUNEBOOK_STANDIN_FAIL")
    r = train(root)
    assert "sft: up to date" in r.stderr and len(standin.calls("train")) == 1
    assert (root / "runs/r/merge/merged/model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------- epochs, gates


def test_the_epoch_kept_is_chosen_on_the_validation_loss(proj, standin, monkeypatch):
    root = proj(EPOCHS)
    monkeypatch.setenv("TUNEBOOK_STANDIN_EVAL_LOSSES", "2.0,1.5,1.6")
    r = train(root)
    out = root / "runs/r/sft/output"
    best = json.loads((root / "runs/r/sft/best_epoch.json").read_text())
    assert best["eval_loss_per_epoch"] == [2.0, 1.5, 1.6] and best["epoch"] == 2 and best["epochs_run"] == 3
    assert "sft: kept epoch 2 of 3 (validation loss 1.5000, lowest 1.5000; per epoch: 2.000, 1.500, 1.600)" in r.stderr
    kept = (out / best["checkpoint"] / "adapter_model.safetensors").read_bytes()
    assert kept == (out / "adapter_model.safetensors").read_bytes()
    last = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    assert (last / "adapter_model.safetensors").read_bytes() != kept
    assert manifest(root)["stages"]["sft"]["best_epoch"] == best


def test_a_stage_stopped_early_reports_why_and_the_manifest_records_it(proj, standin, monkeypatch):
    """The early-stopping rule (the stand-in runs it as the plugin does in Axolotl): it stops after epoch 3 of 8,
    `train` says why, the best of the three epochs is kept, and the manifest records the epochs; its settings are
    stage inputs (turning it off re-runs the stage, which then trains every epoch)."""
    root = proj(EPOCHS.replace("epochs: 3", "epochs: 8"))
    monkeypatch.setenv("TUNEBOOK_STANDIN_EVAL_LOSSES", "2.0,0.5,0.0005,0.0004")
    r = train(root)
    reason = "validation loss 0.0005 is under 0.005 per trained token (the model has learned the set)"
    assert f"sft: stopped after epoch 3 of 8: {reason}" in r.stderr
    assert "sft: kept epoch 3 of 3 (validation loss 0.0005" in r.stderr
    out = root / "runs/r/sft/output"
    assert len(list(out.glob("checkpoint-*"))) == 3
    rec = json.loads((root / "runs/r/sft/early_stop.json").read_text())
    assert rec["stopped_early"] and rec["finished"] and rec["eval_loss_per_epoch"] == [2.0, 0.5, 0.0005]
    sft = manifest(root)["stages"]["sft"]
    assert (sft["epochs_planned"], sft["epochs_run"], sft["stopped_early"]) == (8, 3, True)
    assert sft["stop_reason"] == reason and sft["best_epoch"]["checkpoint"] == f"checkpoint-{rec['step']}"
    assert "nothing to do" in train(root).stderr

    recipe = root / "recipes/r.yaml"
    recipe.write_text(recipe.read_text().replace("sample_packing: false}", "sample_packing: false, "
                                                                           "early_stopping: false}"))
    assert status(root)["sft"] == ("stale", "its resolved Axolotl config changed")
    r = train(root)
    assert "stopped after" not in r.stderr and "early stopping did not fire" not in r.stderr
    assert not (root / "runs/r/sft/early_stop.json").exists(), "the earlier attempt's record went with it"
    sft = manifest(root)["stages"]["sft"]
    assert (sft["epochs_planned"], sft["epochs_run"], sft["stopped_early"]) == (8, 8, False)
    assert sft["stop_reason"] == "early stopping off: training.early_stopping is false (recipe)"
    assert len(list(out.glob("checkpoint-*"))) == 8


def test_a_stage_that_ran_every_epoch_says_the_rule_did_not_fire(proj, standin, monkeypatch):
    root = proj(EPOCHS.replace("epochs: 3", "epochs: 4"))
    monkeypatch.setenv("TUNEBOOK_STANDIN_EVAL_LOSSES", "1.20,0.95,0.90,0.885")
    r = train(root)
    assert "sft: early stopping did not fire: all 4 planned epochs ran; after the last: validation loss 0.885" in r.stderr
    sft = manifest(root)["stages"]["sft"]
    assert (sft["epochs_planned"], sft["epochs_run"], sft["stopped_early"]) == (4, 4, False)


def test_a_failed_gate_is_recorded_and_stops_the_pipeline(proj, standin):
    root = proj(EVAL, threshold=0.99)
    r = train(root, ok=False)
    assert r.returncode == 1
    assert "eval gate failed: held-out exact_match = 0.000, needs >= 0.99" in r.stderr
    entry = lock(root)["stages"]["eval"]
    assert entry["gate"] == "failed" and entry["failed_gates"] == ["held-out exact_match = 0.000, needs >= 0.99"]
    assert "output_hash" not in entry
    metrics = json.loads((root / "runs/r/eval/metrics.json").read_text())
    assert metrics["passed"] is False and metrics["gates"][0]["gate"] == "exact_match"
    st = status(root)
    assert st["eval"] == ("gate failed", "held-out exact_match = 0.000, needs >= 0.99")
    assert st["sft"][0] == "done" and st["merge"][0] == "done"

    r = train(root, ok=False)
    assert r.returncode == 1 and "eval: re-evaluating: its gate failed last time" in r.stderr
    assert "sft: up to date" in r.stderr and "merge: up to date" in r.stderr and len(standin.calls("train")) == 1
    ex = tb(root, "export", "r", "--format", "merged")
    assert ex.returncode != 0 and "refusing to export r" in ex.stderr


def test_a_passed_gate_finishes_the_stage(proj, standin):
    root = proj(EVAL, threshold=0.0)
    r = train(root)
    assert "metrics at runs/r/eval/metrics.json, report at runs/r/report.md" in r.stdout
    entry = lock(root)["stages"]["eval"]
    assert "gate" not in entry and entry["output_hash"]
    assert status(root)["eval"][0] == "done"
    assert (root / "runs/r/report.md").is_file()
    assert "nothing to do" in train(root).stderr
