"""SkyPilot's own parser and feature checks (sky.Task.from_yaml_config + each cloud's check_features_are_supported,
in the .venv-launch venv: `make launch-venv`) on the task `tunebook launch` generates for every shipped recipe and
a multi-GPU-preset recipe, on RunPod, Lambda and AWS, on one and two nodes, on-demand and spot. One validator
process answers for all of them. Nothing here reaches a cloud: `sky launch --dryrun` needs SkyPilot's price
catalog from the internet (see the README, "Launch it")."""
from __future__ import annotations

import itertools
import shutil

import pytest
import yaml

from runner.errors import TunebookError
from runner.recipe.load import load_recipe
from runner.ship import launch as L
from runner.ship import skypilot
from tests.conftest import REPO, make_project, tunebook

pytestmark = pytest.mark.e2e

if not (skypilot.venv(REPO) / "bin" / "python").exists():
    pytest.skip("SkyPilot's venv is missing: make launch-venv", allow_module_level=True)

SHIPPED = sorted(p.stem for p in (REPO / "recipes").glob("*.yaml"))
CLOUDS = ("runpod", "lambda", "aws")
IMAGE = "ghcr.io/example/tunebook:abc123def456"
CANARY = {"HF_TOKEN": "hf_CANARY_e2e_7f3a91", "WANDB_API_KEY": "wandb_CANARY_e2e_c0ffee"}
MULTI = """
    name: multi
    base_model: .cache/models/smollm2-135m-instruct
    preset: full-ft-multigpu
    data: {train: recipes/data/hr-bot/train.jsonl, format: alpaca}
    stages: [sft, merge]
    """


def expected_rejection(cloud: str, nodes: int, spot: bool) -> str | None:
    """What SkyPilot itself refuses (its clouds' unsupported features): RunPod has no multi-node and no bucket
    mounts (spot needs the bucket), Lambda has no spot."""
    if spot and nodes > 1:
        return "--spot with --nodes > 1"  # tunebook's own refusal, before SkyPilot
    if cloud == "runpod" and nodes > 1:
        return "Multi-node"
    if cloud == "runpod" and spot:
        return "Mounting object stores is not supported on RunPod"
    if cloud == "lambda" and spot:
        return "Spot instances are not supported"
    return None


@pytest.fixture(scope="module")
def multi_project(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("multi"), recipes={"multi": MULTI})
    (root / "recipes/data").mkdir(exist_ok=True)
    shutil.copytree(REPO / "recipes/data/hr-bot", root / "recipes/data/hr-bot")
    models = root / ".cache"
    models.mkdir(exist_ok=True)
    (models / "models").symlink_to(REPO / ".cache/models")
    return root


@pytest.fixture(scope="module")
def matrix(tmp_path_factory, multi_project):
    """(case, task dict, SkyPilot's verdict) for every recipe x cloud x nodes x spot, validated in one process."""
    out = tmp_path_factory.mktemp("tasks")
    recipes = [load_recipe(name, REPO) for name in SHIPPED] + [load_recipe("multi", multi_project)]
    cases, paths = [], []
    for rec, cloud, spot in itertools.product(recipes, CLOUDS, (False, True)):
        for nodes in (1, 2) if rec.name == "multi" else (1,):
            opts = L.LaunchOptions(cloud, gpu=None if rec.data.get("preset") else "a100-80", nodes=nodes, spot=spot,
                                   bucket="s3://tunebook-test/runs" if spot else None, image=IMAGE)
            try:
                image = L.check_options(opts)
            except TunebookError as exc:
                cases.append(((rec, cloud, nodes, spot), None, None, {"ok": False, "error": exc.what}))
                continue
            tgt = L.target(rec, opts)
            secrets = L.secret_names(opts, CANARY)
            task = L.build_task(rec, opts, tgt, "abc123def456", image, secrets, environ=CANARY)
            path = out / f"{rec.name}-{cloud}-{nodes}-{'spot' if spot else 'od'}.yaml"
            path.write_text(L.task_yaml(task, rec, tgt, "launch task.yaml"))
            cases.append(((rec, cloud, nodes, spot), task, path, None))
            paths.append(path)
    verdicts = iter(skypilot.validate(REPO, paths))
    return [(case, task, path, v or next(verdicts)) for case, task, path, v in cases]


