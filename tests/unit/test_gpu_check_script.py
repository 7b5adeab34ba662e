"""benchmarks/gpu_check.sh on this CPU: argument handling and the result file (the GPU run itself needs a GPU)."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
STEPS = ["train-qlora-t4", "train-lora-h100", "bench-qlora-t4", "bench-lora-a100", "bench-lora-h100",
         "bench-qlora-h100", "zero3"]


def run(*args):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120, cwd=REPO)


def test_plan_writes_one_result_file_with_every_step_and_its_command(tmp_path):
    r = run("--plan", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    (result,) = tmp_path.glob("*-gpu-check-plan.json")
    doc = json.loads(result.read_text())
    assert doc["planned_only"] is True and doc["command"] == f"benchmarks/gpu_check.sh --plan --out {tmp_path}"
    assert [s["step"] for s in doc["steps"]] == STEPS
    assert all(s["status"] == "planned" and s["exit_code"] is None for s in doc["steps"])
    cmds = {s["step"]: s["command"] for s in doc["steps"]}
    assert cmds["train-qlora-t4"].endswith("-m runner.cli train hr-bot --quiet")
    assert "bench hr-bot --preset lora-h100" in cmds["bench-lora-h100"] and "--vs naive" in cmds["bench-lora-h100"]
    assert "--preset full-ft-multigpu" in cmds["zero3"] and "GPUS=" in cmds["zero3"]
    assert not list(tmp_path.glob("*.tmp"))


def test_only_selects_steps_and_steps_reaches_the_bench(tmp_path):
    r = run("--plan", "--out", str(tmp_path), "--only", "bench-lora-a100,zero3", "--steps", "3")
    assert r.returncode == 0, r.stderr
    doc = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert [s["step"] for s in doc["steps"]] == ["bench-lora-a100", "zero3"]
    assert all("--steps 3 " in s["command"] for s in doc["steps"])


@pytest.mark.parametrize("args,message", [
    (["--bogus"], "unknown argument '--bogus'"),
    (["--only", "nope", "--plan"], "unknown step 'nope'"),
    (["--steps", "0", "--plan"], "--steps needs a whole number"),
    (["--out"], "--out needs a folder"),
])
def test_bad_arguments_exit_2_with_the_reason(args, message):
    r = run(*args)
    assert r.returncode == 2 and message in r.stderr


def test_without_a_gpu_it_refuses_and_points_at_plan(tmp_path):
    r = run("--out", str(tmp_path))
    assert r.returncode == 3 and "no CUDA GPU" in r.stderr and "--plan" in r.stderr
    assert not list(tmp_path.iterdir())
