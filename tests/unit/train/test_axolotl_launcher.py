"""Launcher command lines (1 GPU, N GPUs, multi-node; accelerate and torchrun), the env pass-through, the shipped
DeepSpeed ZeRO-3 config and the full-ft-multigpu preset. A real one-GPU ZeRO-3 run happens only on a GPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from runner.train.axolotl import dist_settings, launcher_args, train_command
from runner.errors import TunebookError
from runner.hardware import Hardware

CPU = Hardware(cuda=False, gpu_name=None, gpu_count=0, gpu_memory_gib=None, bf16=False, cpu_cores=2, cpu_name="x")
ONE = Hardware(cuda=True, gpu_name="NVIDIA A100 80GB", gpu_count=1, gpu_memory_gib=79, bf16=True, cpu_cores=16,
               cpu_name="x")
EIGHT = Hardware(cuda=True, gpu_name="NVIDIA H100 80GB HBM3", gpu_count=8, gpu_memory_gib=79, bf16=True,
                 cpu_cores=64, cpu_name="x")
CFG = "runs/r/sft/axolotl.yaml"
DIST = ("GPUS", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "TUNEBOOK_LAUNCHER")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for k in DIST:
        monkeypatch.delenv(k, raising=False)


def cmd(*a, **kw):
    return train_command(CFG, *a, axolotl="axolotl", **kw)


def test_cpu_runs_in_process():
    assert cmd(CPU) == ["axolotl", "train", CFG, "--launcher", "python"]


def test_one_gpu():
    assert cmd(ONE) == ["axolotl", "train", CFG, "--launcher", "accelerate", "--",
                        "--num_processes", "1", "--num_machines", "1"]


def test_all_gpus_of_the_machine_by_default():
    assert cmd(EIGHT) == ["axolotl", "train", CFG, "--launcher", "accelerate", "--",
                          "--num_processes", "8", "--num_machines", "1", "--multi_gpu"]


def test_n_gpus_with_deepspeed():
    ds = "/app/recipes/presets/zero3_bf16.json"
    assert cmd(EIGHT, gpus=4, deepspeed=ds) == [
        "axolotl", "train", CFG, "--deepspeed", ds, "--launcher", "accelerate", "--",
        "--num_processes", "4", "--num_machines", "1", "--multi_gpu"]


def test_multi_node_accelerate():
    assert cmd(EIGHT, gpus=8, nnodes=2, node_rank=1, master_addr="10.0.0.5", master_port=29501) == [
        "axolotl", "train", CFG, "--launcher", "accelerate", "--",
        "--num_processes", "16", "--num_machines", "2", "--multi_gpu",
        "--machine_rank", "1", "--main_process_ip", "10.0.0.5", "--main_process_port", "29501"]


def test_one_gpu_per_node_is_still_multi_gpu():
    # accelerate only infers --multi_gpu from the GPUs it sees locally: 2 nodes x 1 GPU must say so
    assert "--multi_gpu" in cmd(ONE, nnodes=2, node_rank=0, master_addr="10.0.0.5")


def test_torchrun_single_and_multi_node():
    assert cmd(EIGHT, gpus=2, launcher="torchrun") == [
        "axolotl", "train", CFG, "--launcher", "torchrun", "--", "--nnodes", "1", "--nproc_per_node", "2"]
    assert cmd(EIGHT, gpus=8, nnodes=4, node_rank=3, master_addr="node0", master_port=29500,
               launcher="torchrun") == [
        "axolotl", "train", CFG, "--launcher", "torchrun", "--", "--nnodes", "4", "--nproc_per_node", "8",
        "--node_rank", "3", "--master_addr", "node0", "--master_port", "29500"]


def test_env_pass_through(monkeypatch):
    monkeypatch.setenv("GPUS", "4")
    monkeypatch.setenv("NNODES", "2")
    monkeypatch.setenv("NODE_RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "10.1.2.3")
    monkeypatch.setenv("MASTER_PORT", "30000")
    assert dist_settings() == {"gpus": 4, "nnodes": 2, "node_rank": 1, "master_addr": "10.1.2.3",
                               "master_port": 30000, "launcher": "accelerate"}
    assert launcher_args(EIGHT) == ["--launcher", "accelerate", "--", "--num_processes", "8", "--num_machines", "2",
                                    "--multi_gpu", "--machine_rank", "1", "--main_process_ip", "10.1.2.3",
                                    "--main_process_port", "30000"]
    monkeypatch.setenv("TUNEBOOK_LAUNCHER", "torchrun")
    assert launcher_args(EIGHT) == ["--launcher", "torchrun", "--", "--nnodes", "2", "--nproc_per_node", "4",
                                    "--node_rank", "1", "--master_addr", "10.1.2.3", "--master_port", "30000"]


def test_unset_env_keeps_the_single_machine_defaults():
    assert launcher_args(CPU) == ["--launcher", "python"]
    assert launcher_args(ONE) == ["--launcher", "accelerate", "--", "--num_processes", "1", "--num_machines", "1"]
    assert launcher_args(EIGHT, gpus=2) == ["--launcher", "accelerate", "--", "--num_processes", "2",
                                            "--num_machines", "1", "--multi_gpu"]


@pytest.mark.parametrize("env, words", [
    ({"NNODES": "2"}, "MASTER_ADDR"),
    ({"NNODES": "2", "NODE_RANK": "2", "MASTER_ADDR": "h"}, "NODE_RANK=2"),
    ({"GPUS": "16"}, "GPUS=16 but this machine has 8"),
    ({"GPUS": "two"}, "GPUS='two'"),
    ({"GPUS": "0"}, ">= 1"),
    ({"TUNEBOOK_LAUNCHER": "mpirun"}, "mpirun"),
])
def test_bad_settings_are_explained(monkeypatch, env, words):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(TunebookError) as e:
        launcher_args(EIGHT)
    assert words in str(e.value)


def test_gpus_requested_on_a_cpu_machine(monkeypatch):
    monkeypatch.setenv("GPUS", "2")
    with pytest.raises(TunebookError, match="no CUDA GPU"):
        launcher_args(CPU)


def test_zero3_config_shipped(repo_root):
    ds = json.loads((repo_root / "recipes/presets/zero3_bf16.json").read_text())
    zo = ds["zero_optimization"]
    assert zo["stage"] == 3
    # the saved model must be whole 16-bit weights, not ZeRO shards nobody can load
    assert zo["stage3_gather_16bit_weights_on_model_save"] is True
    assert "offload_optimizer" not in zo and "offload_param" not in zo
    # batch sizes, clipping and precision come from the Axolotl/HF config ("auto"), never contradict it
    for k in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
              "gradient_clipping"):
        assert ds[k] == "auto"
    assert ds["bf16"]["enabled"] == "auto"
    off = json.loads((repo_root / "recipes/presets/zero3_bf16_offload.json").read_text())["zero_optimization"]
    assert off["stage"] == 3 and off["offload_optimizer"]["device"] == "cpu" and off["offload_param"]["device"] == "cpu"


def test_full_ft_multigpu_preset_resolves_to_zero3(project, repo_root):
    from runner.recipe.load import load_recipe
    from runner.recipe.resolve import resolve

    root = project(recipes={"big": """
        name: big
        base_model: meta-llama/Llama-3.1-8B-Instruct
        preset: full-ft-multigpu
        data: {train: data/train.jsonl, format: alpaca}
        stages: [sft]
        """}, files={"data/train.jsonl": '{"instruction": "hi", "output": "hello"}\n'})
    res = resolve(load_recipe("big", root), h=EIGHT, template_check=False)
    cfg = res.stages[0].config
    assert cfg["deepspeed"] == str((repo_root / "recipes/presets/zero3_bf16.json").resolve()) or \
        os.path.samefile(cfg["deepspeed"], repo_root / "recipes/presets/zero3_bf16.json")
    assert cfg["adapter"] is None and cfg["bf16"] is True and cfg["gradient_checkpointing"] is True
    assert res.preset["gpu"]["count"] == 8
    # and the launcher starts one process per GPU of the machine
    assert launcher_args(res.hardware) == ["--launcher", "accelerate", "--", "--num_processes", "8",
                                           "--num_machines", "1", "--multi_gpu"]


def _zero3_ready() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU on this machine (the one-GPU ZeRO-3 run is a GPU benchmark)"
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        return "deepspeed is not installed (pip install deepspeed, as in the Axolotl image)"
    return None


@pytest.mark.e2e
@pytest.mark.skipif(_zero3_ready() is not None, reason=str(_zero3_ready()))
def test_zero3_full_finetune_on_one_gpu(project, smollm2, tmp_path):
    """A real full fine-tune under DeepSpeed ZeRO-3 through accelerate on one GPU: the saved model is whole."""
    root = project(recipes={"z3": f"""
        name: z3
        base_model: {smollm2}
        preset: full-ft-multigpu
        data: {{train: data/train.jsonl, format: alpaca}}
        training: {{max_steps: 4, sequence_len: 256, micro_batch_size: 2, gradient_accumulation_steps: 1}}
        stages: [sft]
        """}, files={"data/train.jsonl": "".join(
        json.dumps({"instruction": f"Say {i}", "output": f"{i}"}) + "\n" for i in range(32))})
    env = dict(os.environ, GPUS="1")
    r = subprocess.run([sys.executable, "-m", "runner.cli", "--root", str(root), "train", "z3"], env=env,
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = root / "runs/z3/sft/output"
    assert (out / "config.json").is_file() and any(out.glob("*.safetensors"))
    log = (root / "runs/z3/sft/train.log").read_text()
    assert "--launcher accelerate -- --num_processes 1" in log
