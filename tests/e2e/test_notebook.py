"""docs/colab.ipynb, the free-GPU path, executed for real with nbclient on this CPU with the CI recipe.

The notebook clones the repository, runs `make venv`, `make validate`, `make train` and `make status`, with runs on
"persistent storage" (here a folder beside the clone, as Google Drive is on Colab). The test then does what a Colab
disconnect does: the machine's copy of the repository is gone, the persistent folder is not. Run again, the
notebook clones afresh and `make train` finds every stage done from the lock on persistent storage: nothing
retrains.

Two things are prepared instead of downloaded, as on Colab where the stack is preinstalled: the clone's `.venv`
is this checkout's (its stamp newer than the clone's pyproject.toml, so `make venv` has nothing to do, as on a
machine where it ran), and `.cache` (the converted SmolLM2) is this checkout's."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO

pytestmark = pytest.mark.e2e

NOTEBOOK = REPO / "docs" / "colab.ipynb"


def _run_notebook(params: dict, cwd) -> str:
    """Execute the notebook with `params` injected after its parameters cell (papermill's way); its text output."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items())))
    NotebookClient(nb, timeout=1500, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def _prepare_machine(workdir) -> None:
    """What `make venv` and `make model` would leave on the notebook's machine, taken from this checkout."""
    (workdir / ".venv").symlink_to(REPO / ".venv")
    (workdir / ".cache").symlink_to(REPO / ".cache")
    stamp = (REPO / ".venv" / ".installed").stat().st_mtime
    os.utime(workdir / "pyproject.toml", (stamp - 60, stamp - 60))


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    """A copy of this repository to clone from, as the notebook's REPO_URL."""
    src = tmp_path_factory.mktemp("origin") / "recipes.git"
    subprocess.run(["git", "clone", "--quiet", "--bare", str(REPO), str(src)], check=True)
    return src


def test_the_notebook_trains_and_a_new_machine_resumes_from_persistent_runs(origin, tmp_path, smollm2):
    workdir, runs = tmp_path / "content" / "tunebook", tmp_path / "drive" / "tunebook-runs"
    params = {"REPO_URL": f"file://{origin}", "RECIPE": "ci-mini", "WORKDIR": str(workdir), "RUNS_DIR": str(runs)}
    # The notebook's first cells clone; _prepare_machine must run between clone and install, so clone here the
    # way the notebook does (its clone cell then sees a repository and leaves it).
    subprocess.run(["git", "clone", "--quiet", "--depth", "1", params["REPO_URL"], str(workdir)], check=True)
    _prepare_machine(workdir)
    out = _run_notebook(params, tmp_path)
    assert f"runs kept in: {runs}" in out and "GPUs: none" in out
    assert "recipes/ci-mini.yaml: OK" in out
    lock = json.loads((runs / "ci-mini" / "tunebook.lock").read_text())
    assert set(lock["stages"]) == {"sft", "merge"} and all(v.get("finished") for v in lock["stages"].values())
    assert (runs / "ci-mini" / "merge" / "merged" / "model.safetensors").is_file()
    assert not (workdir / "runs").exists()  # nothing of the run on the machine's own disk
    trained = (runs / "ci-mini" / "sft" / "output" / "adapter_model.safetensors").stat().st_mtime

    # A disconnect: the machine and its clone are gone; the persistent folder stays.
    shutil.rmtree(workdir)
    subprocess.run(["git", "clone", "--quiet", "--depth", "1", params["REPO_URL"], str(workdir)], check=True)
    _prepare_machine(workdir)
    out = _run_notebook(params, tmp_path)
    assert "training commit" in out
    assert (runs / "ci-mini" / "sft" / "output" / "adapter_model.safetensors").stat().st_mtime == trained
    assert "nothing to do: every stage of ci-mini is up to date" in out, out[-3000:]
