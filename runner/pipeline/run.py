"""Run a resolved recipe stage by stage: data → Axolotl train / merge-lora → eval, with a lock file so that
only stages whose inputs changed run again, and resume from checkpoints after a crash.

The pipeline orchestrates: runner.pipeline.decide says which stages run (the same decision `status` shows), a
stage runner runs one stage (runner.train.stage trains or merges, runner.evaluate.stage evaluates; a merge
recipe's runner.merge.stage merges with mergekit and runner.evaluate.sources scores it), and the
pipeline records what each made: the lock, the manifest, and the report after an eval stage."""
from __future__ import annotations

import datetime as dt
import shutil
import time
from typing import Callable

from runner.console import say
from runner.data import prepare as dataprep
from runner.errors import TunebookError
from runner.evaluate.gates import GateFailed
from runner.evaluate.sources import run_sources_eval
from runner.evaluate.stage import run_eval_stage
from runner.fsutil import atomic_write_text
from runner.pipeline import lock as lk
from runner.pipeline.decide import Decision, decide, stage_inputs
from runner.pipeline.manifest import Manifest, read_manifest
from runner.pipeline.report import report_for
from runner.merge.stage import run_mergekit_stage
from runner.recipe.resolve import ResolvedRecipe, ResolvedStage
from runner.train.stage import run_merge_stage, run_training_stage

# runner(res, stage, input_hash, quiet): runs one stage and leaves its outputs in the stage folder.
StageRunner = Callable[[ResolvedRecipe, ResolvedStage, str, bool], object]


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def begin_attempt(stage: ResolvedStage, input_hash: str, entry: dict | None = None, forced: bool = False) -> None:
    """Ready the stage folder for an attempt with these inputs, and write them down for the next attempt.

    An attempt resumes (Axolotl continues from its last checkpoint) only when it continues an interrupted one:
    the stage's marker names these very inputs and the lock does not record the stage as finished from them.
    Otherwise (--force, other inputs, a finished stage whose outputs were damaged, no marker) what an earlier
    attempt left is removed and the stage starts fresh: old checkpoints must not be resumed."""
    marker = stage.paths.inputs_hash
    recorded = marker.read_text().strip() if marker.is_file() else None
    finished = bool(entry) and entry.get("input_hash") == input_hash and bool(entry.get("output_hash"))
    if forced or finished or recorded != input_hash:
        left = [d for d in stage.paths.attempt_dirs() if d.exists()]
        if forced:
            say(f"{stage.name}: --force: starting fresh" + (" (the previous run's checkpoints and outputs are "
                                                             "removed)" if left else ""))
        elif left and recorded is not None and recorded != input_hash:
            say(f"{stage.name}: inputs changed since the last attempt; starting fresh")
        elif left and finished:
            say(f"{stage.name}: starting fresh (the stage had finished; its checkpoints are not resumed)")
        elif left:
            say(f"{stage.name}: starting fresh (no record of an interrupted attempt with these inputs)")
        for sub in left:
            shutil.rmtree(sub)
        # An earlier attempt's early-stopping record would describe epochs this attempt never ran.
        stage.paths.early_stop.unlink(missing_ok=True)
    stage.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, input_hash + "\n")


def run_stage(res: ResolvedRecipe, stage: ResolvedStage, input_hash: str, quiet: bool = False) -> dict | None:
    """The default stage runner: one attempt of one stage (its folder readied by begin_attempt). Returns an eval
    stage's metrics (None for the others); a failed eval gate raises GateFailed after the metrics are written."""
    if stage.kind == "eval" and res.merge is not None:
        return run_sources_eval(res, stage, quiet=quiet)
    if stage.kind == "eval":
        return run_eval_stage(res, stage, quiet=quiet)
    if stage.kind == "mergekit":
        run_mergekit_stage(res, stage, quiet)
    elif stage.kind == "merge":
        run_merge_stage(res, stage, quiet)
    else:
        run_training_stage(res, stage, quiet)
    return None


def write_report(res: ResolvedRecipe) -> None:
    """The run's report, from what the stages left in the run folder; a report that cannot be written is a
    warning (the gates must still be honoured if plotting breaks)."""
    try:
        path = report_for(res)
        say(f"eval: report at {path}")
    except Exception as exc:
        say(f"warning: the report could not be written ({type(exc).__name__}: {exc}); "
            f"run `tunebook report {res.recipe.name}` to retry")


