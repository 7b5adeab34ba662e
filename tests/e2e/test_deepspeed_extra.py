"""The `deepspeed` extra (pyproject.toml) that `make train` installs where a stage uses DeepSpeed: it installs from
the package registry beside our torch (no other torch downloaded: --no-build-isolation, as the Makefile does) and
imports, with the launcher Axolotl's ZeRO-3 preset needs."""
from __future__ import annotations

import subprocess
import sys
import sysconfig
import tomllib

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.e2e


def test_the_deepspeed_extra_installs_beside_our_torch_and_imports(tmp_path):
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["deepspeed"]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # The new venv sees our venv's packages (torch 2.13.0 among them), so pip installs only what is missing.
    site = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / "venv" / site.split(str(venv) + "/", 1)[1] / "ours.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # ...setuptools included: the Makefile builds DeepSpeed's sdist with our venv's, not ensurepip's old one.
    subprocess.run([str(venv / "bin" / "pip"), "uninstall", "-q", "-y", "setuptools"], capture_output=True)
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-build-isolation", *extra],
                       capture_output=True, text=True, timeout=900)
    if r.returncode and ("Could not find a version" in r.stderr or "Network is unreachable" in r.stderr
                         or "Failed to establish a new connection" in r.stderr):
        pytest.skip(f"the package registry is not reachable here: {r.stderr[-300:]}")
    assert r.returncode == 0, r.stderr[-3000:]
    listed = subprocess.run([str(venv / "bin" / "pip"), "list", "--path", site], capture_output=True, text=True).stdout
    assert "deepspeed" in listed and "torch " not in listed  # our torch, not a second one
    r = subprocess.run([str(venv / "bin" / "python"), "-c",
                        "import torch, deepspeed; from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3;"
                        "print(torch.__version__, deepspeed.__version__)"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    torch_version, ds_version = r.stdout.split()[-2:]
    assert torch_version.startswith("2.13.0") and ds_version.startswith("0.18.")
