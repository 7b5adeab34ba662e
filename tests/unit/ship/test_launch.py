"""`tunebook launch` against fake RunPod and Lambda APIs on 127.0.0.1 (tests/fakes/cloud.py): the whole lifecycle,
and every failure path ends with the instance terminated (auth failure, no capacity, a lost create answer, a
pod that dies, a failed run, a container that never starts, --max-hours, flaky terminate calls, Ctrl-C, SIGTERM).
"""
from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from runner.errors import TunebookError
from runner.recipe.load import load_recipe
from runner.ship.launch import LaunchOptions, launch, pull_run, push_run, read_status, upload_files
from tests.conftest import REPO, make_project
from tests.fakes.cloud import FakeLambda, FakeRunPod

KEY = "rp-key-DO-NOT-PRINT-41f3"
SECRET = "hf_SECRET_TOKEN_9c2e"
GPU = {"runpod": "a100-80", "lambda": "h100"}
FAKES = {"runpod": FakeRunPod, "lambda": FakeLambda}
RECIPE = """
    name: tiny
    base_model: meta-llama/Llama-3.2-1B-Instruct
    data: {train: data/train.jsonl, format: alpaca}
    stages: [sft, merge]
    """
DATA = "".join(json.dumps({"instruction": f"question {i}?", "output": f"answer {i}."}) + "\n" for i in range(40))


@pytest.fixture
def proj(tmp_path):
    root = make_project(tmp_path / "proj", recipes={"tiny": RECIPE}, files={"data/train.jsonl": DATA})
    return root


