"""A hub model id for real, without the internet: a Hugging Face Hub server on loopback (tests/hubserver.py)
serves the local SmolLM2 as HuggingFaceTB/SmolLM2-135M-Instruct, HF_ENDPOINT points at it, and `make train`
trains a recipe whose base_model is that id: downloaded once into the Hugging Face cache, trained, evaluated
and merged; a second run uses the cache; offline with a cache works, offline without one fails clearly; a gated
or missing repo fails before training; the token never reaches a log, the lock, the manifest, the report or an
exported archive."""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile

import pytest

from tests.conftest import REPO, SMOLLM2, cpu_lock, make_project
from tests.hubserver import HubServer

pytestmark = pytest.mark.e2e
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
TOKEN = "hf_tunebookTestToken0123456789abcdef"
RECIPE = """\
name: {name}
base_model: {model}
data:
  train: data/train.jsonl
  format: alpaca
  held_out: data/held_out.jsonl
training: {{max_steps: 3, learning_rate: 1.0e-3, micro_batch_size: 4, sequence_len: 128}}
stages: [sft, eval, merge]
eval: {{metrics: [contains], max_new_tokens: 16}}
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with HubServer(tmp_path_factory.mktemp("hub")) as server:
        server.add_token(TOKEN, "alice", "read")
        server.serve_folder(HUB_ID, SMOLLM2)
        server.serve_folder("acme/gated-model", SMOLLM2, gated=True)
        yield server


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("hubproj")
    data = (REPO / "recipes" / "data" / "ci-mini")
    make_project(root, {"hub-mini": RECIPE.format(name="hub-mini", model=HUB_ID),
                        "gated": RECIPE.format(name="gated", model="acme/gated-model"),
                        "missing": RECIPE.format(name="missing", model="acme/no-such-model")},
                 {"data/train.jsonl": (data / "train.jsonl").read_text(),
                  "data/held_out.jsonl": (data / "held_out.jsonl").read_text()})
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    return root


def env(hub, hf_home, offline=False, token=TOKEN):
    e = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN")}
    e.update(HF_ENDPOINT=hub.url, HF_HOME=str(hf_home), HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1")
    if token:
        e["HF_TOKEN"] = token
    if offline:
        e["HF_HUB_OFFLINE"] = "1"
    return e


def tb(project, e, *args, timeout=1800):
    cmd = [sys.executable, "-m", "runner.cli", "--root", str(project), *args]
    return subprocess.run(cmd, cwd=project, env=e, capture_output=True, text=True, timeout=timeout)


def downloads(hub) -> list[str]:
    return [r.path for r in hub.requests if r.method == "GET" and ("/resolve/" in r.path or "/lfs-objects/" in r.path)]


@pytest.fixture(scope="module")
def first_run(hub, project, tmp_path_factory):
    hf_home = tmp_path_factory.mktemp("hf-home")
    cmd = [*cpu_lock(), "make", "-C", str(REPO), "train", "RECIPE=hub-mini"]
    e = {**env(hub, hf_home), "TUNEBOOK_ROOT": str(project)}
    r = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=1800)
    return r, hf_home, len(downloads(hub))


def test_make_train_downloads_the_hub_model_once_then_trains_evaluates_and_merges(first_run, project, hub):
    r, hf_home, n_downloads = first_run
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    out = r.stdout + r.stderr
    assert f"downloading {HUB_ID} from {hub.url} into the Hugging Face cache" in out
    snap = next((hf_home / "hub" / "models--HuggingFaceTB--SmolLM2-135M-Instruct" / "snapshots").iterdir())
    assert (snap / "model.safetensors").is_file() and (snap / "tokenizer.json").is_file()
    assert n_downloads >= 3 and any(p.endswith("model.safetensors") or "/lfs-objects/" in p for p in downloads(hub))
    run = project / "runs" / "hub-mini"
    assert (run / "sft" / "output" / "adapter_config.json").is_file()
    assert (run / "eval" / "metrics.json").is_file() and (run / "merge" / "merged" / "config.json").is_file()
    assert not hub.leaks


def test_a_second_run_uses_the_cache(first_run, project, hub):
    _, hf_home, n_downloads = first_run
    before = len(downloads(hub))
    r = tb(project, env(hub, hf_home), "train", "hub-mini")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "nothing to do" in r.stdout + r.stderr and "downloading" not in r.stdout + r.stderr
    assert len(downloads(hub)) == before


def test_offline_with_the_cache_evaluates_without_a_request(first_run, project, hub):
    _, hf_home, _ = first_run
    before = len(hub.requests)
    r = tb(project, env(hub, hf_home, offline=True), "train", "hub-mini", "--force", "eval")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "eval" in r.stdout and len(hub.requests) == before


def test_offline_without_a_cache_fails_clearly_before_training(hub, project, tmp_path):
    r = tb(project, env(hub, tmp_path / "empty-hf", offline=True), "train", "missing")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "not in the Hugging Face cache and HF_HUB_OFFLINE=1" in r.stderr and "Unset HF_HUB_OFFLINE" in r.stderr
    assert not (project / "runs" / "missing" / "sft").exists()


@pytest.mark.parametrize("recipe,token,message", [
    ("gated", None, "is gated"),                     # 401 without a token
    ("gated", TOKEN, "is gated"),                    # 403: alice was never granted access
    ("missing", TOKEN, "was not found on"),          # 404
])
def test_gated_or_missing_repo_fails_before_training_with_the_page_and_hf_token(hub, project, tmp_path, recipe,
                                                                                  token, message):
    r = tb(project, env(hub, tmp_path / "hf", token=token), "train", recipe)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    repo = "acme/gated-model" if recipe == "gated" else "acme/no-such-model"
    assert message in r.stderr and f"{hub.url}/{repo}" in r.stderr and "HF_TOKEN" in r.stderr
    assert f"recipes/{recipe}.yaml:2" in r.stderr  # where: the base_model line
    assert not (project / "runs" / recipe / "sft").exists()
    assert TOKEN not in r.stdout + r.stderr


def test_the_token_is_in_no_log_lock_manifest_report_or_archive(first_run, project, hub):
    r, _, _ = first_run
    assert TOKEN not in r.stdout + r.stderr
    run = project / "runs" / "hub-mini"
    for p in run.rglob("*"):
        if p.is_file() and p.stat().st_size < 50_000_000:
            assert TOKEN.encode() not in p.read_bytes(), p
    ex = tb(project, env(hub, first_run[1], offline=True), "export", "hub-mini", "--format", "adapter")
    assert ex.returncode == 0, ex.stderr[-2000:]
    with tarfile.open(project / ex.stdout.strip().splitlines()[-1]) as tar:
        for m in tar.getmembers():
            if m.isfile():
                assert TOKEN.encode() not in tar.extractfile(m).read(), m.name
    assert not hub.leaks
