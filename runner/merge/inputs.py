"""What the lock compares for a merge recipe's stages (runner.pipeline.decide asks here): each source's lock
entries (so a merge is re-made only when a source is retrained or the merge settings change) and, for its eval
stage, each source's held-out set and eval result. It runs nothing."""
from __future__ import annotations

import json
from importlib import metadata

from runner.fsutil import sha256_file
from runner.merge.config import mergekit_config
from runner.pipeline.lock import StageInputs, package_versions, read_lock
from runner.recipe.merge import MergeSource

# Stage kinds of a source recipe whose lock entries make the model it ships (their output hashes are the source's
# fingerprint: a new one means it was retrained).
MODEL_KINDS = ("sft", "dpo", "simpo", "orpo", "kto", "merge", "mergekit")

def source_fingerprint(src: MergeSource) -> dict[str, str | None]:
    """What the lock records of a source: the output hash of each stage of its lock that makes its model
    (training, merge, mergekit), keyed `<recipe>/<stage>`; None for a stage not run yet. A retrained source has a
    new hash, so the merge is stale; reading the lock costs nothing (the source's own status checks its files)."""
    entries = read_lock(src.res.layout.lock)["stages"]
    out = {}
    for st in src.res.stages:
        if st.kind in MODEL_KINDS:
            e = entries.get(st.name) or {}
            out[f"{src.name}/{st.name}"] = e.get("output_hash") if e.get("gate") != "failed" else None
    return out


def source_eval_entry(src: MergeSource) -> tuple[object | None, dict]:
    """(the source's last eval stage or None, its lock entry or {})."""
    evals = [s for s in src.res.stages if s.kind == "eval"]
    if not evals:
        return None, {}
    return evals[-1], read_lock(src.res.layout.lock)["stages"].get(evals[-1].name) or {}


def mergekit_version() -> str | None:
    try:
        return metadata.version("mergekit")
    except metadata.PackageNotFoundError:
        return None


def merge_stage_inputs(res, stage, upstream_hashes: dict):
    """StageInputs of a merge recipe's stages (runner.pipeline.decide.stage_inputs asks here).

    mergekit: the mergekit config tunebook writes (method, weights, densities, t, dtype, source folders) and each
    source's fingerprint; eval: the merge recipe's gates, each source's eval settings, held-out file and eval
    result (its score is the one the drop is measured against), and the mergekit stage's result."""
    plan, versions = res.merge, package_versions()
    if stage.kind == "mergekit":
        ups = {}
        for src in plan.sources:
            ups.update(source_fingerprint(src))
        return StageInputs(config={"mergekit": mergekit_config(plan)}, data={}, upstream=ups,
                           versions={**versions, "mergekit": mergekit_version()}, root=str(res.recipe.root))
    data, settings = {}, {}
    for src in plan.sources:
        held = src.res.layout.data_file("main", "held_out")
        data[f"{src.name}:held_out"] = sha256_file(held) if held.is_file() else None
        _, entry = source_eval_entry(src)
        data[f"{src.name}:eval"] = entry.get("output_hash")
        settings[src.name] = {"eval": src.res.data.get("eval") or {}, "system_prompt": src.res.data.get("system_prompt")}
    config = {"gates": (res.data.get("eval") or {}).get("gates") or {}, "sources": settings}
    ups = {stage.upstream: upstream_hashes.get(stage.upstream)} if stage.upstream else {}
    return StageInputs(config=json.loads(json.dumps(config, default=str)), data=data, upstream=ups,
                       versions=versions, root=str(res.recipe.root))
