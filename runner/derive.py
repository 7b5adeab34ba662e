"""Defaults derived from the data and the hardware, each with its reason (shown by `tunebook resolve`)."""
from __future__ import annotations

from . import hardware as hw
from .recipe import Recipe


def derive_defaults(rec: Recipe, preset: dict | None, h: hw.Hardware) -> tuple[dict, dict]:
    """Training settings (tunebook `training:` keys) derived for this recipe, and why each was chosen."""
    out, why = {}, {}
    return out, why
