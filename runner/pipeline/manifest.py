"""runs/<recipe>/manifest.json: enough to reproduce and compare a run (git state, hashes, versions,
hardware, timings, final metrics)."""
from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path

from runner import early_stopping as es
from runner.errors import TunebookError
from runner.fsutil import atomic_write_json, sha256_file
from runner.pipeline.lock import LOCK_LIMITS, package_versions
from runner.safeload import load_json_file
from runner.train import trainlog


def git_state(root: Path) -> dict:
    """Commit and dirty flag of the repo holding the recipes (None outside git)."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}


def read_manifest(path: Path) -> dict:
    """The manifest of an earlier run ({} when there is none); a damaged one is an error naming it, never
    silently replaced (it holds the record of every finished stage)."""
    if not path.exists():
        return {}
    try:
        old = load_json_file(path, str(path), LOCK_LIMITS)
        problem = None if isinstance(old, dict) and isinstance(old.get("stages", {}), dict) else "not a manifest"
    except TunebookError as exc:
        problem = exc.what
    if problem:
        aside = path.with_name(path.name + ".damaged")
        raise TunebookError(f"the run manifest is damaged: {problem}", where=str(path),
                            fix=f"Restore it from a backup, or move it aside (`mv {path} {aside}`) and run again "
                                "(the new manifest then records only the stages that run).")
    return old


def epochs_entry(st, hist: list[dict]) -> dict:
    """How many epochs a training stage planned and ran, whether the early-stopping rule cut it short, and why
    (from the rule's record, runner.early_stopping; without the rule, from the trainer's log). A stage sized by
    max_steps plans no epochs."""
    cfg = st.config or {}
    rec = es.read_record(st.paths.early_stop) if cfg.get(es.CONFIG_KEY) else None
    if rec is not None:
        return {"epochs_planned": rec["epochs_planned"], "epochs_run": rec["epochs_run"],
                "stopped_early": rec["stopped_early"], "stop_reason": rec["reason"]}
    epochs = [h["epoch"] for h in hist if isinstance(h.get("epoch"), (int, float))]
    return {"epochs_planned": None if cfg.get("max_steps") else cfg.get("num_epochs"),
            "epochs_run": round(float(epochs[-1]), 2) if epochs else None, "stopped_early": False,
            "stop_reason": f"early stopping off: {st.early_stopping_off}" if st.early_stopping_off else None}


class Manifest:
    """Accumulates a run's record and rewrites manifest.json atomically after every change."""

    def __init__(self, res, data: dict):
        self.res, self.data = res, data
        self.path = res.layout.manifest

    @classmethod
    def open(cls, res) -> "Manifest":
        path = res.layout.manifest
        old = read_manifest(path)
        rec = res.recipe
        data = {
            "recipe": rec.name,
            "recipe_file": str(rec.path.relative_to(rec.root)),
            "recipe_sha256": sha256_file(rec.path),
            "git": git_state(rec.root),
            "versions": package_versions(),
            "hardware": res.hardware.to_dict(),
            "preset": (res.preset or {}).get("name"),
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "data": {},
            "stages": old.get("stages", {}),
        }
        m = cls(res, data)
        m.save()
        return m

    def save(self):
        atomic_write_json(self.path, self.data)

    def record_data(self, blocks):
        self.data["data"] = {name: {"format": b.format, "counts": b.counts, "sha256": b.hashes}
                             for name, b in blocks.items()}
        self.save()

    def record_stage(self, st, started, finished, seconds):
        entry = {"kind": st.kind, "started": started, "finished": finished, "seconds": round(seconds, 1)}
        if st.config is not None and st.kind != "merge":
            hist = trainlog.history(st.run_dir)
            entry["metrics"] = trainlog.summary(hist)
            entry["base_model"] = st.config.get("base_model")
            entry.update(epochs_entry(st, hist))
        if st.kind == "eval":
            f = st.paths.metrics
            if f.is_file():
                entry["metrics"] = json.loads(f.read_text())
        best = st.paths.best_epoch
        if best.is_file():
            entry["best_epoch"] = json.loads(best.read_text())
        self.data["stages"][st.name] = entry
        self.save()

    def finish(self):
        self.data["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.save()
