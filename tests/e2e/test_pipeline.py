"""SFT → DPO → merge on the real SmolLM2 with real Axolotl on CPU: chaining, incremental re-runs,
crash and resume. One project is shared by the tests of this module (they build on each other)."""
from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors import safe_open

from tests.conftest import REPO, make_project, run_cli

pytestmark = pytest.mark.e2e

RECIPE = """\
base_model: {model}
data: {{train: data/train.jsonl, format: alpaca, held_out: data/held_out.jsonl}}
training: {{max_steps: 6, learning_rate: 1.0e-3, micro_batch_size: 4, sequence_len: 256}}
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


def _axolotl_process(tunebook_pid: int, deadline: float):
    """The `axolotl train` process that tunebook started (its child, in a session of its own)."""
    import psutil

    while time.time() < deadline:
        for child in psutil.Process(tunebook_pid).children(recursive=True):
            try:
                cmd = child.cmdline()
            except psutil.NoSuchProcess:
                continue
            if any(Path(c).name == "axolotl" for c in cmd) and "train" in cmd:
                return child
        time.sleep(0.5)
    raise AssertionError("tunebook started no `axolotl train` process")


def _logged_steps(text: str) -> list[dict]:
    """The Trainer's per-step dicts (`{'loss': ...}`) in a piece of train.log."""
    return [ast.literal_eval(m.group(0)) for m in re.finditer(r"\{'loss': [^{}]*\}", text)]


def test_kill_and_resume(proj):
    """A crash of Axolotl itself (SIGKILL to its process group, as the OOM killer or a lost node would) after its
    first checkpoint; the next run resumes from the last checkpoint and trains only the steps after it.

    A run that restarted from step 1 fails here: the second attempt's log must show Axolotl's auto-resume line and
    only the remaining steps, and the steps logged over both attempts must be one run's, not a run and a half.
    The recipe is the chain's SFT stage with checkpoints every 2 steps, so the chain's uninterrupted SFT (same
    data, seed and schedule) is the run the resumed one must equal."""
    steps, every = 6, 2
    recipe = proj / "recipes" / "resume.yaml"
    recipe.write_text((proj / "recipes" / "chain.yaml").read_text()
                      .replace("max_steps: 6, learning_rate: 1.0e-3",
                               f"max_steps: {steps}, save_steps: {every}, learning_rate: 1.0e-3")
                      .replace("  - dpo:\n      data: {train: data/prefs.jsonl, format: preference}\n"
                               "      training: {max_steps: 4, learning_rate: 1.0e-4, micro_batch_size: 2, beta: 0.1}\n"
                               "  - merge\n", ""))  # the SFT stage alone: what is killed and resumed
    run = proj / "runs" / "resume"
    out = run / "sft" / "output"
    err = proj / "resume-first-attempt.err"
    with open(err, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "train", "resume", "--quiet"], cwd=proj,
                                env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=fh, start_new_session=True)
    try:
        deadline = time.time() + 900
        axolotl = _axolotl_process(proc.pid, deadline)
        assert os.getpgid(axolotl.pid) != os.getpgid(proc.pid), "Axolotl runs in a process group of its own"
        while time.time() < deadline and not (out / f"checkpoint-{every}" / "trainer_state.json").exists():
            time.sleep(0.5)
            assert proc.poll() is None and axolotl.is_running(), "training ended before the first checkpoint"
        time.sleep(1)  # let the checkpoint's files be written out
        os.killpg(os.getpgid(axolotl.pid), signal.SIGKILL)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # tunebook outlived the crash and said what happened; Axolotl stopped before its last step.
    assert code == 1, err.read_text()[-2000:]
    assert "stage 'sft' failed: Axolotl exited with code -9" in err.read_text()
    assert not (out / f"checkpoint-{steps}").exists(), "the kill came after the last checkpoint"
    last = max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert every <= last < steps
    assert not (run / "tunebook.lock").exists() or "sft" not in json.loads((run / "tunebook.lock").read_text())["stages"]
    st = run_cli("status", "resume", cwd=proj)
    assert "not run" in st.stdout

    r = run_cli("train", "resume", "--quiet", cwd=proj)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"sft: resuming from checkpoint-{last}" in r.stderr
    log = (run / "sft" / "train.log").read_text()
    first, second = log.split("\n$ ")[-2:]
    # Axolotl itself resumed (tunebook's message only says that a checkpoint exists).
    assert f"resume from checkpoint at {out / f'checkpoint-{last}'}" in second
    resumed = _logged_steps(second)
    assert len(resumed) == steps - last, f"the second attempt logged {len(resumed)} steps, not {steps - last}"
    # One run's worth of steps over both attempts (at most the step in flight at the kill is done twice).
    assert steps <= len(_logged_steps(first)) + len(resumed) <= steps + 1
    # The scheduler's state came back with the step: the learning rate goes on down its cosine from where the
    # checkpoint left it. A resume that restored the step but restarted the schedule would log the peak rate
    # (1e-3, warm-up is 0 steps at 6 steps x 5%) again at the first resumed step.
    lrs = [float(d["learning_rate"]) for d in _logged_steps(first)[:last] + resumed]  # the log prints them as text
    assert len(lrs) == steps and all(a > b for a, b in zip(lrs, lrs[1:])), lrs
    assert lrs[last] < 1.0e-3 * 0.9, lrs
    state = json.loads((out / f"checkpoint-{steps}" / "trainer_state.json").read_text())
    assert state["global_step"] == steps
    assert [h["step"] for h in state["log_history"] if "loss" in h] == list(range(1, steps + 1))
    lock = json.loads((run / "tunebook.lock").read_text())
    assert set(lock["stages"]) == {"sft"}
    manifest = json.loads((run / "manifest.json").read_text())
    assert set(manifest["stages"]) == {"sft"} and manifest["finished"]
    # The optimizer's state came back too: the resumed adapter equals the uninterrupted run's. Adam restarted
    # with empty moments takes steps of about the learning rate in every weight (its first-step update is
    # lr * sign(grad)), so a resume without the optimizer state lands far from the uninterrupted weights; with
    # it, only float rounding separates them (both ran on this CPU, from the same LoRA init — the seed is applied
    # before the adapter is drawn, runner.train.seed_plugin — with the same batches in the same order).
    resumed_w = _adapter(out / "adapter_model.safetensors")
    straight = _adapter(proj / "runs" / "chain" / "sft" / "output" / "adapter_model.safetensors")
    assert resumed_w.keys() == straight.keys() and resumed_w
    for k in straight:
        moved = straight[k].abs().max().item() if "lora_B" in k else 1.0  # lora_B starts at 0: all of it is learnt
        diff = (resumed_w[k] - straight[k]).abs().max().item()
        assert diff <= 1e-3 * max(moved, 1e-6) + 1e-6, f"{k}: resumed differs by {diff:.2e} (learnt {moved:.2e})"


def _adapter(path: Path) -> dict:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k).float() for k in f.keys()}
