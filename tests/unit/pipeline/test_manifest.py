"""runs/<recipe>/manifest.json, through `tunebook train` on the stand-in Axolotl: the recipe, git state, versions,
hardware, data counts and hashes, and per stage its timings and the metrics read from the Trainer's logs."""
from __future__ import annotations

import hashlib
import json
import subprocess

from tests.fakes.pipeline_project import CHAIN, EVAL, RESUME, lock, manifest, train


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_of_a_chain(proj, tiny_base):
    root = proj(CHAIN)
    train(root)
    m = manifest(root)
    assert m["recipe"] == "r" and m["recipe_file"] == "recipes/r.yaml"
    assert m["recipe_sha256"] == sha256(root / "recipes/r.yaml")
    assert m["git"] == {"commit": None, "dirty": None}  # the project is not a git checkout
    assert m["versions"] == lock(root)["stages"]["sft"]["inputs"]["versions"] and m["versions"]["axolotl"] == "0.19.0"
    assert {"cuda", "gpu_name", "gpu_count", "cpu_cores"} <= set(m["hardware"]) and m["preset"] is None
    data = root / "runs/r/data"
    assert m["data"]["main"] == {"format": "alpaca", "counts": {"train": 24, "held_out": 4},
                                 "sha256": {"train": sha256(data / "main/train.jsonl"),
                                            "held_out": sha256(data / "main/held_out.jsonl")}}
    assert m["data"]["dpo"]["format"] == "preference" and m["data"]["dpo"]["counts"]["train"] == 16
    assert list(m["stages"]) == ["sft", "dpo", "merge"] and m["finished"] >= m["started"]

    sft, dpo, merge = (m["stages"][s] for s in ("sft", "dpo", "merge"))
    assert sft["kind"] == "sft" and sft["base_model"] == str(tiny_base)
    assert sft["started"] <= sft["finished"] and sft["seconds"] >= 0
    s = sft["metrics"]
    assert s["logged_steps"] == 4 and s["train_loss_last"] < s["train_loss_first"]
    assert s["trained_share"] == round(s["tokens_trainable"] / s["tokens_total"], 4)
    assert s["train_runtime_s"] > 0 and "train_loss" in s
    assert dpo["base_model"] == str(root / "runs/r/sft/merged")
    assert dpo["metrics"]["reward_margin_last"] > dpo["metrics"]["reward_margin_first"]
    assert "reward_accuracy_last" in dpo["metrics"]
    assert merge["kind"] == "merge" and "metrics" not in merge


def test_a_partial_rerun_keeps_the_entries_of_skipped_stages(proj):
    root = proj(CHAIN)
    train(root)
    before = manifest(root)
    prefs = root / "data/prefs.jsonl"
    prefs.write_text(prefs.read_text() + json.dumps({"prompt": "Where do I park?", "chosen": "In the yard.",
                                                     "rejected": "No idea."}) + "\n")
    train(root)
    after = manifest(root)
    assert after["stages"]["sft"] == before["stages"]["sft"]
    assert after["stages"]["dpo"]["finished"] >= before["stages"]["dpo"]["finished"]
    assert after["data"]["dpo"]["counts"]["train"] == 17


def test_a_failed_run_has_no_finish_and_no_entry_for_the_failed_stage(proj, monkeypatch):
    root = proj(RESUME)
    monkeypatch.setenv("TUNEBOOK_STANDIN_FAIL", "merge-lora")
    train(root, ok=False)
    m = manifest(root)
    assert list(m["stages"]) == ["sft"] and "finished" not in m
    monkeypatch.delenv("TUNEBOOK_STANDIN_FAIL")
    train(root)
    assert list(manifest(root)["stages"]) == ["sft", "merge"] and "finished" in manifest(root)


def test_a_failed_gate_is_in_the_manifest(proj):
    root = proj(EVAL, threshold=0.99)
    train(root, ok=False)
    m = manifest(root)
    ev = m["stages"]["eval"]
    assert ev["kind"] == "eval" and ev["metrics"]["passed"] is False
    assert ev["metrics"] == json.loads((root / "runs/r/eval/metrics.json").read_text())
    assert "finished" in m


def test_git_state_of_the_project(proj):
    root = proj(RESUME)

    def git(*args):
        subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=root, check=True,
                       capture_output=True)

    git("init", "-q")
    git("add", "recipes/r.yaml", "data")
    git("commit", "-qm", "recipe")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    train(root, "--until", "sft")
    assert manifest(root)["git"] == {"commit": head, "dirty": False}
    (root / "recipes/r.yaml").write_text((root / "recipes/r.yaml").read_text() + "# edited\n")
    train(root)
    assert manifest(root)["git"] == {"commit": head, "dirty": True}
