"""`make train RECIPE=ci-mini` (the README's command; session fixture ci_mini_make_train, trained once) and
`tunebook export` of that real trained run. One file, so that `pytest -n 2 --dist loadfile` keeps every user of
the run on one worker. The archive's layout and refusals are unit-tested on a
fabricated run folder in tests/unit/ship/test_export.py."""
from __future__ import annotations

import json
import shutil
import tarfile

import pytest
import yaml

from tests.conftest import REPO, generate_reply, make_project, run_cli

pytestmark = pytest.mark.e2e


def test_make_train_ci_recipe(ci_mini_make_train):
    r, runs = ci_mini_make_train
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "recipes/ci-mini.yaml: OK" in r.stdout
    assert "merge: merged model at" in r.stdout
    run = runs / "ci-mini"
    adapter = run / "sft" / "output"
    assert (adapter / "adapter_model.safetensors").stat().st_size > 100_000
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["r"] == 16 and cfg["peft_type"] == "LORA"
    m = json.loads((run / "manifest.json").read_text())["stages"]["sft"]["metrics"]
    assert m["train_loss_last"] < m["train_loss_first"], m
    # The log Axolotl wrote is kept beside the config tunebook resolved for it.
    assert (run / "sft" / "train.log").stat().st_size > 0
    assert yaml.safe_load((run / "sft" / "axolotl.yaml").read_text())["adapter"] == "lora"
    merged = run / "merge" / "merged"
    # The merged model carries the chat template it was trained with (no injected system prompt).
    assert "SmolLM" not in (merged / "chat_template.jinja").read_text()
    assert len(generate_reply(merged).strip()) > 0


@pytest.fixture(scope="module")
def ci_mini_run(tmp_path_factory, ci_mini_make_train):
    """A project with a real ci-mini run: a copy of the session's `make train RECIPE=ci-mini` run."""
    root = tmp_path_factory.mktemp("ci-mini-export")
    make_project(root)
    # A copy, not a symlink: data files must lie inside the project (a symlink out of it is refused).
    shutil.copytree(REPO / "recipes/data/ci-mini", root / "recipes/data/ci-mini")
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
