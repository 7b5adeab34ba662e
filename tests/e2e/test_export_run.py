"""`tunebook export` of a real trained run: the session's `make train RECIPE=ci-mini` (fixture ci_mini_make_train,
shared with tests/e2e/test_train.py, so CI trains it once). The archive's layout and refusals are unit-tested on a
fabricated run folder in tests/unit/ship/test_export.py."""
from __future__ import annotations

import json
import shutil
import tarfile

import pytest

from tests.conftest import REPO, make_project, run_cli

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def ci_mini_run(tmp_path_factory, ci_mini_make_train):
    """A project with a real ci-mini run: a copy of the session's `make train RECIPE=ci-mini` run."""
    root = tmp_path_factory.mktemp("ci-mini-export")
    make_project(root)
    (root / "recipes/data").symlink_to(REPO / "recipes/data")
    shutil.copy(REPO / "recipes/ci-mini.yaml", root / "recipes/ci-mini.yaml")
    (root / ".cache").symlink_to(REPO / ".cache")
    r, runs = ci_mini_make_train
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    shutil.copytree(runs / "ci-mini", root / "runs/ci-mini",
                    ignore=shutil.ignore_patterns("prepared", "export", "checkpoint-*"))
    return root


def members(path):
    with tarfile.open(path) as t:
        return {m.name: (t.extractfile(m).read() if m.isfile() else None) for m in t.getmembers()}


@pytest.mark.parametrize("fmt", ["adapter", "merged"])
def test_real_ci_mini_run(ci_mini_run, fmt):
    r = run_cli("--root", str(ci_mini_run), "export", "ci-mini", "--format", fmt, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == f"runs/ci-mini/export/ci-mini-{fmt}.tar.gz"
    m = members(ci_mini_run / r.stdout.strip())
    top = f"ci-mini-{fmt}"
    names = {n.split("/", 1)[1] for n in m if "/" in n}
    assert {"README.md", "recipe.yaml", "tunebook.lock", "manifest.json"} <= names
    if fmt == "adapter":
        assert {"adapter_config.json", "adapter_model.safetensors"} <= names
        assert json.loads(m[f"{top}/adapter_config.json"])["r"] == 16
    else:
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not any("checkpoint-" in n for n in names)
    card = m[f"{top}/README.md"].decode()
    manifest = json.loads((ci_mini_run / "runs/ci-mini/manifest.json").read_text())
    for h in manifest["data"]["main"]["sha256"].values():
        assert h in card
    assert "transformers" in card and "ci-mini" in card
