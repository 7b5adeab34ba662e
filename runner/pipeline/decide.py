"""Is a stage up to date? The one decision behind `tunebook train` (which stages run) and `tunebook status`
(what each stage's state is), as dvc's Stage.changed() serves both `dvc repro` and `dvc status`.

A stage is up to date when the lock has an entry for it that passed its gates, was made from the inputs the stage
has now (resolved config, data hashes, upstream results, package versions: lock.StageInputs), and whose outputs
on disk still hash to what the lock recorded; else the decision says why it must run. Planning only: nothing here
runs, writes or deletes anything.
"""
from __future__ import annotations

from dataclasses import dataclass

from runner.merge.inputs import merge_stage_inputs
from runner.pipeline import lock as lk
from runner.pipeline.lock import StageInputs, outputs_hash
from runner.recipe.resolve import ResolvedRecipe, ResolvedStage

# Why a stage runs (or doesn't), in the order decide() checks them.
NOT_RUN = "not run"                  # no lock entry
GATE_FAILED = "gate failed"          # its evaluation gate failed last time: a failed gate is never skipped over
FORCED = "forced"                    # --force named it
UPSTREAM = "upstream re-runs"        # status only: a stage before it will run, so its upstream result will change
INPUTS_CHANGED = "inputs changed"    # lock.why_stale says which
OUTPUTS = "outputs missing or modified"
UP_TO_DATE = "up to date"


def stage_inputs(res: ResolvedRecipe, stage: ResolvedStage, sources: dict,
                 upstream_hashes: dict[str, str | None]) -> StageInputs:
    """Everything `stage`'s result depends on. `sources`: data.prepare.source_hashes(res); `upstream_hashes`:
    the output hash of each stage before it (as just run, or as the lock recorded it)."""
    if res.merge is not None:  # a merge recipe: its sources' results are its inputs
        return merge_stage_inputs(res, stage, upstream_hashes)
    data = {}
    if stage.data_block and stage.data_block in sources and stage.kind != "merge":
        data = {f"{stage.data_block}:{k}": v for k, v in sources[stage.data_block].items()}
    ups = {stage.upstream: upstream_hashes.get(stage.upstream)} if stage.upstream else {}
    config = stage.config if stage.config is not None else {
        "eval": res.data.get("eval", {}), "system_prompt": res.data.get("system_prompt")}
    return StageInputs(config=config, data=data, upstream=ups, versions=lk.package_versions(),
                       root=str(res.recipe.root))


@dataclass(frozen=True)
class Decision:
    """Whether one stage runs, and why. `reasons`: the details in words (for status); `entry`: the stage's lock
    entry (None when it never ran); `inputs`: its current inputs."""

    stage: str
    why: str
    reasons: tuple[str, ...]
    entry: dict | None
    inputs: StageInputs
    forced: bool = False

    @property
    def runs(self) -> bool:
        return self.why != UP_TO_DATE

    @property
    def same_inputs(self) -> bool:
        """The lock entry was made from these very inputs."""
        return bool(self.entry) and self.entry.get("input_hash") == self.inputs.hash

    def status(self) -> tuple[str, str]:
        """(done | stale | not run | gate failed, details): a row of `tunebook status`."""
        if self.why == UP_TO_DATE:
            return "done", self.entry.get("finished", "")
        if self.why in (NOT_RUN, GATE_FAILED):
            return self.why, "; ".join(self.reasons)
        return "stale", "; ".join(self.reasons)

    def note(self) -> str | None:
        """What `tunebook train` says about this stage before running it (None: nothing to say)."""
        if self.why == UP_TO_DATE:
            return f"{self.stage}: up to date (inputs unchanged since {self.entry.get('finished', '?')})"
        if self.why == GATE_FAILED and self.same_inputs:
            return f"{self.stage}: re-evaluating: its gate failed last time"
        if self.entry and not self.forced:
            return f"{self.stage}: re-running because " + "; ".join(lk.why_stale(self.entry, self.inputs.to_dict()))
        return None


def decide(stage: ResolvedStage, entry: dict | None, inputs: StageInputs, forced: bool = False,
           upstream_rerun: str | None = None) -> Decision:
    """Does `stage` run, given its lock entry and current inputs? `forced`: --force named it. `upstream_rerun`:
    the first earlier stage that will run, for a status that runs nothing (a run knows the new upstream results:
    they are in `inputs`)."""
    def d(why, *reasons):
        return Decision(stage.name, why, reasons, entry, inputs, forced)

    if not entry:
        return d(NOT_RUN)
    if entry.get("gate") == "failed":
        return d(GATE_FAILED, "; ".join(entry.get("failed_gates") or []) or "an evaluation gate failed")
    if forced:
        return d(FORCED, "forced (--force)")
    if upstream_rerun and stage.upstream:
        return d(UPSTREAM, f"upstream stage {upstream_rerun} will re-run")
    if entry.get("input_hash") != inputs.hash:
        return d(INPUTS_CHANGED, *lk.why_stale(entry, inputs.to_dict()))
    if not entry.get("output_hash") or outputs_hash(stage) != entry["output_hash"]:
        return d(OUTPUTS, "its outputs are missing or were modified")
    return d(UP_TO_DATE)
