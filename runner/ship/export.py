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
from dataclasses import dataclass
from pathlib import Path

import yaml

from runner.errors import TunebookError
from runner.fsutil import atomic_open
from runner.pipeline.lock import refuse_if_gate_failed
from runner.recipe.load import TRAIN_KINDS
from runner.recipe.resolve import ResolvedRecipe, ResolvedStage
from runner.recipe.shipped import shipped_model

FORMATS = ("adapter", "merged")


def model_dir(res: ResolvedRecipe, fmt: str) -> tuple[Path, ResolvedStage]:
    """(folder to export, the training stage it comes from): what the run ships (runner.recipe.shipped)."""
    model = shipped_model(res, action="export")
    st = model.stage
    name = res.recipe.name
    rel = lambda p: os.path.relpath(p, res.recipe.root)
    if fmt == "adapter":
        if model.adapter is None:
            raise TunebookError(f"recipe {name} trains all weights in stage {st.name}: there is no adapter",
                                fix=f"Export the model: `tunebook export {name} --format merged`.")
        if not (model.adapter / "adapter_config.json").is_file():
            raise TunebookError(f"no trained adapter at {rel(model.adapter)}",
                                fix=f"Run `make train RECIPE={name}` first.")
        return model.adapter, st
    path = model.merged
    if path is None:
        raise TunebookError(f"recipe {name} has no merge stage after {st.name}: there is no merged model",
                            fix="Export the adapter (--format adapter) or add `merge` to the recipe's stages.")
    if not (path / "config.json").is_file():
        raise TunebookError(f"no merged model at {rel(path)}", fix=f"Run `make train RECIPE={name}` first.")
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


def eval_results(res: ResolvedRecipe) -> dict[str, dict]:
    """metrics.json of every eval stage that has one, by stage name."""
    out = {}
    for st in sorted((s for s in res.stages if s.kind == "eval"), key=lambda s: s.name):
        with contextlib.suppress(OSError, ValueError):
            out[st.name] = json.loads(st.paths.metrics.read_text())
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


@dataclass(frozen=True)
class Package:
    """What a run ships in one format, wherever it goes (the export archive, the Hub): the model folder's files
    and, beside them, the model card and the run's records (name in the package -> file, or bytes for the card)."""

    name: str                       # <recipe>-<format>
    src: Path                       # the model folder
    files: list[Path]               # model files, relative to src (model_files)
    records: dict[str, Path | bytes]  # README.md (the card), recipe.yaml, tunebook.lock, manifest.json

    def items(self) -> list[tuple[str, Path | bytes]]:
        """(path in the package, file or bytes), the model files first."""
        return [(rel.as_posix(), self.src / rel) for rel in self.files] + list(self.records.items())


def package(res: ResolvedRecipe, fmt: str, action: str = "export") -> Package:
    """What `export` packs and `push` uploads for format `fmt`; refuses a run that is missing or failed a gate."""
    if fmt not in FORMATS:
        raise TunebookError(f"unknown {action} format '{fmt}'", fix=f"Use one of: {', '.join(FORMATS)}.")
    name = res.recipe.name
    src, st = model_dir(res, fmt)
    layout = res.layout
    manifest = json.loads(layout.manifest.read_text()) if layout.manifest.is_file() else {}
    if not layout.lock.is_file():
        raise TunebookError(f"{os.path.relpath(layout.lock, res.recipe.root)} is missing",
                            fix=f"Run `make train RECIPE={name}` first.")
    refuse_if_gate_failed(layout.root, name, action)
    lock = json.loads(layout.lock.read_text())
    card = model_card(res, fmt, st, manifest, lock, eval_results(res))
    records: dict[str, Path | bytes] = {"README.md": card.encode(), "recipe.yaml": res.recipe.path,
                                        "tunebook.lock": layout.lock}
    if manifest:
        records["manifest.json"] = layout.manifest
    return Package(f"{name}-{fmt}", src, model_files(src), records)


def export(res: ResolvedRecipe, fmt: str) -> Path:
    """Write runs/<recipe>/export/<recipe>-<fmt>.tar.gz atomically; return its path."""
    pkg = package(res, fmt)
    dest = res.layout.export_dir / f"{pkg.name}.tar.gz"
    now = time.time()
    with atomic_open(dest, "wb") as fh:
        with tarfile.open(fileobj=fh, mode="w:gz", compresslevel=3) as tar:
            for rel in pkg.files:
                tar.add(pkg.src / rel, arcname=f"{pkg.name}/{rel.as_posix()}", recursive=False)
            for arc, item in pkg.records.items():
                data, mtime = (item, now) if isinstance(item, bytes) else (item.read_bytes(), item.stat().st_mtime)
                _add_bytes(tar, f"{pkg.name}/{arc}", data, mtime)
    return dest
