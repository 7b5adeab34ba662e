"""A trained PiSSA adapter turned into a plain LoRA adapter on the original base model.

PiSSA (training.lora.variant: pissa) starts the adapter from the principal singular vectors of each weight and
leaves the base with the residual: W = W_res + B0·A0. The adapter Axolotl saves is relative to W_res, which is
nowhere on disk; loaded on the original base (merge-lora, the eval stage, vLLM, GGUF export) it would add B0·A0 a
second time. With the initial adapter (saved before training by runner.train.pissa_plugin) the change training
made is ΔW = B·A − B0·A0 = [B | −B0]·[A ; A0], a LoRA adapter of rank 2r on W. This is peft's own conversion
(`save_pretrained(path_initial_model_for_weight_conversion=...)`, LoraModel.subtract_mutated_init, peft 0.20),
done here on the saved files, because tunebook chooses the epoch to keep after training, from its checkpoints,
when no model is loaded any more.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from runner.errors import TunebookError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PISSA_PREFIX = "pissa"


def is_pissa(config: dict) -> bool:
    """Whether an Axolotl config trains a PiSSA adapter."""
    return str(config.get("peft_init_lora_weights") or "").lower().startswith(PISSA_PREFIX)


def trained_as_pissa(adapter_dir: Path) -> bool:
    """Whether the adapter saved in `adapter_dir` is a PiSSA adapter still to convert. Its own config decides, not
    the stage's: a stage that continues an existing adapter (a dpo stage's `from: adapter`) loads it as saved, and
    PiSSA's init never runs there."""
    p = Path(adapter_dir) / ADAPTER_CONFIG
    try:
        init = json.loads(p.read_text()).get("init_lora_weights")
    except (OSError, ValueError, AttributeError):
        return False
    return str(init).lower().startswith(PISSA_PREFIX)


def converted_config(cfg: dict) -> dict:
    """The adapter_config.json of the converted adapter: rank and alpha doubled (rsLoRA's alpha by √2, its
    scaling being alpha/√r), the patterns doubled, and no PiSSA init (loading it must not decompose W again)."""
    out = dict(cfg)
    if out.get("use_rslora") and (out.get("rank_pattern") or out.get("alpha_pattern")):
        raise TunebookError("a PiSSA adapter with rsLoRA and rank or alpha patterns cannot be converted to LoRA",
                            fix="Drop lora_rank_pattern/lora_alpha_pattern, or train without PiSSA.")
    out["r"] = int(out["r"]) * 2
    out["lora_alpha"] = out["lora_alpha"] * (math.sqrt(2) if out.get("use_rslora") else 2)
    for key in ("rank_pattern", "alpha_pattern"):
        if out.get(key):
            out[key] = {k: 2 * v for k, v in out[key].items()}
    out["init_lora_weights"] = True
    return out


def converted_tensors(trained: dict, initial: dict) -> dict:
    """[A ; A0] and [B | −B0] for every LoRA pair (the adapter's other tensors, if any, as trained)."""
    import torch

    out = {}
    for name, t in trained.items():
        if ".lora_A." in name or ".lora_B." in name:
            if name not in initial:
                raise TunebookError(f"the PiSSA initial adapter has no tensor {name}",
                                    fix="Retrain the stage (`tunebook train <recipe> --force <stage>`).")
            t0 = initial[name].to(t.dtype)
            out[name] = (torch.cat([t, t0], dim=0) if ".lora_A." in name else torch.cat([t, -t0], dim=1)).contiguous()
        else:
            out[name] = t
    return out


def convert(adapter_dir: Path, initial_dir: Path) -> int:
    """Rewrite the PiSSA adapter in `adapter_dir` as plain LoRA (weights and config, each by one rename);
    returns the new rank. Converting twice is refused: the config says the adapter is plain LoRA already."""
    from safetensors.torch import load_file, save_file

    cfg_path, w_path = adapter_dir / ADAPTER_CONFIG, adapter_dir / ADAPTER_WEIGHTS
    cfg = json.loads(cfg_path.read_text())
    if not str(cfg.get("init_lora_weights")).lower().startswith(PISSA_PREFIX):
        raise TunebookError(f"{adapter_dir} is not a PiSSA adapter (init_lora_weights "
                            f"{cfg.get('init_lora_weights')!r}); it was converted already or trained without PiSSA",
                            where=str(cfg_path))
    if not (initial_dir / ADAPTER_WEIGHTS).is_file():
        raise TunebookError(f"the PiSSA initial adapter is missing ({initial_dir})", where=str(initial_dir),
                            fix="Retrain the stage (`tunebook train <recipe> --force <stage>`): "
                                "runner.train.pissa_plugin saves it before training.")
    tensors = converted_tensors(load_file(str(w_path)), load_file(str(initial_dir / ADAPTER_WEIGHTS)))
    new_cfg = converted_config(cfg)
    tmp_w, tmp_c = w_path.with_name(w_path.name + ".tmp"), cfg_path.with_name(cfg_path.name + ".tmp")
    save_file(tensors, str(tmp_w), metadata={"format": "pt"})
    tmp_c.write_text(json.dumps(new_cfg, indent=2) + "\n")
    # Weights first: a crash between the renames leaves a rank-2r file with a PiSSA config, which peft refuses
    # to load (shape mismatch) instead of silently applying the wrong model.
    tmp_w.replace(w_path)
    tmp_c.replace(cfg_path)
    return new_cfg["r"]
