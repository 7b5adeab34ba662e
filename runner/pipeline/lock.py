"""The lock file (runs/<recipe>/tunebook.lock): what each finished stage was built from and what it made.

Like dvc.lock: a stage whose recorded inputs equal its current inputs, and whose outputs are intact, is up to
date and is not re-run. Anything else (and everything downstream of it) runs again.
"""
from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from runner.errors import TunebookError
from runner.fsutil import atomic_write_text, sha256_file, sha256_json
from runner.layout import RunLayout
from runner.recipe.resolve import ResolvedStage
from runner.safeload import Limits, load_json_file
from runner.train.axolotl import INHERITED_FDS
from runner.train.stage import output_hash

# A lock records a few hashes per stage: megabytes would be a damaged or foreign file, not a lock.
LOCK_LIMITS = Limits(max_bytes=16 * 1024 * 1024, max_depth=16, max_nodes=1_000_000)

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
    if stage.kind in ("merge", "mergekit"):
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


def damaged_lock(path: Path, problem: str) -> TunebookError:
    """The error of a lock file tunebook cannot trust: it is never read as empty nor rewritten."""
    aside = path.with_name(path.name + ".damaged")
    return TunebookError(
        f"the lock file is damaged: {problem}", where=str(path),
        fix=f"tunebook leaves it as it is (it records which stages finished). Restore it from a backup, or move it "
            f"aside (`mv {path} {aside}`) and run again: every stage then counts as not run and is re-made.")


def _shape_problem(lock) -> str | None:
    """What is wrong with the shape of a parsed lock (None when it is a lock)."""
    if not isinstance(lock, dict):
        return f"expected a JSON object, found {type(lock).__name__}"
    stages = lock.get("stages")
    if not isinstance(stages, dict):
        return "'stages' is missing or not an object"
    strings = ("kind", "input_hash", "gate", "started", "finished")
    for name, entry in stages.items():
        if not isinstance(entry, dict):
            return f"stages.{name} is not an object"
        for k in strings:
            if k in entry and not isinstance(entry[k], str):
                return f"stages.{name}.{k} is not a string"
        if entry.get("output_hash") is not None and not isinstance(entry["output_hash"], str):
            return f"stages.{name}.output_hash is not a string"
        if "failed_gates" in entry and not (isinstance(entry["failed_gates"], list)
                                            and all(isinstance(g, str) for g in entry["failed_gates"])):
            return f"stages.{name}.failed_gates is not a list of strings"
        for k in ("inputs", "outputs"):
            if k in entry and not isinstance(entry[k], dict):
                return f"stages.{name}.{k} is not an object"
        for k in ("data", "upstream", "versions"):
            if k in entry.get("inputs", {}) and not isinstance(entry["inputs"][k], dict):
                return f"stages.{name}.inputs.{k} is not an object"
    return None


def read_lock(path: Path) -> dict:
    """The lock of a run (an empty one when the run has none). A lock that is not one (truncated, binary, of
    another shape) is a TunebookError naming it: reading it as empty would re-run and overwrite what finished."""
    if not os.path.lexists(path):
        return {"version": 1, "stages": {}}
    try:
        lock = load_json_file(path, str(path), LOCK_LIMITS)
    except TunebookError as exc:
        raise damaged_lock(path, exc.what) from None
    problem = _shape_problem(lock)
    if problem:
        raise damaged_lock(path, problem)
    return lock


def write_lock(path: Path, lock: dict) -> None:
    atomic_write_text(path, json.dumps(lock, indent=2, sort_keys=True) + "\n")


def why_stale(recorded: dict, current: dict) -> list[str]:
    """Which inputs differ between a recorded stage entry and the current inputs (human words)."""
    reasons = []
    rin = recorded.get("inputs", {})
    if rin.get("config") != current["config"]:
        reasons.append("its mergekit config (the recipe's merge: block) changed" if recorded.get("kind") == "mergekit"
                       else "its resolved Axolotl config changed")
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


@contextmanager
def run_lock(layout: RunLayout, command: str = "train"):
    """Hold the run lock of a recipe (layout.run_lock, fcntl.flock) while a command that writes its run folder runs
    (`train`, `data check`): a second one of the same recipe is refused with the command and PID of the one
    running. The kernel releases the lock when its process dies, so a lock file left by a killed run is stale and
    simply taken over."""
    path = layout.run_lock
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").split(maxsplit=1)
            pid = holder[0] if holder else "unknown"
            running = (holder[1].strip() if len(holder) > 1 else "") or "train"
            if pid.isdigit() and not _alive(int(pid)):
                raise TunebookError(
                    f"the run lock of {layout.recipe} is held by an Axolotl process that a killed `tunebook "
                    f"{running}` (PID {pid}) left running", where=str(path),
                    fix=f"Stop it (`fuser -k {path}` or `lsof {path}` shows its PID), then run again: finished "
                        "stages are kept and the interrupted one resumes.", exit_code=1) from None
            raise TunebookError(
                f"another `tunebook {running} {layout.recipe}` is running (PID {pid}) and holds the run lock"
                + (f", so `tunebook {command}` cannot write the run folder now" if command != running else ""),
                where=str(path),
                fix=f"Wait for it to finish (`tunebook status {layout.recipe}` shows its progress), or stop it "
                    f"(`kill {pid}`: finished stages are kept and the interrupted one resumes).", exit_code=1) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {command}\n".encode(), 0)
        INHERITED_FDS.add(fd)
        yield
    finally:
        INHERITED_FDS.discard(fd)
        os.close(fd)  # the flock is released once no process holds this descriptor (Axolotl's included)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
