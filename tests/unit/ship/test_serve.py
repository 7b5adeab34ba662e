"""`tunebook serve`: the exact vLLM command for one and several adapters and for a merged model, the errors, and
the start itself (with a stand-in `vllm` when the real one is not installed)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from runner.errors import TunebookError
from runner.recipe.load import load_recipe
from runner.recipe.resolve import resolve
from runner.ship.serve import max_lora_rank, vllm_available, vllm_command
from tests.conftest import REPO, make_project

BASE_CFG = '{"model_type": "llama", "hidden_size": 64}'


def recipe(name, base="./models/base", r=16, stages="[sft, merge]", method="lora"):
    return f"""
    name: {name}
    base_model: {base}
    data: {{train: data/train.jsonl, format: alpaca}}
    training: {{method: {method}, lora: {{r: {r}}}}}
    stages: {stages}
    """


def resolved(root, *names):
    """The recipes as `tunebook serve` resolves them."""
    return [resolve(load_recipe(n, root), template_check=False) for n in names]


@pytest.fixture
def root(tmp_path):
    recipes = {"support": recipe("support"), "billing": recipe("billing", r=64), "tone": recipe("tone", r=24),
               "other": recipe("other", base="./models/other"), "full": recipe("full", method="full", stages="[sft]"),
               "nomerge": recipe("nomerge", stages="[sft]")}
    files = {"data/train.jsonl": '{"instruction": "a", "output": "b"}\n', "models/base/config.json": BASE_CFG,
             "models/other/config.json": BASE_CFG}
    root = make_project(tmp_path, recipes, files)
    for name, r in (("support", 16), ("billing", 64), ("tone", 24), ("other", 16), ("nomerge", 16)):
        out = root / "runs" / name / "sft" / "output"
        out.mkdir(parents=True)
        (out / "adapter_config.json").write_text(json.dumps({"r": r, "peft_type": "LORA"}))
    for name in ("support", "full"):
        d = root / "runs" / name / ("merge/merged" if name == "support" else "sft/output")
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(BASE_CFG)
    return root


def test_one_adapter(root):
    base = str(root / "models/base")
    assert vllm_command(resolved(root, "support")) == [
        "vllm", "serve", base, "--served-model-name", "base", "--enable-lora",
        "--lora-modules", f"support={root}/runs/support/sft/output", "--max-lora-rank", "16", "--max-loras", "1"]


def test_several_adapters_on_one_base(root):
    cmd = vllm_command(resolved(root, "support", "billing", "tone"), host="0.0.0.0", port=8001,
                       extra=["--gpu-memory-utilization", "0.8"])
    assert cmd == [
        "vllm", "serve", str(root / "models/base"), "--served-model-name", "base", "--enable-lora", "--lora-modules",
        f"support={root}/runs/support/sft/output", f"billing={root}/runs/billing/sft/output",
        f"tone={root}/runs/tone/sft/output", "--max-lora-rank", "64", "--max-loras", "3",
        "--host", "0.0.0.0", "--port", "8001", "--gpu-memory-utilization", "0.8"]


def test_rank_rounds_up_to_a_vllm_value():
    assert [max_lora_rank([r]) for r in (4, 8, 9, 24, 64, 100, 300)] == [8, 8, 16, 32, 64, 128, 320]
    with pytest.raises(TunebookError, match="maximum"):
        max_lora_rank([1024])


def test_hub_base_keeps_its_name(tmp_path):
    root = make_project(tmp_path, {"hub": recipe("hub", base="meta-llama/Llama-3.1-8B-Instruct")},
                        {"data/train.jsonl": '{"instruction": "a", "output": "b"}\n'})
    cmd = vllm_command(resolved(root, "hub"), require_files=False)
    assert cmd[:5] == ["vllm", "serve", "meta-llama/Llama-3.1-8B-Instruct", "--served-model-name",
                       "meta-llama/Llama-3.1-8B-Instruct"]


def test_merged_model(root):
    assert vllm_command(resolved(root, "support"), merged=True, port=9000) == [
        "vllm", "serve", str(root / "runs/support/merge/merged"), "--served-model-name", "support", "--port", "9000"]
    # a full fine-tune is served as is
    assert vllm_command(resolved(root, "full"), merged=True)[2] == str(root / "runs/full/sft/output")


@pytest.mark.parametrize("names, kw, words", [
    (["support", "other"], {}, "share one base model"),
    (["support", "billing"], {"merged": True}, "several merged models"),
    (["full"], {}, "no LoRA adapter"),
    (["nomerge"], {"merged": True}, "no merge stage"),
    (["billing"], {"merged": True}, "no merged model at"),
    (["support", "support"], {}, "named twice"),
])
def test_refusals(root, names, kw, words):
    with pytest.raises(TunebookError, match=words):
        vllm_command(resolved(root, *names), **kw)


def test_untrained_recipe(root):
    (root / "runs/tone/sft/output/adapter_config.json").unlink()
    with pytest.raises(TunebookError) as e:
        vllm_command(resolved(root, "tone"))
    assert "no trained adapter" in str(e.value) and "make train RECIPE=tone" in str(e.value)
    assert vllm_command(resolved(root, "tone"), require_files=False)[:2] == ["vllm", "serve"]  # --dry-run still shows it


def _cli(root, *args, env=None):
    return subprocess.run([sys.executable, "-m", "runner.cli", "--root", str(root), "serve", *args], cwd=REPO,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(vllm_available(), reason="vLLM is installed here")
def test_without_vllm_says_how_to_get_it(root):
    r = _cli(root, "support")
    assert r.returncode == 2
    assert "pip install vllm" in r.stderr and "CUDA" in r.stderr and "Traceback" not in r.stderr
    assert _cli(root, "support", "--dry-run").returncode == 0


def test_starts_vllm(root, tmp_path):
    """With a vllm package importable and a `vllm` executable on PATH, serve replaces itself with it (a stand-in
    records its argv and environment when the real vLLM is not installed)."""
    env = {}
    if not vllm_available():
        fake = tmp_path / "fakevllm"
        (fake / "vllm").mkdir(parents=True)
        (fake / "vllm/__init__.py").write_text("")
        (fake / "bin").mkdir()
        exe = fake / "bin/vllm"
        exe.write_text(textwrap.dedent(f"""\
            #!{sys.executable}
            import json, os, sys
            json.dump({{"argv": sys.argv[1:], "lora_updates": os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING")}},
                      open({str(tmp_path / 'called.json')!r}, "w"))
            """))
        exe.chmod(0o755)
        env = {"PYTHONPATH": str(fake), "PATH": f"{fake / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    else:
        pytest.skip("vLLM is installed: starting it for real needs a GPU and a model; covered by --dry-run")
    r = _cli(root, "support", "billing", "--port", "8123", env=env)
    assert r.returncode == 0, r.stderr
    called = json.loads((tmp_path / "called.json").read_text())
    assert called["argv"] == vllm_command(resolved(root, "support", "billing"), port=8123)[1:]
    assert called["lora_updates"] == "True"
