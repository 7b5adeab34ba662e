"""SFT → DPO → merge on the real SmolLM2 with real Axolotl on CPU: chaining, incremental re-runs,
crash and resume. One project is shared by the tests of this module (they build on each other)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors import safe_open

from conftest import REPO, make_project, run_cli

pytestmark = pytest.mark.e2e

RECIPE = """\
base_model: {model}
data: {{train: data/train.jsonl, format: alpaca, held_out: data/held_out.jsonl}}
training: {{max_steps: 4, learning_rate: 1.0e-3, micro_batch_size: 4, sequence_len: 256}}
stages:
  - sft
  - dpo:
      data: {{train: data/prefs.jsonl, format: preference}}
      training: {{max_steps: 4, learning_rate: 1.0e-4, micro_batch_size: 2, beta: 0.1}}
  - merge
"""


@pytest.fixture(scope="module")
def proj(tmp_path_factory, smollm2):
    root = tmp_path_factory.mktemp("pipeline")
    data = REPO / "recipes" / "data" / "ci-mini"
    make_project(root, {"chain": RECIPE.format(model=smollm2)},
                 {"data/train.jsonl": (data / "train.jsonl").read_text(),
                  "data/held_out.jsonl": (data / "held_out.jsonl").read_text(),
                  "data/prefs.jsonl": (data / "preference.jsonl").read_text()})
    return root


def _tensor(path: Path, name: str):
    with safe_open(str(path), "pt") as f:
        return f.get_tensor(name)


def test_sft_dpo_merge_chain(proj, smollm2):
    r = run_cli("train", "chain", "--quiet", cwd=proj)
    assert r.returncode == 0, r.stderr[-3000:]
    run = proj / "runs" / "chain"
    sft_merged, dpo_out, final = run / "sft" / "merged", run / "dpo" / "output", run / "merge" / "merged"
    # The DPO stage trained on top of the merged SFT model, not on the original base.
    dpo_cfg = (run / "dpo" / "axolotl.yaml").read_text()
    assert f"base_model: {sft_merged}" in dpo_cfg and "rl: dpo" in dpo_cfg
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not _tensor(sft_merged / "model.safetensors", key).equal(_tensor(smollm2 / "model.safetensors", key))
    assert (dpo_out / "adapter_model.safetensors").is_file()
    # DPO learned something: the reward margin grew from its first logged step.
    manifest = json.loads((run / "manifest.json").read_text())
    m = manifest["stages"]["dpo"]["metrics"]
    assert m["reward_margin_last"] > m["reward_margin_first"], m
    assert manifest["stages"]["sft"]["metrics"]["train_loss_last"] < manifest["stages"]["sft"]["metrics"]["train_loss_first"]
    assert set(manifest["stages"]) == {"sft", "dpo", "merge"} and manifest["versions"]["axolotl"] == "0.19.0"
    # The final model merges the DPO adapter into the SFT-merged model, loads and generates.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(final)
    model = AutoModelForCausalLM.from_pretrained(final)
    ids = tok.apply_chat_template([{"role": "user", "content": "How many days of annual leave do I get?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=20, do_sample=False)
    text = tok.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert len(text.strip()) > 0
    lock = json.loads((run / "tunebook.lock").read_text())
    assert [lock["stages"][s]["kind"] for s in ("sft", "dpo", "merge")] == ["sft", "dpo", "merge"]
    assert lock["stages"]["dpo"]["inputs"]["upstream"]["sft"] == lock["stages"]["sft"]["output_hash"]


def test_unchanged_rerun_does_nothing(proj):
    r = run_cli("train", "chain", "--quiet", cwd=proj)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "nothing to do" in r.stderr
    for s in ("sft", "dpo", "merge"):
        assert f"{s}: up to date" in r.stderr
    st = run_cli("status", "chain", cwd=proj)
    assert st.returncode == 0 and st.stdout.count("done") == 3


def test_touching_preference_data_reruns_dpo_and_merge_only(proj):
    prefs = proj / "data" / "prefs.jsonl"
    rows = prefs.read_text().splitlines()
    prefs.write_text("\n".join(rows + [rows[0].replace("?", "??", 1)]) + "\n")
    st = run_cli("status", "chain", cwd=proj)
    assert "stale" in st.stdout and "data dpo:data/prefs.jsonl changed" in st.stdout.replace("\n", " ").replace("│", " ") \
        or "data dpo:data/prefs.jsonl" in st.stdout
    sft_finished = json.loads((proj / "runs/chain/tunebook.lock").read_text())["stages"]["sft"]["finished"]
    r = run_cli("train", "chain", "--quiet", cwd=proj)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "sft: up to date" in r.stderr
    assert "dpo: re-running because data dpo:data/prefs.jsonl changed" in r.stderr
    assert "merge: re-running because upstream stage dpo produced a new result" in r.stderr
    lock = json.loads((proj / "runs/chain/tunebook.lock").read_text())
    assert lock["stages"]["sft"]["finished"] == sft_finished


def test_kill_and_resume(proj):
    """SIGKILL a stage after its first checkpoint; the next run resumes from it and finishes."""
    recipe = proj / "recipes" / "resume.yaml"
    recipe.write_text((proj / "recipes" / "chain.yaml").read_text()
                      .replace("max_steps: 4, learning_rate: 1.0e-3", "max_steps: 8, save_steps: 2, learning_rate: 1.0e-3")
                      .replace("  - dpo:\n      data: {train: data/prefs.jsonl, format: preference}\n"
                               "      training: {max_steps: 4, learning_rate: 1.0e-4, micro_batch_size: 2, beta: 0.1}\n"
                               "  - merge\n", "  - merge\n"))
    out = proj / "runs" / "resume" / "sft" / "output"
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "train", "resume", "--quiet"], cwd=proj, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and not (out / "checkpoint-2" / "trainer_state.json").exists():
        time.sleep(0.5)
        assert proc.poll() is None, "training ended before the first checkpoint"
    time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (proj / "runs" / "resume" / "tunebook.lock").exists() or \
        "sft" not in json.loads((proj / "runs" / "resume" / "tunebook.lock").read_text())["stages"]
    st = run_cli("status", "resume", cwd=proj)
    assert "not run" in st.stdout
    r = run_cli("train", "resume", "--quiet", cwd=proj)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "sft: resuming from checkpoint-" in r.stderr
    state = json.loads((out / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    # The resumed run started past step 1: its log shows no step-1 entry after the resume marker.
    log = (proj / "runs" / "resume" / "sft" / "train.log").read_text()
    second = log.rsplit("$ ", 1)[-1]
    assert "'epoch'" in second and "Resuming" in second or "resum" in second.lower()
    lock = json.loads((proj / "runs" / "resume" / "tunebook.lock").read_text())
    assert set(lock["stages"]) == {"sft", "merge"}
    manifest = json.loads((proj / "runs" / "resume" / "manifest.json").read_text())
    assert set(manifest["stages"]) == {"sft", "merge"} and manifest["finished"]