@pytest.fixture
def template_run(tmp_path):
    """What the simulated container uploads: an adapter, a checkpoint (left out) and the run records."""
    t = tmp_path / "template"
    (t / "sft/output/checkpoint-4").mkdir(parents=True)
    (t / "sft/output/adapter_config.json").write_text('{"r": 16}')
    (t / "sft/output/adapter_model.safetensors").write_bytes(b"\0" * 64)
    (t / "sft/output/checkpoint-4/optimizer.pt").write_bytes(b"\0" * 64)
    (t / "sft/prepared").mkdir()
    (t / "sft/prepared/cache.arrow").write_bytes(b"\0")
    (t / "sft/train.log").write_text("step 1\n")
    (t / "merge/merged").mkdir(parents=True)
    (t / "merge/merged/config.json").write_text("{}")
    (t / "manifest.json").write_text('{"recipe": "tiny"}')
    (t / "tunebook.lock").write_text('{"version": 1, "stages": {}}')
    return t


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A launch environment: keys, image, bucket (file://), fast polling and retries."""
    values = {"RUNPOD_API_KEY": KEY, "LAMBDA_API_KEY": KEY, "TUNEBOOK_IMAGE": "ghcr.io/acme/tunebook:0123abcd",
              "TUNEBOOK_ARTIFACTS": f"file://{tmp_path}/bucket", "HF_TOKEN": SECRET, "TUNEBOOK_POLL_S": "0.05",
              "TUNEBOOK_RETRY_BASE_S": "0.01", "TUNEBOOK_HTTP_TIMEOUT": "3"}
    for k in ("TUNEBOOK_FORWARD_ENV", "TUNEBOOK_LAMBDA_SSH_KEY", "TUNEBOOK_MAX_HOURS", "TUNEBOOK_BOOT_TIMEOUT_S"):
        monkeypatch.delenv(k, raising=False)
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return values


def run(cloud, fake, proj, monkeypatch, **kw):
    monkeypatch.setenv("TUNEBOOK_RUNPOD_URL" if cloud == "runpod" else "TUNEBOOK_LAMBDA_URL", fake.url)
    out = io.StringIO()
    opts = LaunchOptions(cloud=cloud, gpu=kw.pop("gpu", GPU[cloud]), yes=True, **kw)
    try:
        rc = launch(load_recipe("tiny", proj), opts, out=out)  # as `tunebook launch` loads it
    except TunebookError as exc:
        return exc, out.getvalue()
    return rc, out.getvalue()


def alive(fake) -> list[str]:
    """Instances the fake still bills for."""
    if isinstance(fake, FakeRunPod):
        return [i for i, p in fake.instances.items() if not p["_deleted"]]
    return [i for i, p in fake.instances.items() if p["status"] not in ("terminated", "terminating")]


def terminated(fake) -> list[str]:
    if isinstance(fake, FakeRunPod):
        return [r.path.rsplit("/", 1)[1] for r in fake.calls("DELETE", r"/v1/pods/[^/]+")]
    return [i for r in fake.calls("POST", r"/api/v1/instance-operations/terminate") for i in r.body["instance_ids"]]


def create_calls(fake):
    return fake.calls("POST", r"/v1/pods") if isinstance(fake, FakeRunPod) else \
        fake.calls("POST", r"/api/v1/instance-operations/launch")


def never_leaked(fake, output: str):
    assert KEY not in output and SECRET not in output
    for r in fake.requests:
        assert KEY not in json.dumps(r.body or {}), "the provider key must never be sent to the instance"


# ------------------------------------------------------------------------------------------------ happy path
@pytest.mark.parametrize("cloud", ["runpod", "lambda"])
def test_launch_trains_fetches_and_terminates(cloud, proj, template_run, env, monkeypatch):
    with FAKES[cloud](template_run=template_run, key=KEY) as fake:
        rc, out = run(cloud, fake, proj, monkeypatch)
    assert rc == 0, out
    ids = list(fake.instances)
    assert len(create_calls(fake)) == 1 and len(ids) == 1
    assert terminated(fake) == ids and alive(fake) == []
    # the estimate is printed before anything is rented
    assert "estimate" in out and "$" in out and out.index("estimate") < out.index("created")
    # the results came back (no checkpoints, no tokenisation cache), with the launch record
    run_dir = proj / "runs/tiny"
    assert (run_dir / "sft/output/adapter_config.json").read_text() == '{"r": 16}'
    assert (run_dir / "merge/merged/config.json").is_file() and (run_dir / "tunebook.lock").is_file()
    assert not (run_dir / "sft/output/checkpoint-4").exists() and not (run_dir / "sft/prepared").exists()
    record = json.loads((run_dir / "launch.json").read_text())
    assert record["terminated"] is True and record["outcome"] == "succeeded" and record["instance"] == ids[0]
    # what the container got: recipe, GPU count, artifact URL, secrets; never the provider key
    cenv = fake.envs[ids[0]]
    assert cenv["RECIPE"] == "tiny" and cenv["GPUS"] == "1" and cenv["HF_TOKEN"] == SECRET
    assert base64.b64decode(cenv["TUNEBOOK_RECIPE_B64"]).decode() == (proj / "recipes/tiny.yaml").read_text()
    assert cenv["TUNEBOOK_ARTIFACTS"].startswith(env["TUNEBOOK_ARTIFACTS"] + "/tiny/")
    assert "RUNPOD_API_KEY" not in cenv and "LAMBDA_API_KEY" not in cenv
    never_leaked(fake, out)
    assert "HF_TOKEN=***" in out


def test_launch_record_and_results_go_to_tunebook_runs(proj, template_run, env, monkeypatch, tmp_path):
    """The run folder is the layout's: $TUNEBOOK_RUNS moves launch.json and the fetched run with it."""
    runs = tmp_path / "elsewhere"
    monkeypatch.setenv("TUNEBOOK_RUNS", str(runs))
    with FakeRunPod(template_run=template_run, key=KEY) as fake:
        rc, out = run("runpod", fake, proj, monkeypatch)
    assert rc == 0, out
    assert json.loads((runs / "tiny/launch.json").read_text())["outcome"] == "succeeded"
    assert (runs / "tiny/sft/output/adapter_config.json").is_file() and not (proj / "runs").exists()
    assert f"results in {os.path.relpath(runs / 'tiny', proj)}/" in out


def test_runpod_request_uses_documented_fields(proj, template_run, env, monkeypatch):
    with FakeRunPod(template_run=template_run, key=KEY) as fake:
        rc, out = run("runpod", fake, proj, monkeypatch, gpus=4)
    assert rc == 0, out
    body = create_calls(fake)[0].body
    assert body["imageName"] == "ghcr.io/acme/tunebook:0123abcd"
    assert body["gpuTypeIds"] == ["NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe"]
    assert body["gpuCount"] == 4 and body["env"]["GPUS"] == "4"
    assert body["computeType"] == "GPU" and body["containerDiskInGb"] == 100 and body["volumeInGb"] == 100
    assert body["env"]["TUNEBOOK_HOLD"] == "1"  # RunPod restarts exited containers: hold until terminated
    assert body["name"].startswith("tunebook-tiny-")
    assert all(r.headers["Authorization"] == f"Bearer {KEY}" for r in fake.requests)


def test_lambda_launch_body_and_user_data(proj, template_run, env, monkeypatch):
    with FakeLambda(template_run=template_run, key=KEY) as fake:
        rc, out = run("lambda", fake, proj, monkeypatch, gpu="a100-80", gpus=8)
    assert rc == 0, out
    body = create_calls(fake)[0].body
    assert body["instance_type_name"] == "gpu_8x_a100_80gb_sxm4" and body["region_name"] == "us-east-1"
    assert body["ssh_key_names"] == ["laptop"] and body["quantity"] == 1
    script = body["user_data"]
    assert script.startswith("#!/bin/bash") and "docker run --rm --name tunebook --gpus all" in script
    assert "--env-file /opt/tunebook/env ghcr.io/acme/tunebook:0123abcd" in script
    assert SECRET not in script  # the env file is inside, base64: no secret in plain text
    assert fake.envs[list(fake.instances)[0]]["GPUS"] == "8"
    assert "$14.32/h (Lambda API, live)" in out


def test_lambda_gpu_count_must_exist(proj, env, monkeypatch):
    with FakeLambda(key=KEY) as fake:
        exc, out = run("lambda", fake, proj, monkeypatch, gpu="a100-80", gpus=1)
    assert isinstance(exc, TunebookError) and "with 1 GPU" in str(exc) and "8 GPU" in str(exc)
    assert create_calls(fake) == []


# ------------------------------------------------------------------------------------------------ failures
@pytest.mark.parametrize("cloud", ["runpod", "lambda"])
def test_auth_failure(cloud, proj, env, monkeypatch):
    with FAKES[cloud](mode="auth", key=KEY) as fake:
        exc, out = run(cloud, fake, proj, monkeypatch)
    assert isinstance(exc, TunebookError) and exc.exit_code == 2
    assert "API key" in str(exc) and KEY not in str(exc)
    assert fake.instances == {} and alive(fake) == []


@pytest.mark.parametrize("cloud", ["runpod", "lambda"])
def test_wrong_key_is_refused_by_the_fake_too(cloud, proj, env, monkeypatch):
    with FAKES[cloud](key="another-key") as fake:
        exc, out = run(cloud, fake, proj, monkeypatch)
    assert isinstance(exc, TunebookError) and exc.exit_code == 2 and fake.instances == {}


@pytest.mark.parametrize("cloud", ["runpod", "lambda"])
def test_no_capacity(cloud, proj, env, monkeypatch):
    with FAKES[cloud](mode="no_capacity", key=KEY) as fake:
        exc, out = run(cloud, fake, proj, monkeypatch)
    assert isinstance(exc, TunebookError) and "no capacity" in str(exc) and exc.exit_code == 1
    assert fake.instances == {} and alive(fake) == []


def test_lambda_no_capacity_at_launch_time(proj, env, monkeypatch):
    # /instance-types still lists capacity, but the launch call itself answers insufficient-capacity
    with FakeLambda(mode="launch_no_capacity", key=KEY) as fake:
        exc, out = run("lambda", fake, proj, monkeypatch)
    assert isinstance(exc, TunebookError) and "no capacity" in str(exc)
    assert len(create_calls(fake)) == 1 and fake.instances == {}


@pytest.mark.parametrize("cloud", ["runpod", "lambda"])
def test_lost_create_answer_is_found_and_terminated(cloud, proj, env, monkeypatch):
    monkeypatch.setenv("TUNEBOOK_HTTP_TIMEOUT", "0.4")
    with FAKES[cloud](mode="slow_create", delay=1.2, key=KEY) as fake:
        exc, out = run(cloud, fake, proj, monkeypatch)
        time.sleep(1.0)  # let the slow handler finish
    assert isinstance(exc, TunebookError) and "no answer" in str(exc)
    assert len(fake.instances) == 1, "the fake did create the instance"
    assert terminated(fake) == list(fake.instances) and alive(fake) == []


@pytest.mark.parametrize("cloud", ["runpod", "lambda"])
def test_instance_dies_mid_run(cloud, proj, env, monkeypatch):
    with FAKES[cloud](mode="dies", key=KEY) as fake:
        exc, out = run(cloud, fake, proj, monkeypatch)
    assert isinstance(exc, TunebookError) and exc.exit_code == 1 and "stopped before training finished" in str(exc)
    assert "sft: step" in out  # its log was streamed
    assert terminated(fake) == list(fake.instances) and alive(fake) == []
    assert json.loads((proj / "runs/tiny/launch.json").read_text())["terminated"] is True


@pytest.mark.parametrize("cloud", ["runpod", "lambda"])
def test_failed_training(cloud, proj, template_run, env, monkeypatch):
    with FAKES[cloud](mode="fail", template_run=template_run, key=KEY) as fake:
        exc, out = run(cloud, fake, proj, monkeypatch)
    assert isinstance(exc, TunebookError) and exc.exit_code == 1
    assert "training failed" in str(exc) and "CUDA out of memory" in str(exc)
    assert terminated(fake) == list(fake.instances) and alive(fake) == []
    assert (proj / "runs/tiny/sft/train.log").is_file(), "a failed run's files are fetched too"


@pytest.mark.parametrize("cloud", ["runpod", "lambda"])
def test_container_never_starts(cloud, proj, env, monkeypatch):
    monkeypatch.setenv("TUNEBOOK_BOOT_TIMEOUT_S", "0.5")
    with FAKES[cloud](mode="never_starts", key=KEY) as fake:
        exc, out = run(cloud, fake, proj, monkeypatch)
    assert isinstance(exc, TunebookError) and "did not start" in str(exc)
    assert terminated(fake) == list(fake.instances) and alive(fake) == []


def test_max_hours_terminates(proj, env, monkeypatch):
    with FakeRunPod(mode="hang", key=KEY) as fake:
        exc, out = run("runpod", fake, proj, monkeypatch, max_hours=0.0003)
    assert isinstance(exc, TunebookError) and "--max-hours" in str(exc)
    assert terminated(fake) == list(fake.instances) and alive(fake) == []


def test_client_timeout_while_watching_is_retried(proj, template_run, env, monkeypatch):
    """A few failed status calls are tolerated; the run still finishes and is terminated."""
    with FakeRunPod(template_run=template_run, key=KEY) as fake:
        route, n = fake.route, {"get": 0}

        def flaky(req):
            if req.method == "GET" and req.path.startswith("/v1/pods/") and n["get"] < 2:
                n["get"] += 1
                return 503, {"error": "upstream unavailable", "status": 503}
            return route(req)

        fake.route = flaky
        rc, out = run("runpod", fake, proj, monkeypatch)
    assert rc == 0 and alive(fake) == []


@pytest.mark.parametrize("cloud", ["runpod", "lambda"])
def test_flaky_terminate_is_retried(cloud, proj, template_run, env, monkeypatch):
    with FAKES[cloud](mode="flaky_terminate", template_run=template_run, key=KEY) as fake:
        rc, out = run(cloud, fake, proj, monkeypatch)
    assert rc == 0 and fake.terminate_calls == 3 and alive(fake) == []


@pytest.mark.parametrize("cloud", ["runpod", "lambda"])
def test_unconfirmed_terminate_is_loud(cloud, proj, template_run, env, monkeypatch):
    with FAKES[cloud](mode="broken_terminate", template_run=template_run, key=KEY) as fake:
        exc, out = run(cloud, fake, proj, monkeypatch)
    assert isinstance(exc, TunebookError) and exc.exit_code == 1
    iid = list(fake.instances)[0]
    assert "MAY STILL BE RUNNING" in str(exc) and iid in str(exc) and f"tunebook terminate --cloud {cloud}" in str(exc)
    assert fake.terminate_calls == 6
    assert json.loads((proj / "runs/tiny/launch.json").read_text())["terminated"] is False


# ------------------------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("unset, words", [("TUNEBOOK_IMAGE", "no image"), ("TUNEBOOK_ARTIFACTS", "artifact store"),
                                          ("RUNPOD_API_KEY", "RUNPOD_API_KEY")])
