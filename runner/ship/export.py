"""`tunebook export`: pack a trained recipe into one archive that can be shared or uploaded.

runs/<recipe>/export/<recipe>-<format>.tar.gz (written to a temp file, then renamed) holds one folder
`<recipe>-<format>/` with:
  the model files   adapter: the LoRA adapter of the last training stage (checkpoints left out);
                    merged: the merged model (or the full fine-tune)
  README.md         a model card: what it is, how it was made (the recipe), data hashes, eval results, versions
  recipe.yaml       the recipe file as it was trained
  tunebook.lock     what each stage was built from
  manifest.json     the run's record (when present)
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
import time
from pathlib import Path

import yaml

from runner.errors import TunebookError
from runner.fsutil import atomic_open
from runner.pipeline.lock import refuse_if_gate_failed

FORMATS = ("adapter", "merged")
TRAIN_KINDS = ("sft", "dpo", "orpo", "kto")


def model_dir(res, fmt: str) -> tuple[Path, object]:
    """(folder to export, the training stage it comes from)."""
    stages = [s for s in res.stages if s.kind in TRAIN_KINDS and s.config]
    if not stages:
        raise TunebookError(f"recipe {res.recipe.name} has no training stage: nothing to export")
    st = stages[-1]
    name = res.recipe.name
    if fmt == "adapter":
        if not st.config.get("adapter"):
            raise TunebookError(f"recipe {name} trains all weights in stage {st.name}: there is no adapter",
                                fix=f"Export the model: `tunebook export {name} --format merged`.")
        path = st.output_dir
        if not (path / "adapter_config.json").is_file():
            raise TunebookError(f"no trained adapter at runs/{name}/{st.name}/output",
                                fix=f"Run `make train RECIPE={name}` first.")
        return path, st
    merge = next((s for s in res.stages if s.kind == "merge" and s.upstream == st.name), None)
    if merge is not None:
        path = merge.run_dir / "merged"
    elif not st.config.get("adapter"):
        path = st.output_dir
    else:
        raise TunebookError(f"recipe {name} has no merge stage after {st.name}: there is no merged model",
                            fix="Export the adapter (--format adapter) or add `merge` to the recipe's stages.")
    if not (path / "config.json").is_file():
        raise TunebookError(f"no merged model at {os.path.relpath(path, res.recipe.root)}",
                            fix=f"Run `make train RECIPE={name}` first.")
    return path, st


def model_files(path: Path) -> list[Path]:
    """Files of a model/adapter folder, relative to it; checkpoints, logs, caches and the trainer's own README
    (replaced by our model card) left out."""
    out = []
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path)
        if not p.is_file() or rel.as_posix() == "README.md" or p.suffix == ".log":
            continue
        if not any(x.startswith(("checkpoint-", ".")) or x in ("runs", "__pycache__") for x in rel.parts):
            out.append(rel)
    return out


def eval_results(run_root: Path) -> dict[str, dict]:
    """metrics.json of every eval stage (runs/<recipe>/eval*/metrics.json)."""
    out = {}
    for f in sorted(run_root.glob("eval*/metrics.json")):
        with contextlib.suppress(OSError, ValueError):
            out[f.parent.name] = json.loads(f.read_text())
    return out


def _fmt_metrics(metrics) -> list[str]:
    lines = []
    if not isinstance(metrics, dict):
        return [f"    {json.dumps(metrics, default=str)[:200]}"]
    for k, v in metrics.items():
        if isinstance(v, (int, float, str, bool)) or v is None:
            lines.append(f"| {k} | {v} |")
        elif isinstance(v, dict) and all(isinstance(x, (int, float, str, bool)) or x is None for x in v.values()):
            lines += [f"| {k}.{kk} | {vv} |" for kk, vv in v.items()]
    return lines


def model_card(res, fmt: str, st, manifest: dict, lock: dict, evals: dict) -> str:
    rec = res.recipe
    base_display = rec.data["base_model"]
    desc = rec.data.get("description") or ""
    versions = manifest.get("versions") or {}
    front = {"base_model": base_display if not base_display.startswith((".", "/")) else None,
             "library_name": "peft" if fmt == "adapter" else "transformers",
             "tags": ["tunebook", "axolotl", *( ["lora"] if fmt == "adapter" else [])]}
    front = {k: v for k, v in front.items() if v}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "",
             f"# {rec.name} ({'LoRA adapter' if fmt == 'adapter' else 'merged model'})", ""]
    if desc:
        lines += [desc, ""]
    lines += [f"Fine-tuned from `{base_display}` with tunebook (a declarative recipe run on Axolotl): "
              f"stages {', '.join(s.name for s in res.stages)}; exported from stage `{st.name}`"
              f"{' (LoRA r=' + str(st.config.get('lora_r')) + ')' if fmt == 'adapter' else ''}.", ""]
    if fmt == "adapter":
        lines += ["Load it on its base model, e.g. with PEFT or vLLM (`--enable-lora --lora-modules "
                  f"{rec.name}=<this folder>`).", ""]
    git = manifest.get("git") or {}
    lines += ["## How it was made", "",
              f"- recipe: `{manifest.get('recipe_file', rec.path.name)}` (sha256 `{manifest.get('recipe_sha256', '?')}`), "
              "included as `recipe.yaml`",
              f"- git commit: `{git.get('commit') or 'unknown'}`{' (uncommitted changes)' if git.get('dirty') else ''}",
              f"- hardware: {_hardware(manifest.get('hardware') or {})}", ""]
    data = manifest.get("data") or {}
    lines += ["## Data", ""]
    if data:
        lines += ["| block | file | rows | sha256 |", "|---|---|---|---|"]
        for block, d in data.items():
            for split, h in (d.get("sha256") or {}).items():
                lines.append(f"| {block} | {split} | {(d.get('counts') or {}).get(split, '?')} | `{h}` |")
    else:
        lines.append("No data record (runs/<recipe>/manifest.json is missing).")
    lines += ["", "## Evaluation", ""]
    if evals:
        for stage, metrics in evals.items():
            lines += [f"Stage `{stage}`:", "", "| metric | value |", "|---|---|", *_fmt_metrics(metrics), ""]
    else:
        lines += ["No eval stage results (runs/<recipe>/eval*/metrics.json).", ""]
    stages = (manifest.get("stages") or {})
    train = [(n, s.get("metrics")) for n, s in stages.items() if s.get("metrics") and s.get("kind") in TRAIN_KINDS]
    if train:
        lines += ["Training:", "", "| stage | metric | value |", "|---|---|---|"]
        for n, m in train:
            lines += [f"| {n} | {k} | {v} |" for k, v in (m or {}).items() if not isinstance(v, (dict, list))]
        lines.append("")
    lines += ["## Versions", ""]
    lines += [f"- {k}: {v}" for k, v in versions.items() if v] or ["- unknown"]
    lock_stages = ", ".join(f"{n} ({e.get('finished', '?')})" for n, e in (lock.get("stages") or {}).items())
    lines += ["", f"Stages recorded in `tunebook.lock`: {lock_stages or 'none'}.", ""]
    return "\n".join(lines)


def _hardware(h: dict) -> str:
    if h.get("gpu_name"):
        return f"{h.get('gpu_count') or 1} x {h['gpu_name']}"
    return f"CPU ({h.get('cpu_cores', '?')} cores)" if h else "unknown"


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(mtime), 0o644
    tar.addfile(info, io.BytesIO(data))


def export(name: str, root: Path, fmt: str) -> Path:
    """Write runs/<recipe>/export/<recipe>-<fmt>.tar.gz atomically; return its path."""
    from runner.recipe.resolve import resolve_recipe_by_name

    if fmt not in FORMATS:
        raise TunebookError(f"unknown export format '{fmt}'", fix=f"Use one of: {', '.join(FORMATS)}.")
    res = resolve_recipe_by_name(name, root, template_check=False)
    src, st = model_dir(res, fmt)
    run_root = res.run_root
    manifest = json.loads((run_root / "manifest.json").read_text()) if (run_root / "manifest.json").is_file() else {}
    lock_path = run_root / "tunebook.lock"
    if not lock_path.is_file():
        raise TunebookError(f"runs/{name}/tunebook.lock is missing", fix=f"Run `make train RECIPE={name}` first.")
    refuse_if_gate_failed(run_root, name, "export")
    lock = json.loads(lock_path.read_text())
    card = model_card(res, fmt, st, manifest, lock, eval_results(run_root))
    top = f"{name}-{fmt}"
    dest = run_root / "export" / f"{top}.tar.gz"
    now = time.time()
    with atomic_open(dest, "wb") as fh:
        with tarfile.open(fileobj=fh, mode="w:gz", compresslevel=3) as tar:
            for rel in model_files(src):
                tar.add(src / rel, arcname=f"{top}/{rel.as_posix()}", recursive=False)
            _add_bytes(tar, f"{top}/README.md", card.encode(), now)
            _add_bytes(tar, f"{top}/recipe.yaml", res.recipe.path.read_bytes(), res.recipe.path.stat().st_mtime)
            _add_bytes(tar, f"{top}/tunebook.lock", lock_path.read_bytes(), lock_path.stat().st_mtime)
            if manifest:
                _add_bytes(tar, f"{top}/manifest.json", (run_root / "manifest.json").read_bytes(), now)
    return dest
