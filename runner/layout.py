"""Where a run's files live: every path under `runs/<recipe>/`, in one place.

The runs folder is `<project root>/runs` unless `$TUNEBOOK_RUNS` names another (absolute, or relative to the
project root). Every module asks a `RunLayout` (the recipe's folder) or a `StageLayout` (one stage's folder)
for a path instead of spelling `"merged"` or `"metrics.json"` itself, so moving a file is a one-line change.

    runs/<recipe>/
      tunebook.lock  .tunebook-run.lock  manifest.json  report.md  plots/
      data/<block>/{train,validation,held_out}.jsonl   data/report.json
      <stage>/ axolotl.yaml merge.yaml mergekit.yaml train.log inputs.hash best_epoch.json
               early_stop.json
               output/ (adapter or model, checkpoints)  merged/  prepared/
               metrics.json predictions.jsonl serve-eval.json (eval stages)
      eval/ (answer cache)  bench/  launch/  launch.json  export/  source/ (bench --synthetic-rows)
    runs/_serve/<port>/ (a running `tunebook serve`: runner.ship.serve_state; "_" starts no recipe name)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

RUNS_ENV = "TUNEBOOK_RUNS"


def runs_dir(project_root: str | Path, runs: str | Path | None = None) -> Path:
    """The folder holding every recipe's run folder: `runs`, or `$TUNEBOOK_RUNS`, under the project root."""
    return (Path(project_root) / (runs or os.environ.get(RUNS_ENV) or "runs")).resolve()


@dataclass(frozen=True)
class StageLayout:
    """The files of one stage, under `runs/<recipe>/<stage>/`."""

    dir: Path

    @property
    def output(self) -> Path:
        """Axolotl's output_dir: the adapter or full model, and its checkpoints."""
        return self.dir / "output"

    @property
    def merged(self) -> Path:
        """The adapter merged into its base (a whole model folder)."""
        return self.dir / "merged"

    @property
    def merge_tmp(self) -> Path:
        """Where merge-lora (or mergekit) writes before the one rename to `merged`."""
        return self.dir / ".merged.tmp"

    @property
    def mergekit_out(self) -> Path:
        """The model `mergekit-yaml` writes, inside merge_tmp (renamed to `merged` once complete)."""
        return self.merge_tmp / "model"

    @property
    def lora_merge_cache(self) -> Path:
        """mergekit's --lora-merge-cache: sources given as base+adapter merged into whole models, inside merge_tmp
        (removed with it: each is a whole model's size)."""
        return self.merge_tmp / "lora-cache"

    @property
    def prepared(self) -> Path:
        """Axolotl's per-stage tokenisation cache (dataset_prepared_path)."""
        return self.dir / "prepared"

    @property
    def config(self) -> Path:
        return self.dir / "axolotl.yaml"

    @property
    def merge_config(self) -> Path:
        return self.dir / "merge.yaml"

    @property
    def mergekit_config(self) -> Path:
        """The mergekit YAML of a mergekit stage (the file `mergekit-yaml` runs)."""
        return self.dir / "mergekit.yaml"

    @property
    def log(self) -> Path:
        return self.dir / "train.log"

    @property
    def inputs_hash(self) -> Path:
        """The input hash of the last attempt: checkpoints made from other inputs are not resumed."""
        return self.dir / "inputs.hash"

    @property
    def best_epoch(self) -> Path:
        return self.dir / "best_epoch.json"

    @classmethod
    def of_output(cls, output_dir: str | Path) -> "StageLayout":
        """The stage whose Axolotl output_dir this is (what a plugin inside Axolotl knows of its stage)."""
        return cls(Path(output_dir).parent)

    @property
    def pissa_init(self) -> Path:
        """A PiSSA adapter as initialised, before training (runner.train.pissa_plugin writes it, runner.train.pissa
        converts the trained adapter with it)."""
        return self.dir / "pissa_init"

    @property
    def early_stop(self) -> Path:
        """The early-stopping rule's record (runner.early_stopping): epochs run, and why training stopped."""
        return self.dir / "early_stop.json"

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.json"

    @property
    def predictions(self) -> Path:
        return self.dir / "predictions.jsonl"

    @property
    def serve_eval(self) -> Path:
        """An eval stage's held-out set answered by a served model (`tunebook eval RECIPE --server URL`)."""
        return self.dir / "serve-eval.json"

    def attempt_dirs(self) -> list[Path]:
        """What a fresh start of the stage removes (everything an earlier attempt made from other inputs)."""
        return [self.output, self.merged, self.prepared, self.merge_tmp]


@dataclass(frozen=True)
class RunLayout:
    """The files of one recipe's run, under `runs/<recipe>/`."""

    root: Path

    @classmethod
    def for_recipe(cls, project_root: str | Path, recipe: str, runs: str | Path | None = None) -> "RunLayout":
        return cls(runs_dir(project_root, runs) / recipe)

    @property
    def recipe(self) -> str:
        return self.root.name

    def stage(self, name: str) -> StageLayout:
        return StageLayout(self.root / name)

    @property
    def lock(self) -> Path:
        return self.root / "tunebook.lock"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def run_lock(self) -> Path:
        """Held (fcntl.flock) by the one `tunebook train` of this recipe running now; holds its PID."""
        return self.root / ".tunebook-run.lock"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def data(self, block: str) -> Path:
        """The checked, converted files of one data block."""
        return self.data_dir / block

    def data_file(self, block: str, split: str) -> Path:
        """`split` is train, validation or held_out."""
        return self.data(block) / f"{split}.jsonl"

    @property
    def data_report(self) -> Path:
        return self.data_dir / "report.json"

    @property
    def eval_cache(self) -> Path:
        """Answers and lm-eval scores cached across eval runs, keyed by model and settings."""
        return self.root / "eval"

    @property
    def bench(self) -> Path:
        return self.root / "bench"

    @property
    def synthetic_rows(self) -> Path:
        """`tunebook bench --synthetic-rows`: the generated training rows (of the run `<recipe>-synthetic`)."""
        return self.root / "source" / "train.jsonl"

    @property
    def launch_dir(self) -> Path:
        return self.root / "launch"

    @property
    def launch_task(self) -> Path:
        """The SkyPilot task `tunebook launch` writes (and launches)."""
        return self.launch_dir / "task.yaml"

    @property
    def launch_log(self) -> Path:
        """The job's log, saved by `tunebook launch` (`sky logs --no-follow`) before the cluster is torn down."""
        return self.launch_dir / "job.log"

    @property
    def launch_record(self) -> Path:
        return self.root / "launch.json"

    @property
    def export_dir(self) -> Path:
        return self.root / "export"
