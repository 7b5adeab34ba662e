"""`tunebook serve`: vLLM's OpenAI-compatible server for one or several trained recipes.

Adapters (default): `vllm serve BASE --enable-lora --lora-modules NAME=ADAPTER ...`, one module per recipe (the
adapter of its last training stage), named after the recipe; a request picks one with `"model": "<recipe>"`, and
`"model": "<base name>"` gets the untouched base. Recipes served together must share the base model.
`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True` is set so more adapters can be hot-loaded at runtime
(POST /v1/load_lora_adapter). Merged (--merged, one recipe): `vllm serve runs/<recipe>/<merge stage>/merged`.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from runner.errors import TunebookError
from runner.pipeline.lock import refuse_if_gate_failed
from runner.recipe.resolve import ResolvedRecipe
from runner.recipe.shipped import shipped_model

# vLLM accepts these --max-lora-rank values; an adapter's rank is rounded up to the next one.
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
INSTALL_HINT = ("vLLM is not installed in this environment. On a Linux machine with an NVIDIA GPU (CUDA): "
                "`.venv/bin/pip install vllm` (it brings its own CUDA build of torch; a separate venv keeps the "
                "training stack untouched: `python3 -m venv .venv-serve && .venv-serve/bin/pip install vllm`, "
                "then run `.venv-serve/bin/vllm` with the command printed by `tunebook serve --dry-run`). "
                "See https://docs.vllm.ai/en/latest/getting_started/installation/")


@dataclass
class Served:
    """One recipe's model as served: a LoRA adapter on `base`, or a merged model folder."""

    recipe: str
    base: str
    adapter: Path | None
    merged: Path | None
    rank: int | None


def served_model(res: ResolvedRecipe, merged: bool = False, require_files: bool = True) -> Served:
    """What serving a resolved recipe means: what its run ships (runner.recipe.shipped), as its last training
    stage's adapter or as the merged model."""
    name = res.recipe.name
    if require_files:
        refuse_if_gate_failed(res.run_root, name, "serve")
    model = shipped_model(res, action="serve")
    st = model.stage
    rel = lambda p: os.path.relpath(p, res.recipe.root)
    if merged:
        path = model.merged
        if path is None:
            raise TunebookError(f"recipe {name} has no merge stage after {st.name}: there is no merged model",
                                fix=f"Serve the adapter (`tunebook serve {name}`) or add `merge` to its stages.")
        if require_files and not (path / "config.json").is_file():
            raise TunebookError(f"no merged model at {rel(path)}", fix=f"Run `make train RECIPE={name}` first.")
        return Served(name, str(path), None, path, None)
    if model.adapter is None:
        raise TunebookError(f"recipe {name} trains all weights (no LoRA adapter) in stage {st.name}",
                            fix=f"Serve the model itself: `tunebook serve {name} --merged`.")
    if require_files and not (model.adapter / "adapter_config.json").is_file():
        raise TunebookError(f"no trained adapter at {rel(model.adapter)}",
                            fix=f"Run `make train RECIPE={name}` first (stage {st.name} writes it).")
    return Served(name, model.base, model.adapter, None, model.rank)


def max_lora_rank(ranks) -> int:
    top = max([r for r in ranks if r] or [16])
    for allowed in LORA_RANKS:
        if allowed >= top:
            return allowed
    raise TunebookError(f"LoRA rank {top} is above vLLM's maximum ({LORA_RANKS[-1]})",
                        fix="Serve the merged model instead (--merged).")


def vllm_exe() -> str:
    here = Path(sys.executable).parent / "vllm"
    return str(here) if here.exists() else (shutil.which("vllm") or "vllm")


def vllm_command(recipes: list[ResolvedRecipe], merged: bool = False, host: str | None = None,
                 port: int | None = None, extra: list[str] | None = None, require_files: bool = True,
                 exe: str = "vllm") -> list[str]:
    """The exact `vllm serve ...` argv for these resolved recipes."""
    if not recipes:
        raise TunebookError("name at least one recipe to serve")
    if len({r.recipe.name for r in recipes}) != len(recipes):
        raise TunebookError("a recipe is named twice", fix="Name each recipe once.")
    if merged and len(recipes) > 1:
        raise TunebookError("several merged models cannot share one vLLM server (each is a whole model)",
                            fix="Serve the recipes' adapters together (without --merged), or one merged model "
                                "per server (different --port).")
    served = [served_model(r, merged=merged, require_files=require_files) for r in recipes]
    if merged:
        s = served[0]
        cmd = [exe, "serve", str(s.merged), "--served-model-name", s.recipe]
    else:
        bases = {s.base for s in served}
        if len(bases) > 1:
            listing = "; ".join(f"{s.recipe}: {s.base}" for s in served)
            raise TunebookError(f"recipes served together must share one base model, but they differ ({listing})",
                                fix="Serve them on separate servers (different --port), one base model each.")
        base = served[0].base
        base_name = Path(base).name if os.path.isabs(base) or base.startswith(".") else base
        cmd = [exe, "serve", base, "--served-model-name", base_name, "--enable-lora", "--lora-modules",
               *[f"{s.recipe}={s.adapter}" for s in served],
               "--max-lora-rank", str(max_lora_rank(s.rank for s in served)), "--max-loras", str(len(served))]
    if host:
        cmd += ["--host", host]
    if port:
        cmd += ["--port", str(port)]
    return cmd + list(extra or [])


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def serve(recipes: list[ResolvedRecipe], merged: bool = False, host: str | None = None, port: int | None = None,
          extra: list[str] | None = None, dry_run: bool = False) -> int:
    """Print the command; then, unless dry_run, replace this process with vLLM (Ctrl-C stops it)."""
    cmd = vllm_command(recipes, merged, host, port, extra, require_files=not dry_run, exe=vllm_exe())
    print(" ".join(cmd), flush=True)
    if dry_run:
        return 0
    if not vllm_available():
        raise TunebookError(INSTALL_HINT, exit_code=2)
    env = dict(os.environ)
    if not merged:
        env.setdefault("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(cmd[0], cmd, env)
    return 0  # not reached
