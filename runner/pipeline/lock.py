"""The lock file (runs/<recipe>/tunebook.lock): what each finished stage was built from and what it made.

Like dvc.lock: a stage whose recorded inputs equal its current inputs, and whose outputs are intact, is up to
date and is not re-run. Anything else (and everything downstream of it) runs again.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from runner.errors import TunebookError
from runner.fsutil import atomic_write_text, sha256_file, sha256_json
from runner.layout import RunLayout
from runner.recipe.resolve import ResolvedStage
from runner.train.stage import output_hash

PACKAGES = ("tunebook", "axolotl", "transformers", "peft", "trl", "torch", "bitsandbytes", "datasets",
            "accelerate")


def package_versions() -> dict[str, str | None]:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


@dataclass
class StageInputs:
    """Everything a stage's result depends on."""

    config: dict
    data: dict
    upstream: dict
    versions: dict
    root: str = ""

    def to_dict(self) -> dict:
        # Paths are hashed relative to the project root, so a moved checkout is still up to date.
        cfg = json.loads(json.dumps(self.config, default=str).replace(self.root, "<root>")) if self.root else self.config
        return {"config": sha256_json(cfg), "data": self.data, "upstream": self.upstream,
                "versions": self.versions}

    @property
    def hash(self) -> str:
        return sha256_json(self.to_dict())


# What a stage made is hashed here, next to what it was made from: the lock records both, and runner.pipeline.decide
# compares both. Hashing a model folder is the training stage's knowledge (train.stage.output_hash: which files
# make a model); which folders count as a stage's outputs, for every kind of stage, is the lock's.


def stage_outputs(stage: ResolvedStage) -> dict[str, Path]:
    """The folders a finished stage leaves behind."""
    if stage.kind == "merge":
        return {"merged": stage.paths.merged}
    if stage.kind == "eval":
        return {"eval": stage.run_dir}
    outs = {"output": stage.paths.output}
    if stage.paths.merged.exists():
        outs["merged"] = stage.paths.merged
    return outs


def outputs_hash(stage: ResolvedStage) -> str | None:
    """One hash of everything a stage made (an eval stage: its metrics.json); None when any of it is missing."""
    if stage.kind == "eval":
        f = stage.paths.metrics
        return sha256_file(f) if f.is_file() else None
    hashes = {k: output_hash(p) for k, p in stage_outputs(stage).items()}
    return None if any(v is None for v in hashes.values()) else sha256_json(hashes)


def read_lock(path: Path) -> dict:
    if not path.is_file():
        return {"version": 1, "stages": {}}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {"version": 1, "stages": {}}


def write_lock(path: Path, lock: dict) -> None:
    atomic_write_text(path, json.dumps(lock, indent=2, sort_keys=True) + "\n")


def why_stale(recorded: dict, current: dict) -> list[str]:
    """Which inputs differ between a recorded stage entry and the current inputs (human words)."""
    reasons = []
    rin = recorded.get("inputs", {})
    if rin.get("config") != current["config"]:
        reasons.append("its resolved Axolotl config changed")
    for name, h in current["data"].items():
        if rin.get("data", {}).get(name) != h:
            reasons.append(f"data {name} changed")
    for name in rin.get("data", {}):
        if name not in current["data"]:
            reasons.append(f"data {name} is no longer used")
    for name, h in current["upstream"].items():
        if rin.get("upstream", {}).get(name) != h:
            reasons.append(f"upstream stage {name} produced a new result")
    for pkg, v in current["versions"].items():
        if rin.get("versions", {}).get(pkg) != v:
            reasons.append(f"{pkg} {rin.get('versions', {}).get(pkg)} -> {v}")
    return reasons or ["its inputs changed"]


def refuse_if_gate_failed(run_root: Path, recipe: str, action: str) -> None:
    """Stop export/serve of a run whose evaluation gate failed (an older model may still be on disk)."""
    path = RunLayout(Path(run_root)).lock
    lock = read_lock(path)
    for name, entry in lock.get("stages", {}).items():
        if entry.get("gate") == "failed":
            gates = "; ".join(entry.get("failed_gates") or []) or "a gate failed"
            raise TunebookError(f"refusing to {action} {recipe}: stage '{name}' failed its evaluation gate ({gates})",
                                where=str(path),
                                fix=f"Improve the data or training and run `make train RECIPE={recipe}` until the "
                                    "gates pass (or change eval.gates in the recipe).")
