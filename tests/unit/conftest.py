"""Unit tests train nothing: Axolotl's seam ($TUNEBOOK_AXOLOTL) names tests/fakes/no_axolotl.py, which fails at
once, unless the test uses the `standin` fixture (which names the stand-in instead) or is marked e2e."""
from __future__ import annotations

import sys

import pytest

from tests.conftest import REPO


@pytest.fixture(autouse=True)
def no_real_axolotl(request, monkeypatch, tmp_path_factory):
    if request.node.get_closest_marker("e2e") is not None:
        return
    exe = tmp_path_factory.getbasetemp() / "no-axolotl" / "axolotl"
    if not exe.is_file():
        exe.parent.mkdir(parents=True, exist_ok=True)
        exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{REPO / "tests/fakes/no_axolotl.py"}" "$@"\n')
        exe.chmod(0o755)
    monkeypatch.setenv("TUNEBOOK_AXOLOTL", str(exe))
