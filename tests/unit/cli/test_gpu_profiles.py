"""`tunebook validate|resolve RECIPE --gpu ID`: a GPU profile's result on any machine; `resolve --requirements`."""
from __future__ import annotations

import json

import pytest

from tests.conftest import REPO, make_project

SEVEN_B_LORA = """\
name: big
base_model: mistralai/Mistral-7B-Instruct-v0.3
preset: lora-a100
data: {train: data/train.jsonl, format: alpaca}
stages: [sft, merge]
"""
ROWS = '{"instruction": "How many leave days?", "output": "27 days."}\n' * 3


def test_validate_for_a_t4_profile_shows_the_adapted_config(cli):
    r = cli("--root", str(REPO), "validate", "hr-bot", "--gpu", "t4")
    assert r.returncode == 0, r.stderr
    assert "OK (3 stages: sft, eval, merge; preset qlora-t4; 1 x NVIDIA T4 16GB" in r.stdout


def test_resolve_for_a_t4_profile_prints_fp16_and_no_tf32(cli):
    r = cli("--root", str(REPO), "resolve", "support-bot", "--gpu", "t4", "--json")
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)
    assert cfg["sft"]["config"]["fp16"] is True and cfg["sft"]["config"]["bf16"] is False
    assert cfg["sft"]["config"]["tf32"] is False and cfg["sft"]["sources"]["tf32"] == "hardware"
    h100 = json.loads(cli("--root", str(REPO), "resolve", "support-bot", "--gpu", "h100", "--json").stdout)
    assert h100["sft"]["config"]["bf16"] is True and h100["sft"]["config"]["tf32"] is True


def test_validate_refuses_a_stage_that_cannot_fit_the_profile_before_anything_is_downloaded(cli, tmp_path):
    root = make_project(tmp_path, {"big": SEVEN_B_LORA}, {"data/train.jsonl": ROWS})
    r = cli("--root", str(root), "validate", "big", "--gpu", "t4")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "stage 'sft' (sft) needs about" in r.stderr and "GiB per GPU" in r.stderr
    assert "NVIDIA T4 16GB" in r.stderr and "nothing was downloaded" in r.stderr and "qlora" in r.stderr
    assert not (root / "runs").exists()
    assert cli("--root", str(root), "validate", "big", "--gpu", "a100-80").returncode == 0


def test_unknown_gpu_profile_lists_the_known_ones(cli):
    r = cli("--root", str(REPO), "validate", "hr-bot", "--gpu", "b300")
    assert r.returncode != 0 and "unknown GPU 'b300'" in r.stderr and "t4" in r.stderr


@pytest.mark.parametrize("gpu,gpus,expected", [(None, None, ""), ("a100-80", "8", "deepspeed")])
def test_resolve_requirements_names_deepspeed_only_where_a_stage_uses_it(cli, tmp_path, gpu, gpus, expected):
    import importlib.util

    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed in this venv: nothing is missing")
    recipe = SEVEN_B_LORA.replace("lora-a100", "full-ft-multigpu")
    root = make_project(tmp_path, {"big": recipe}, {"data/train.jsonl": ROWS})
    args = ["--root", str(root), "resolve", "big", "--requirements"] + (["--gpu", gpu, "--gpus", gpus] if gpu else [])
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == expected  # a CPU drops DeepSpeed: nothing to install there