def test_every_recipe_cloud_nodes_and_spot_setting(matrix):
    assert len(matrix) == (len(SHIPPED) + 2) * len(CLOUDS) * 2
    accepted = 0
    for (rec, cloud, nodes, spot), task, path, v in matrix:
        reject = expected_rejection(cloud, nodes, spot)
        if reject:
            assert not v["ok"] and reject in v["error"], (rec.name, cloud, nodes, spot, v)
            continue
        accepted += 1
        assert v["ok"], (path.name, v.get("error"))
        gpu = (L.load_preset(rec.data["preset"], rec.root)["gpu"] if rec.data.get("preset") else
               {"id": "a100-80", "count": 1})
        assert v["accelerators"] == {L.SKY_GPUS[gpu["id"]]: int(gpu.get("count", 1))}, path.name
        assert v["cloud"] == cloud and v["num_nodes"] == nodes and v["use_spot"] == spot
        assert v["image"] == IMAGE
        assert {"RECIPE", "TUNEBOOK_COMMIT", "TUNEBOOK_RUN_NAME"} <= set(v["envs"])
        assert v["secrets"] == ["HF_TOKEN", "WANDB_API_KEY"] and v["inline_secrets"] == []  # names, no values
        assert f"make train RECIPE={rec.path.stem}" in v["run"]
        if nodes > 1:
            assert "SKYPILOT_NODE_RANK" in v["run"] and "SKYPILOT_NODE_IPS" in v["run"]
        if spot:
            assert v["storage_mounts"] == [f"{L.REMOTE_RUNS}/{rec.name}"]
        text = path.read_text()
        assert "--down" in text and not any(c in text for c in CANARY.values())
    assert accepted >= len(SHIPPED) * 4  # every recipe on RunPod/Lambda/AWS on-demand, and AWS spot


def test_skypilot_rejects_an_unknown_resources_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"resources": {"accelerators": "A100-80GB:1", "acelerators": "x"}, "run": "true"}))
    v = skypilot.validate(REPO, [bad])[0]
    assert not v["ok"] and "InvalidSkyPilotConfigError" in v["error"] and "acelerators" in v["error"]


def test_cli_dry_run_writes_a_task_skypilot_accepts_and_no_secret(tmp_path, multi_project):
    env = {**CANARY, "TUNEBOOK_RUNS": str(tmp_path / "runs"), "TUNEBOOK_SKY_VENV": str(skypilot.venv(REPO))}
    r = tunebook("--root", str(multi_project), "launch", "multi", "--cloud", "lambda", "--nodes", "2", "--image",
                 IMAGE, "--dry-run", env=env)
    assert r.returncode == 0, r.stderr
    assert "accepted by SkyPilot" in r.stdout and "2 node(s) x 8 x A100-80GB on lambda" in r.stdout
    assert "sky launch -y -c tb-multi --down -i 15 --secret HF_TOKEN --secret WANDB_API_KEY" in r.stdout
    text = (tmp_path / "runs/multi/launch/task.yaml").read_text()
    assert yaml.safe_load(text)["secrets"] == {"HF_TOKEN": None, "WANDB_API_KEY": None}
    for value in CANARY.values():
        assert value not in r.stdout + r.stderr + text


def test_cli_refuses_what_skypilot_refuses(tmp_path, multi_project):
    r = tunebook("--root", str(multi_project), "launch", "multi", "--cloud", "runpod", "--nodes", "2", "--dry-run",
                 env={"TUNEBOOK_RUNS": str(tmp_path / "runs"), "TUNEBOOK_SKY_VENV": str(skypilot.venv(REPO))})
    assert r.returncode == 2 and "SkyPilot rejects the task" in r.stderr and "Multi-node" in r.stderr
