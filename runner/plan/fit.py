"""Will the recipe fit the GPU? The checks `tunebook validate` (and `train` on a GPU) run before anything is
downloaded or rented: every stage (each training stage, the eval stage's generation, the merge) against the GPU
it runs on, and, on a CPU, the first training stage against its preset's GPU."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runner.errors import TunebookError
from runner.plan import estimate as P
from runner.plan.target import resolve_for_gpu


def check_fits_preset(resolved) -> str | None:
    """A one-line warning when the first training stage will not fit the preset's GPU, else None.

    `resolved` is a runner.recipe.resolve.ResolvedRecipe. It was resolved for this machine (on a CPU: fp32, no
    LoRA kernels), so the recipe is resolved again for the preset's GPU. A model whose shape is unknown
    offline is no error here: validate must not fail for lack of a config.json, so it stays silent.
    """
    gpu = (resolved.preset or {}).get("gpu")
    if not gpu:
        return None
    rec = resolved.recipe
    root = Path(rec.root)
    try:
        target, stage, count = resolve_for_gpu(rec)
        shape = P.load_model_shape(str(stage.config.get("base_model") or rec.data["base_model"]), root)
    except TunebookError:
        return None
    est = P.estimate_memory(shape, P.TrainSetup.from_axolotl_config(stage.config, root, n_gpus=count))
    known = P.load_gpus().get(str(gpu.get("id")))
    memory = known.memory_gib if known else float(gpu["memory_gib"])
    v = P.verdict(est.peak_allocated_gib, memory)
    if v == "fits":
        return None
    fit = "is tight on" if v == "tight" else "does not fit"
    return (f"stage '{stage.name}' needs about {est.peak_allocated_gib:.1f} GiB per GPU: {fit} the "
            f"{gpu.get('name', gpu.get('id'))} ({memory:.0f} GiB usable); `tunebook plan {rec.name}` says what "
            "to change")


@dataclass(frozen=True)
class StageFit:
    """One stage's memory on one GPU: what it needs, the verdict (runner.plan.estimate.verdict) and the fix."""

    stage: str
    kind: str
    needs_gib: float
    memory_gib: float
    verdict: str            # fits | tight | does not fit
    detail: str
    fixes: tuple[str, ...] = ()


def stage_fits(res) -> list[StageFit]:
    """Every stage of a recipe resolved for a GPU machine (res.hardware: detected, or a --gpu profile), checked
    against one GPU's memory. Empty on a CPU or when the model's shape is unknown here (offline, not cached)."""
    from runner.evaluate.stage import eval_settings
    from runner.recipe.load import TRAIN_KINDS
    from runner.recipe.shipped import training_stages

    h = res.hardware
    if not h.cuda or not h.gpu_memory_gib:
        return []
    root = Path(res.recipe.root)
    world = max(1, h.gpu_count) * max(1, h.nodes)
    gpu = next((g for g in P.load_gpus().values() if g.name == h.gpu_name), None) or P.GPU(
        id="this", name=h.gpu_name or "GPU", memory_gib=float(h.gpu_memory_gib))
    trains = training_stages(res)
    if not trains:
        return []
    try:  # every stage has the first one's architecture (later stages train from its merged copy)
        shape = P.load_model_shape(str(trains[0].config.get("base_model")), root)
    except TunebookError:
        return []
    out: list[StageFit] = []
    for st in res.stages:
        if st.kind in TRAIN_KINDS and st.config:
            setup = P.TrainSetup.from_axolotl_config(st.config, root, n_gpus=world)
            est = P.estimate_memory(shape, setup)
            v = P.verdict(est.peak_allocated_gib, gpu.memory_gib)
            out.append(StageFit(st.name, st.kind, est.peak_allocated_gib, gpu.memory_gib, v,
                                f"training ({setup.method}, micro batch {setup.micro_batch} x {setup.seq_len} tokens)",
                                tuple(P.advice(shape, setup, gpu)) if v != "fits" else ()))
        elif st.kind == "eval":
            before = training_stages(res, before=st.index)
            if not before:
                continue
            up = before[-1]
            settings = eval_settings(res)
            setup = P.TrainSetup.from_axolotl_config(up.config, root)
            tokens = setup.seq_len + int(settings["max_new_tokens"])
            batch = int(settings["batch_size"])
            est = P.estimate_inference(shape, setup, batch, tokens)
            v = P.verdict(est.peak_allocated_gib, gpu.memory_gib)
            fixes = []
            if v != "fits":
                weights = est.breakdown["weights"] / P.GIB
                if batch > 1:
                    fixes.append(f"eval: batch_size: 1 in the recipe (the KV cache of {batch} answers is "
                                 f"{est.breakdown['kv_cache'] / P.GIB:.1f} GiB)")
                if setup.method != "qlora":
                    fixes.append("the qlora preset: its eval loads the weights in 4 bits as it trained them")
                bigger = next((g for g in P.load_gpus().values() if g.memory_gib > gpu.memory_gib
                               and P.verdict(est.peak_allocated_gib, g.memory_gib) == "fits"), None)
                fixes.append(f"a bigger GPU: {bigger.name} ({bigger.memory_gib:.0f} GiB)" if bigger else
                             f"a smaller model ({weights:.1f} GiB of weights alone)")
            out.append(StageFit(st.name, st.kind, est.peak_allocated_gib, gpu.memory_gib, v,
                                f"generation on one GPU ({est.notes[0]})", tuple(fixes)))
        elif st.kind == "merge":
            # Axolotl's merge-lora (memory-efficient, the default) merges shard by shard on the CPU.
            out.append(StageFit(st.name, st.kind, 0.0, gpu.memory_gib, "fits",
                                "merge-lora works shard by shard on the CPU: no GPU memory, about two shards of RAM"))
    return out


def refuse_unfit(res) -> list[str]:
    """Raise a TunebookError naming the first stage that does not fit, its memory and the fixes; return a
    warning line for each stage that is tight."""
    fits = stage_fits(res)
    bad = next((f for f in fits if f.verdict == "does not fit"), None)
    if bad:
        h = res.hardware
        raise TunebookError(
            f"stage '{bad.stage}' ({bad.kind}) needs about {bad.needs_gib:.1f} GiB per GPU for {bad.detail}, "
            f"more than the {h.gpu_name} has ({bad.memory_gib:.1f} GiB usable); nothing was downloaded or started",
            where=str(res.recipe.path),
            fix=(("Each step on top of the one before, until it fits: " + "; then ".join(bad.fixes) + ".")
                 if bad.kind != "eval" else "; or ".join(bad.fixes) + ".") if bad.fixes
            else f"`tunebook plan {res.recipe.name}` says what to change.")
    return [f"stage '{f.stage}' needs about {f.needs_gib:.1f} GiB of {f.memory_gib:.1f} GiB: tight "
            f"({'; '.join(f.fixes[:1]) or 'it may run out of memory'})" for f in fits if f.verdict == "tight"]
