"""`tunebook export`: the archive's contents and model card, atomic writing, refusals; and once on a real tiny run
(runs/ci-mini from `tunebook train ci-mini`)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile

import pytest

from runner.errors import TunebookError
from runner.ship.export import export
from tests.conftest import REPO, make_project

RECIPE = """
    name: faq
    description: Answers FAQ questions.
    base_model: ./models/base
    data: {train: data/train.jsonl, format: alpaca, held_out: data/held.jsonl}
    stages: [sft, merge, eval]
    """


@pytest.fixture
def root(tmp_path):
    files = {"data/train.jsonl": '{"instruction": "a", "output": "b"}\n',
             "data/held.jsonl": '{"instruction": "a", "output": "b"}\n',
             "models/base/config.json": "{}"}
    root = make_project(tmp_path, {"faq": RECIPE}, files)
    run = root / "runs/faq"
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
    for rel, text in files.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text(text)
    return root


def members(path):
    with tarfile.open(path) as t:
        return {m.name: (t.extractfile(m).read() if m.isfile() else None) for m in t.getmembers()}


def test_adapter_archive(root):
    path = export("faq", root, "adapter")
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
    m = members(export("faq", root, "merged"))
    assert "faq-merged/model.safetensors" in m and "faq-merged/config.json" in m
    assert "library_name: transformers" in m["faq-merged/README.md"].decode()


def test_refusals(root):
    with pytest.raises(TunebookError, match="format"):
        export("faq", root, "gguf")
    shutil.rmtree(root / "runs/faq/merge")
    with pytest.raises(TunebookError, match="no merged model"):
        export("faq", root, "merged")
    (root / "runs/faq/sft/output/adapter_config.json").unlink()
    with pytest.raises(TunebookError, match="make train RECIPE=faq"):
        export("faq", root, "adapter")


def test_cli(root):
    r = subprocess.run([sys.executable, "-m", "runner.cli", "--root", str(root), "export", "faq", "--format",
                        "adapter"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "runs/faq/export/faq-adapter.tar.gz"


@pytest.fixture(scope="module")
def ci_mini_run(tmp_path_factory, ci_mini_make_train):
    """A project with a real ci-mini run: a copy of the session's `make train RECIPE=ci-mini` run (shared with
    the e2e test of that command, so it is trained once)."""
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


@pytest.mark.e2e
@pytest.mark.parametrize("fmt", ["adapter", "merged"])
def test_real_ci_mini_run(ci_mini_run, fmt):
    path = export("ci-mini", ci_mini_run, fmt)
    m = members(path)
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
