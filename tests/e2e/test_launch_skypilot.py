"""SkyPilot's own parser and feature checks (sky.Task.from_yaml_config + each cloud's check_features_are_supported,
in the .venv-launch venv: `make launch-venv`) on the task `tunebook launch` generates for every shipped recipe and
a multi-GPU-preset recipe, on RunPod, Lambda and AWS, on one and two nodes, on-demand and spot. One validator
process answers for all of them. Then `sky launch --dryrun` itself, offline, on the tasks the CLI writes: a temporary
HOME holds a small price catalog (tests/fixtures/skypilot) and SkyPilot's cached `sky check` verdict, so its
optimizer picks a machine and prints its plan; the local API server it starts is stopped. Nothing reaches a cloud."""
from __future__ import annotations

import itertools
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from runner.errors import TunebookError
from runner.recipe.load import load_recipe
from runner.recipe.presets import load_preset
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
        gpu = (load_preset(rec.data["preset"], rec.root)["gpu"] if rec.data.get("preset") else
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
            assert v["storage_mounts"] == [L.REMOTE_BUCKET]
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


# --- `sky launch --dryrun`, offline ---------------------------------------------------------------------------------
# SkyPilot reads prices from ~/.sky/catalogs/v8/<cloud>/*.csv (sky/catalog/common.py read_catalog) and downloads a
# file only when it is missing, or stale and unmodified; a file without the .meta/<file>.md5 of a download counts as
# modified by the user, so the fixture catalogs are never replaced. Which clouds the optimizer may use is the cached
# verdict of `sky check` in ~/.sky/state.db; `sky check` itself calls each cloud's API, so it is seeded through
# SkyPilot's own global_user_state, after the API server's on-boot check (which would reset it) has finished.
CATALOG = REPO / "tests/fixtures/skypilot"
_SEED = r"""
from sky import check, clouds, global_user_state, skypilot_config
from sky.client import sdk
from sky.server import constants
sdk.api_start()
sdk.get(constants.ON_BOOT_CHECK_REQUEST_ID)
ws = skypilot_config.get_active_workspace()
global_user_state.set_allowed_clouds(check._get_workspace_allowed_clouds(ws), ws)
global_user_state.set_enabled_clouds(["RunPod", "Lambda", "AWS"], clouds.CloudCapability.COMPUTE, ws)
print(global_user_state.get_cached_enabled_clouds(clouds.CloudCapability.COMPUTE, ws))
"""
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sky(env: dict, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(skypilot.command(REPO, *args), cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def sky_env(tmp_path_factory):
    """The environment of an offline SkyPilot: its own HOME (fixture catalogs, allowed clouds, seeded `sky check`)
    and API server port, so it meets no other SkyPilot on this machine. The server is stopped at the end."""
    if not shutil.which("rsync"):  # `sky launch` checks for it before it provisions, dry run included
        pytest.skip("rsync is not installed (SkyPilot needs it, dry run included): apt install rsync")
    home = tmp_path_factory.mktemp("skyhome")
    shutil.copytree(CATALOG / "v8", home / ".sky/catalogs/v8")
    (home / ".sky/config.yaml").write_text("allowed_clouds: [runpod, lambda, aws]\n")
    env = {**os.environ, "HOME": str(home), "SKYPILOT_API_SERVER_LOCAL_PORT": str(_free_port()),
           "AWS_EC2_METADATA_DISABLED": "true", "TUNEBOOK_SKY_VENV": str(skypilot.venv(REPO))}
    env.pop("SKYPILOT_API_SERVER_ENDPOINT", None)
    try:
        seed = subprocess.run([str(skypilot.venv(REPO) / "bin/python"), "-c", _SEED], env=env, capture_output=True,
                              text=True, timeout=300)
        assert seed.returncode == 0 and "[RunPod, Lambda, AWS]" in seed.stdout, seed.stderr[-2000:]
        yield env
    finally:
        stop = _sky(env, "api", "stop", timeout=120)
        assert stop.returncode == 0, stop.stderr
        assert "No SkyPilot API server is connected" in _sky(env, "api", "info", timeout=120).stdout


def _write_task(tmp_path, env, *flags) -> Path:
    r = tunebook("launch", "ci-mini", *flags, "--dry-run", "--allow-dirty",
                 env={"TUNEBOOK_RUNS": str(tmp_path / "runs"), "TUNEBOOK_SKY_VENV": env["TUNEBOOK_SKY_VENV"]})
    assert r.returncode == 0, r.stderr
    return tmp_path / "runs/ci-mini/launch/task.yaml"


def _chosen(out: str) -> list[str]:
    """The row the optimizer chose in its plan table: INFRA, INSTANCE, vCPUs, Mem(GB), GPUS, COST ($)."""
    rows = [line for line in _ANSI.sub("", out).splitlines() if line.rstrip().endswith("✔")]
    assert len(rows) == 1, out
    return re.split(r"\s{2,}", rows[0].strip())[:6]


@pytest.mark.parametrize("cloud, gpus, chosen", [
    # RunPod: the cheaper of two regions (CA 1.79 vs US 1.89), on-demand price
    ("runpod", "1", ["RunPod (CA)", "1x_A100-80GB_SECURE", "8", "117", "A100-80GB:1", "1.79"]),
    # Lambda sells A100-80GB only by eight (no AWS case: offline, an AWS dry run waits ~90 s in SkyPilot's
    # retries for credentials; the launch-task tests above check the AWS task itself)
    ("lambda", "8", ["Lambda (us-east-1)", "gpu_8x_a100_80gb_sxm4", "240", "1800", "A100-80GB:8", "22.32"]),
])
def test_sky_launch_dryrun_plans_the_generated_task(tmp_path, sky_env, cloud, gpus, chosen):
    task = _write_task(tmp_path, sky_env, "--cloud", cloud, "--gpu", "a100-80", "--gpus", gpus)
    # the command `tunebook launch` runs (it prints it), plus --dryrun
    r = _sky(sky_env, "launch", "--dryrun", "-y", "-c", "tb-ci-mini", "--down", "-i", "15", str(task))
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert _chosen(r.stdout) == chosen
    assert "Dryrun finished." in r.stdout


def test_sky_launch_dryrun_refuses_one_a100_80gb_on_lambda(tmp_path, sky_env):
    task = _write_task(tmp_path, sky_env, "--cloud", "lambda", "--gpu", "a100-80")
    r = _sky(sky_env, "launch", "--dryrun", "-y", "-c", "tb-ci-mini", "--down", "-i", "15", str(task))
    out = _ANSI.sub("", r.stdout + r.stderr)
    assert r.returncode != 0 and "Catalog does not contain any instances" in out and "A100-80GB:8" in out, out


def test_sky_launch_dryrun_plans_spot_at_the_spot_price(tmp_path, sky_env):
    """The spot task without its bucket (a bucket mount makes SkyPilot call S3, which is not offline); `sky jobs
    launch` has no --dryrun in 0.14.1, so `sky launch --dryrun` plans the same resources. On RunPod: an AWS dry run
    spends ~90 s offline in SkyPilot's retries for AWS credentials (quota and image lookups) and plans the same."""
    task = _write_task(tmp_path, sky_env, "--cloud", "runpod", "--gpu", "a100-80", "--gpus", "1")
    data = yaml.safe_load(task.read_text())
    data["resources"]["use_spot"] = True
    task.write_text(yaml.safe_dump(data))
    r = _sky(sky_env, "launch", "--dryrun", "-y", "-c", "tb-ci-mini", str(task))
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    # spot is planned per zone, at the spot price: CA-MTL-1 at 1.19 (on demand 1.79) beats US-KS-2 at 1.29
    assert _chosen(r.stdout) == ["RunPod (CA-MTL-1)", "1x_A100-80GB_SECURE[Spot]", "8", "117", "A100-80GB:1", "1.19"]


def test_sky_launch_dryrun_accepts_the_spot_bucket_mount(tmp_path, sky_env):
    task = _write_task(tmp_path, sky_env, "--cloud", "aws", "--gpu", "a100-80", "--gpus", "8", "--spot",
                       "--bucket", "s3://tunebook-test/runs")
    r = _sky(sky_env, "launch", "--dryrun", "-y", "-c", "tb-ci-mini", str(task))
    out = _ANSI.sub("", r.stdout + r.stderr)
    # Offline it gets no further than S3 (no AWS access). The whole-bucket mount passed SkyPilot's storage checks
    # first: a sub-path in MOUNT_CACHED mode stops earlier, with StorageModeError ("MOUNT mode does not support
    # mounting specific files from cloud storage"), which is what an earlier version of the task got.
    assert "StorageModeError" not in out and "MOUNT mode does not support" not in out, out
    assert 'Storage "store: s3" specified, but AWS access is disabled' in out, out