class Pipeline:
    """Executes a resolved recipe. `force` re-runs named stages; `until` stops after a stage; `runner` runs one
    stage (default run_stage; tests replace it to check the bookkeeping without training)."""

    def __init__(self, res: ResolvedRecipe, force: set[str] | None = None, until: str | None = None,
                 quiet: bool = False, runner: StageRunner | None = None):
        self.res, self.force, self.until, self.quiet = res, set(force or ()), until, quiet
        self.runner = runner or run_stage
        self.lock_path = res.layout.lock
        names = [s.name for s in res.stages]
        for f in self.force | ({until} if until else set()):
            if f not in names:
                raise TunebookError(f"recipe {res.recipe.name} has no stage '{f}'",
                                    fix=f"Its stages are: {', '.join(names)}.")

    def status(self) -> list[tuple[str, str, str]]:
        """(stage, done|stale|not run|gate failed, why) for every stage, without running anything."""
        return [(d.stage, *d.status()) for d in self.plan()]

    def plan(self) -> list[Decision]:
        """decide() for every stage, from the lock alone (runs nothing): a stage after one that will run is stale,
        since the results it starts from will change."""
        sources = dataprep.source_hashes(self.res)
        lock = lk.read_lock(self.lock_path)
        out, ups, first_to_run = [], {}, None
        for st in self.res.stages:
            entry = lock["stages"].get(st.name)
            d = decide(st, entry, stage_inputs(self.res, st, sources, ups), upstream_rerun=first_to_run)
            if d.runs and first_to_run is None:
                first_to_run = st.name
            out.append(d)
            ups[st.name] = entry.get("output_hash") if entry else None
        return out

    def run(self) -> dict:
        """Run every stage that must run, holding the recipe's run lock (one `tunebook train` per recipe)."""
        self.res.run_root.mkdir(parents=True, exist_ok=True)
        with lk.run_lock(self.res.layout):
            return self._run()

    def _run(self) -> dict:
        res = self.res
        for note in res.notes:
            say(note)
        lock = lk.read_lock(self.lock_path)  # a damaged lock stops the run before anything is written
        read_manifest(res.layout.manifest)
        blocks = dataprep.prepare(res)
        sources = dataprep.source_hashes(res)
        manifest = Manifest.open(res)
        manifest.record_data(blocks)
        upstream_hashes: dict[str, str | None] = {}
        ran, skipped = [], []
        for st in res.stages:
            d = decide(st, lock["stages"].get(st.name), stage_inputs(res, st, sources, upstream_hashes),
                       forced=st.name in self.force)
            note = d.note()
            if note:
                say(note)
            if d.runs:
                upstream_hashes[st.name] = self.execute(st, d, lock, manifest)
                ran.append(st.name)
            else:
                skipped.append(st.name)
                upstream_hashes[st.name] = d.entry["output_hash"]
            if st.name == self.until:
                break
        manifest.finish()
        if not ran:
            say(f"nothing to do: every stage of {res.recipe.name} is up to date")
        return {"ran": ran, "skipped": skipped}

    def execute(self, st: ResolvedStage, d: Decision, lock: dict, manifest: Manifest) -> str:
        """Run one stage and record it in the lock and the manifest (and the report after an eval stage);
        returns the hash of its outputs."""
        ih, inputs = d.inputs.hash, d.inputs.to_dict()
        started, t0 = _now(), time.time()
        begin_attempt(st, ih, d.entry, d.forced)
        try:
            self.runner(self.res, st, ih, self.quiet)
        except GateFailed as exc:
            # The lock says why the pipeline stopped here; the next run re-evaluates.
            write_report(self.res)
            lock["stages"][st.name] = {"kind": st.kind, "input_hash": ih, "gate": "failed", "inputs": inputs,
                                       "started": started, "failed_gates": exc.failed, "finished": _now()}
            lk.write_lock(self.lock_path, lock)
            manifest.record_stage(st, started, lock["stages"][st.name]["finished"], time.time() - t0)
            manifest.finish()
            raise
        if st.kind == "eval":
            write_report(self.res)
        oh = lk.outputs_hash(st)
        if oh is None:
            raise TunebookError(f"stage '{st.name}' finished but its outputs are incomplete",
                                where=str(st.run_dir), exit_code=1)
        finished = _now()
        lock["stages"][st.name] = {"kind": st.kind, "input_hash": ih, "inputs": inputs, "output_hash": oh,
                                   "outputs": {k: str(p.relative_to(self.res.run_root))
                                               for k, p in lk.stage_outputs(st).items()},
                                   "started": started, "finished": finished}
        lk.write_lock(self.lock_path, lock)
        manifest.record_stage(st, started, finished, time.time() - t0)
        return oh
