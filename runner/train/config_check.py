"""Check resolved stage configs with Axolotl's own pydantic schema before anything runs."""
from __future__ import annotations

import copy
import io
import logging
from contextlib import redirect_stderr, redirect_stdout


def _loc(err) -> str:
    return ".".join(str(p) for p in err.get("loc", ()) if p not in ("function-after", "function-before"))


def env_capabilities() -> dict:
    """Axolotl's EnvCapabilities of this environment (the torch version without its +local part)."""
    import torch

    return {"torch_version": str(torch.__version__).split("+", maxsplit=1)[0]}


def own_plugin_problems(cfg: dict) -> tuple[dict, list[str]]:
    """(the config without tunebook's own Axolotl plugins, the problems of their keys).

    Axolotl checks a plugin's keys only once the plugin is registered (`axolotl train` registers it before it
    validates), and with a plugin registered every validation rebuilds Axolotl's config model with the plugin's
    fields: ~70 ms a call, against ~1 ms without, for the thousands of configs of the hardware matrix. So the
    plugin's keys are checked here against the plugin's own model (the one Axolotl merges in), and Axolotl checks
    the rest. Unregistered, Axolotl would also let a typo in them pass without a word."""
    from runner.early_stopping import AXOLOTL_PLUGIN, CONFIG_KEY, without_rule
    from runner.recipe.resolve import PISSA_PLUGIN, SEED_PLUGIN

    keyless = (SEED_PLUGIN, PISSA_PLUGIN)  # no keys of their own: they read Axolotl's `seed` and PiSSA keys
    if any(p in keyless for p in cfg.get("plugins") or []):
        plugins = [p for p in cfg["plugins"] if p not in keyless]
        cfg = {k: v for k, v in cfg.items() if k != "plugins"} | ({"plugins": plugins} if plugins else {})
    if AXOLOTL_PLUGIN not in (cfg.get("plugins") or []) and CONFIG_KEY not in cfg:
        return cfg, []
    from pydantic import ValidationError

    from runner.train.early_stop_plugin import EarlyStoppingArgs

    rest = without_rule(cfg)
    try:
        EarlyStoppingArgs.model_validate({CONFIG_KEY: cfg.get(CONFIG_KEY)})
    except ValidationError as exc:
        return rest, [f"{_loc(e)}: {e.get('msg', '').removeprefix('Value error, ')}" for e in exc.errors()]
    return rest, []


def check_config(cfg: dict, hardware=None) -> list[str]:
    """Problems Axolotl finds in one config, as readable lines ('key: message'); empty when valid.

    With a GPU `hardware` (runner.hardware.Hardware: this machine, or a profile from recipes/presets/gpus.yaml)
    Axolotl validates with that GPU's capabilities, as `axolotl train` does on the machine itself: its bf16,
    tf32, fp8, compute-capability and multi-GPU checks run. Without one (a CPU), those checks do not exist."""
    from pydantic import ValidationError

    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    logging.getLogger("axolotl").setLevel(logging.ERROR)
    cfg, own = own_plugin_problems(cfg)
    if own:
        return own
    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            if hardware is not None and hardware.cuda:
                validate_config(DictDefault(copy.deepcopy(cfg)), capabilities=hardware.axolotl_capabilities(),
                                env_capabilities=env_capabilities())
            else:
                validate_config(DictDefault(copy.deepcopy(cfg)))
    except ValidationError as exc:
        out = []
        for e in exc.errors():
            loc = _loc(e)
            msg = e.get("msg", "").removeprefix("Value error, ")
            if e.get("type") == "extra_forbidden":
                msg = "unknown Axolotl key"
            out.append(f"{loc}: {msg}" if loc else msg)
        return out
    except (ValueError, TypeError, KeyError) as exc:
        return [str(exc)]
    return []


def check_resolved(res) -> list[tuple[str, str]]:
    """(stage, problem) for every training stage of a resolved recipe."""
    import importlib.util

    if importlib.util.find_spec("axolotl") is None:
        # A light install (e.g. the image-build test, a laptop planning runs) has no Axolotl.
        res.notes.append("Axolotl is not installed here: its own config checks were skipped "
                         "(they run where the recipe trains)")
        return []
    problems = []
    for st in res.stages:
        if st.config and st.kind != "merge":
            problems += [(st.name, p) for p in check_config(st.config, res.hardware)]
    return problems
