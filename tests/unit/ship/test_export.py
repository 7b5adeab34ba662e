"""`tunebook export`: the archive's contents and model card, atomic writing, refusals, on a fabricated run folder.
The export of a real trained run (ci-mini) is in tests/e2e/test_export_run.py."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile

import pytest

from runner.errors import TunebookError
from runner.recipe.load import load_recipe
from runner.recipe.resolve import resolve
from runner.ship.export import export
from tests.conftest import REPO
from tests.unit.ship.conftest import faq_project


def resolved(name, root):
    """The recipe as `tunebook export` resolves it."""
    return resolve(load_recipe(name, root), template_check=False)


@pytest.fixture
def root(tmp_path):
    files = {
        "sft/output/adapter_config.json": '{"r": 16}', "sft/output/adapter_model.safetensors": "weights",
        "sft/output/README.md": "peft's own card", "sft/output/debug.log": "noise",
        "sft/output/checkpoint-2/adapter_model.safetensors": "old", "merge/merged/config.json": "{}",
        "merge/merged/model.safetensors": "merged-weights", "merge/merged/tokenizer.json": "{}",
        "eval/metrics.json": json.dumps({"contains": 0.875, "f1": 0.61, "per_row": [1, 0]}),
        "tunebook.lock": json.dumps({"version": 1, "stages": {"sft": {"finished": "2026-11-23T10:00:00+00:00"}}}),
        "manifest.json": json.dumps({
            "recipe": "faq", "recipe_file": "recipes/faq.yaml", "recipe_sha256": "ab12",
            "git": {"commit": "0123456789abcdef", "dirty": False},
            "versions": {"tunebook": "0.1.0", "axolotl": "0.19.0", "torch": "2.13.0"},
            "hardware": {"gpu_name": "NVIDIA H100", "gpu_count": 1},
            "data": {"main": {"format": "alpaca", "counts": {"train": 1, "held_out": 1},
                              "sha256": {"train": "c0ffee" * 10, "held_out": "beef" * 16}}},
            "stages": {"sft": {"kind": "sft", "metrics": {"train_loss_last": 1.23}}}})}
    return faq_project(tmp_path, files)


def members(path):
    with tarfile.open(path) as t:
        return {m.name: (t.extractfile(m).read() if m.isfile() else None) for m in t.getmembers()}


def test_adapter_archive(root):
    path = export(resolved("faq", root), "adapter")
    assert path == root / "runs/faq/export/faq-adapter.tar.gz"
    m = members(path)
    assert sorted(m) == ["faq-adapter/README.md", "faq-adapter/adapter_config.json",
                         "faq-adapter/adapter_model.safetensors", "faq-adapter/manifest.json",
                         "faq-adapter/recipe.yaml", "faq-adapter/tunebook.lock"]
    assert m["faq-adapter/recipe.yaml"] == (root / "recipes/faq.yaml").read_bytes()
    card = m["faq-adapter/README.md"].decode()
    assert card.startswith("---\n") and "library_name: peft" in card
    assert "c0ffee" * 10 in card and "beef" * 16 in card           # data hashes
    assert "| contains | 0.875 |" in card and "| f1 | 0.61 |" in card  # eval results
    assert "axolotl: 0.19.0" in card and "0123456789abcdef" in card  # versions, commit
    assert "Answers FAQ questions." in card
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_merged_archive(root):
    m = members(export(resolved("faq", root), "merged"))
    assert "faq-merged/model.safetensors" in m and "faq-merged/config.json" in m
    assert "library_name: transformers" in m["faq-merged/README.md"].decode()


def test_refusals(root):
    with pytest.raises(TunebookError, match="format"):
        export(resolved("faq", root), "gguf")
    shutil.rmtree(root / "runs/faq/merge")
    with pytest.raises(TunebookError, match="no merged model"):
        export(resolved("faq", root), "merged")
    (root / "runs/faq/sft/output/adapter_config.json").unlink()
    with pytest.raises(TunebookError, match="make train RECIPE=faq"):
        export(resolved("faq", root), "adapter")


def test_cli(root):
    r = subprocess.run([sys.executable, "-m", "runner.cli", "--root", str(root), "export", "faq", "--format",
                        "adapter"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "runs/faq/export/faq-adapter.tar.gz"


def test_export_and_serve_refuse_after_failed_gate(tmp_path):
    import json as _json

    import pytest as _pytest

    from runner.errors import TunebookError
    from runner.pipeline.lock import refuse_if_gate_failed

    run = tmp_path / "runs" / "x"
    run.mkdir(parents=True)
    (run / "tunebook.lock").write_text(_json.dumps({"stages": {"eval": {
        "gate": "failed", "failed_gates": ["held-out contains = 0.267, needs >= 0.8"]}}}))
    with _pytest.raises(TunebookError) as exc:
        refuse_if_gate_failed(run, "x", "export")
    assert "refusing to export x" in str(exc.value) and "contains = 0.267" in str(exc.value)
    (run / "tunebook.lock").write_text(_json.dumps({"stages": {"eval": {"output_hash": "abc"}}}))
    refuse_if_gate_failed(run, "x", "serve")  # passes: no failed gate
