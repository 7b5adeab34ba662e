"""The hardware matrix, checked on this CPU: every shipped recipe x every shipped preset (and none) x GPU profiles
(recipes/presets/gpus.yaml: T4 sm75, L4 sm89, A10G sm86, A100 40/80 sm80, H100 sm90, H200 sm90) x 1, 2 and 8 GPUs
(and 2 nodes for the multi-GPU preset), with the recipe's own SmolLM2 and with the 7B model our users train.

For each: the resolved config of every training stage passes Axolotl's own validation *with that GPU's
capabilities* (bf16, tf32, fp8, compute capability, GPU count), and every stage (train, eval, merge) either fits
the GPU or tunebook refuses before anything is downloaded or rented, naming the stage, the memory and the fix.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from runner.errors import TunebookError
from runner.plan import estimate as P
from runner.plan.fit import refuse_unfit, stage_fits
from runner.plan.target import target_hardware
from runner.recipe.load import known_presets, load_recipe
from runner.recipe.resolve import resolve
from runner.train.config_check import check_resolved

REPO = Path(__file__).resolve().parents[3]
RECIPES = sorted(p.stem for p in (REPO / "recipes").glob("*.yaml"))
PRESETS = [None, *known_presets(REPO)]
PROFILES = ["t4", "l4", "a10g", "a100-40", "a100-80", "h100", "h200"]
SEVEN_B = "mistralai/Mistral-7B-Instruct-v0.3"


def _machines(preset):
    counts = [(1, 1), (2, 1), (8, 1)] + ([(8, 2)] if preset == "full-ft-multigpu" else [])
    return [(g, n, nodes) for g in PROFILES for n, nodes in counts]


def _variant(rec, preset, model):
    data = {k: v for k, v in rec.data.items() if k != "preset"}
    if preset:
        data["preset"] = preset
    if model:
        data["base_model"] = model
    return dataclasses.replace(rec, data=data)


def test_the_matrix_covers_what_the_issue_names():
    assert {"ci-mini", "hr-bot", "support-bot", "support-faq"} <= set(RECIPES)
    assert {"qlora-t4", "lora-a100", "lora-h100", "qlora-h100", "full-ft-multigpu"} <= set(PRESETS)
    gpus = P.load_gpus()
    assert {g: gpus[g].compute_capability for g in PROFILES} == {
        "t4": "7.5", "l4": "8.9", "a10g": "8.6", "a100-40": "8.0", "a100-80": "8.0", "h100": "9.0", "h200": "9.0"}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p or "no-preset")
@pytest.mark.parametrize("recipe", RECIPES)
def test_every_combination_validates_for_its_gpu_and_fits_or_is_refused(recipe, preset):
    rec = load_recipe(recipe, REPO)
    seen = []
    for model in (None, SEVEN_B):
        variant = _variant(rec, preset, model)
        for gpu, n, nodes in _machines(preset):
            h = target_hardware(P.gpu_by_id(gpu), n, nodes)
            res = resolve(variant, h)
            where = f"{recipe} preset={preset} model={model or 'recipe'} {n}x{gpu} nodes={nodes}"
            assert check_resolved(res) == [], where
            for st in res.stages:
                if st.config and not h.bf16:  # a T4: fp16, no tf32, whatever the preset asked for
                    assert not st.config.get("bf16") and st.config.get("tf32") is not True, where
            fits = stage_fits(res)
            assert [f.stage for f in fits] == [s.name for s in res.stages], where  # every stage planned
            try:
                refuse_unfit(res)
                assert all(f.verdict != "does not fit" for f in fits), where
                seen.append((model, gpu, n, nodes, "fits"))
            except TunebookError as exc:
                bad = next(f for f in fits if f.verdict == "does not fit")
                text = f"{exc.what} {exc.fix}"
                assert f"stage '{bad.stage}'" in text and "GiB" in text and h.gpu_name in text, where
                assert "nothing was downloaded" in text and exc.fix, where
                seen.append((model, gpu, n, nodes, bad.stage))
    # The shipped recipes' own model (135M) fits every GPU, every stage.
    assert all(v == "fits" for m, *_, v in seen if m is None), seen


def _verdict(recipe, preset, gpu, n=1, nodes=1, model=SEVEN_B):
    res = resolve(_variant(load_recipe(recipe, REPO), preset, model), target_hardware(P.gpu_by_id(gpu), n, nodes))
    try:
        refuse_unfit(res)
        return "fits", ""
    except TunebookError as exc:
        return "refused", f"{exc.what} {exc.fix}"


def test_refusals_a_user_would_agree_with():
    # The T4 path our users start on: 7B in 4 bits trains, evaluates (in 4 bits) and merges on 16 GB.
    assert _verdict("hr-bot", "qlora-t4", "t4")[0] == "fits"
    # 16-bit LoRA of a 7B on a T4: refused at training, with the qlora preset named as the fix.
    v, text = _verdict("support-bot", "lora-a100", "t4")
    assert v == "refused" and "stage 'sft'" in text and "qlora" in text
    # A full fine-tune of a 7B needs its ZeRO-3 shards spread over 8 A100s; one is refused, eight fit.
    v, text = _verdict("hr-bot", "full-ft-multigpu", "a100-80", 1)
    assert v == "refused" and "stage 'sft'" in text
    assert _verdict("hr-bot", "full-ft-multigpu", "a100-80", 8)[0] == "fits"
    assert _verdict("hr-bot", "full-ft-multigpu", "h100", 8, 2)[0] == "fits"


def test_eval_stage_is_planned_in_the_bits_it_trained_in():
    """qlora-t4 trains a 7B in 4 bits; its eval loads 4-bit weights too (a 16-bit 7B is ~14.5 GiB: not a T4)."""
    res = resolve(_variant(load_recipe("hr-bot", REPO), "qlora-t4", SEVEN_B), target_hardware(P.gpu_by_id("t4"), 1))
    ev = next(f for f in stage_fits(res) if f.kind == "eval")
    assert ev.verdict == "fits" and ev.needs_gib < 8 and "NF4" in ev.detail
    res16 = resolve(_variant(load_recipe("hr-bot", REPO), "lora-a100", SEVEN_B), target_hardware(P.gpu_by_id("t4"), 1))
    ev16 = next(f for f in stage_fits(res16) if f.kind == "eval")
    assert ev16.verdict == "does not fit" and ev16.needs_gib > 14
    assert any("qlora" in f for f in ev16.fixes)