def test_missing_settings_rent_nothing(unset, words, proj, env, monkeypatch):
    monkeypatch.delenv(unset)
    with FakeRunPod(key=KEY) as fake:
        exc, out = run("runpod", fake, proj, monkeypatch)
    assert isinstance(exc, TunebookError) and exc.exit_code == 2 and words in str(exc)
    assert fake.requests == []


def test_local_image_is_refused(proj, env, monkeypatch):
    monkeypatch.setenv("TUNEBOOK_IMAGE", "localhost/tunebook:abc")
    with FakeRunPod(key=KEY) as fake:
        exc, _ = run("runpod", fake, proj, monkeypatch)
    assert "only on this machine" in str(exc) and fake.requests == []


def test_bad_recipe_rents_nothing(proj, env, monkeypatch):
    (proj / "recipes/tiny.yaml").write_text("name: tiny\nbase_model: x/y\ndata: {train: nope.jsonl}\n")
    with FakeRunPod(key=KEY) as fake:
        exc, _ = run("runpod", fake, proj, monkeypatch)
    assert isinstance(exc, TunebookError) and exc.exit_code == 2 and fake.requests == []


def test_provider_key_is_never_forwarded(proj, env, monkeypatch):
    with FakeRunPod(key=KEY) as fake:
        exc, _ = run("runpod", fake, proj, monkeypatch, env=["RUNPOD_API_KEY"])
    assert isinstance(exc, TunebookError) and "never sent" in str(exc) and fake.requests == []


def test_confirmation_needed_without_yes(proj, env, monkeypatch):
    with FakeRunPod(key=KEY) as fake:
        monkeypatch.setenv("TUNEBOOK_RUNPOD_URL", fake.url)
        r = subprocess.run([sys.executable, "-m", "runner.cli", "--root", str(proj), "launch", "tiny", "--cloud",
                            "runpod", "--gpu", "a100-80"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           cwd=REPO, timeout=120)
    assert r.returncode == 2 and "--yes" in r.stderr
    assert "estimate" in r.stdout  # the cost was shown before asking
    assert create_calls(fake) == []


def test_dry_run(proj, env, monkeypatch):
    with FakeRunPod(key=KEY) as fake:
        rc, out = run("runpod", fake, proj, monkeypatch, dry_run=True)
    assert rc == 0 and "nothing was rented" in out and fake.requests == []


# ------------------------------------------------------------------------------------------------ signals
def _cli_launch(cloud, proj, fake, extra_env=None):
    e = dict(os.environ)
    e.update({"TUNEBOOK_RUNPOD_URL": fake.url, "TUNEBOOK_LAMBDA_URL": fake.url, **(extra_env or {})})
    return subprocess.Popen([sys.executable, "-m", "runner.cli", "--root", str(proj), "launch", "tiny", "--cloud",
                             cloud, "--gpu", GPU[cloud], "--yes"], cwd=REPO, env=e, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(cond, timeout=60):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
@pytest.mark.parametrize("cloud", ["runpod", "lambda"])
def test_signal_terminates_the_instance(cloud, sig, proj, env):
    with FAKES[cloud](mode="hang", key=KEY) as fake:
        p = _cli_launch(cloud, proj, fake)
        try:
            assert _wait_for(lambda: fake.instances and any(
                (read_status(e.get("TUNEBOOK_ARTIFACTS", "")) or {}).get("state") == "running"
                for e in fake.envs.values())), "the run never started"
            p.send_signal(sig)
            out, err = p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
    assert p.returncode == 130, err
    assert "interrupted" in err and "terminated" in err
    assert terminated(fake) == list(fake.instances) and alive(fake) == []
    assert KEY not in out + err and SECRET not in out + err


@pytest.mark.parametrize("cloud", ["runpod", "lambda"])
def test_ctrl_c_during_create_still_terminates(cloud, proj, env):
    """The create call is shielded: a Ctrl-C while it is in flight is acted on once its answer (the id) is in."""
    with FAKES[cloud](mode="slow_create", delay=2.0, key=KEY) as fake:
        p = _cli_launch(cloud, proj, fake)
        try:
            assert _wait_for(lambda: fake.instances), "the create call never arrived"
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
    assert p.returncode == 130, err
    assert terminated(fake) == list(fake.instances) and alive(fake) == []


def test_terminate_command(env, monkeypatch):
    with FakeRunPod(key=KEY) as fake:
        monkeypatch.setenv("TUNEBOOK_RUNPOD_URL", fake.url)
        fake.create({"imageName": "x", "gpuTypeIds": ["NVIDIA H100 80GB HBM3"], "gpuCount": 1, "env": {}})
        iid = list(fake.instances)[0]
        r = subprocess.run([sys.executable, "-m", "runner.cli", "terminate", "--cloud", "runpod", iid], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and f"{iid} terminated" in r.stdout and alive(fake) == []


# ------------------------------------------------------------------------------------------------ artifacts
def test_artifact_round_trip(template_run, tmp_path):
    url = f"file://{tmp_path}/b/run1"
    assert sorted(map(str, upload_files(template_run))) == sorted([
        "manifest.json", "merge/merged/config.json", "sft/output/adapter_config.json",
        "sft/output/adapter_model.safetensors", "sft/train.log", "tunebook.lock"])
    assert push_run(template_run, url) == 6
    dest = tmp_path / "runs/tiny"
    dest.mkdir(parents=True)
    (dest / "local.txt").write_text("mine")
    assert pull_run(url, dest) == 6
    assert (dest / "sft/output/adapter_config.json").is_file() and not (dest / "local.txt").exists()
    aside = [p for p in dest.parent.iterdir() if p.name.startswith("tiny.before-launch-")]
    assert len(aside) == 1 and (aside[0] / "local.txt").read_text() == "mine"
    assert push_run(template_run, url, include_checkpoints=True) == 7


def test_container_side_commands(tmp_path):
    """`tunebook artifacts status|heartbeat|push` as docker/entrypoint.sh calls them."""
    root = tmp_path / "p"
    (root / "runs/r/sft").mkdir(parents=True)
    (root / "runs/r/sft/train.log").write_text("x\n")
    log = root / "runs/r/container.log"
    log.write_text("".join(f"line {i}\n" for i in range(500)))
    url = f"file://{tmp_path}/bucket/r/1"

    def cli(*a):
        return subprocess.run([sys.executable, "-m", "runner.cli", "--root", str(root), "artifacts", *a], cwd=REPO,
                              capture_output=True, text=True, timeout=60)

    assert cli("status", url, "starting").returncode == 0
    assert read_status(url)["state"] == "starting"
    assert cli("heartbeat", "r", url, "--log", str(log), "--once").returncode == 0
    st = read_status(url)
    assert st["state"] == "running" and st["stage"] == "sft" and st["log_lines"] == 500
    assert st["log_first_line"] == 100
    r = cli("push", "r", url, "--log", str(log), "--exit-code", "3")
    assert r.returncode == 0, r.stderr
    st = read_status(url)
    assert st["state"] == "failed" and st["exit_code"] == 3 and st["files"] == 2
    assert (tmp_path / "bucket/r/1/run/container.log").is_file()


def test_container_side_commands_use_tunebook_runs(tmp_path):
    """`artifacts push|pull` find the run folder where the pipeline writes it: under $TUNEBOOK_RUNS when set."""
    root, runs = tmp_path / "p", tmp_path / "elsewhere"
    (runs / "r/sft").mkdir(parents=True)
    (runs / "r/sft/train.log").write_text("x\n")
    (root / "recipes").mkdir(parents=True)
    url = f"file://{tmp_path}/bucket/r/1"
    env = {**os.environ, "TUNEBOOK_RUNS": str(runs)}

    def cli(*a):
        return subprocess.run([sys.executable, "-m", "runner.cli", "--root", str(root), "artifacts", *a], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=60)

    r = cli("push", "r", url, "--exit-code", "0")
    assert r.returncode == 0, r.stderr
    st = read_status(url)
    assert st["state"] == "succeeded" and st["files"] == 1 and st["stage"] == "sft"
    r = cli("pull", "r", url)
    assert r.returncode == 0, r.stderr
    assert (runs / "r/sft/train.log").is_file() and not (root / "runs").exists()
