"""`tunebook launch`: the recipe -> SkyPilot task mapping, the refusals before SkyPilot is called, and the calls to
SkyPilot's CLI (through a recording `sky` in a stand-in venv). No SkyPilot here: its own validator runs on these
tasks in tests/e2e/test_launch_skypilot.py."""
from __future__ import annotations

import io
import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from runner.errors import TunebookError
from runner.recipe.load import load_recipe
from runner.ship import launch as L
from tests.conftest import REPO, make_project, tunebook

SECRET = "hf_SECRET_VALUE_9c2e"
DATA = "".join(json.dumps({"instruction": f"question {i}?", "output": f"answer {i}."}) + "\n" for i in range(40))
ONE_STAGE = """
    name: tiny
    base_model: HuggingFaceTB/SmolLM2-135M-Instruct
    preset: {preset}
    data: {{train: data/train.jsonl, format: alpaca}}
    stages: [sft, merge]
    """
TWO_STAGES = """
    name: two
    base_model: HuggingFaceTB/SmolLM2-135M-Instruct
    preset: lora-a100
    data: {train: data/train.jsonl, format: alpaca}
    stages: [sft, {dpo: {data: {train: data/pref.jsonl, format: preference}}}, merge]
    """
PREF = "".join(json.dumps({"prompt": f"q{i}?", "chosen": "yes.", "rejected": "no."}) + "\n" for i in range(20))
BIG = """
    name: big
    base_model: meta-llama/Llama-3.1-70B-Instruct
    preset: lora-a100
    training: {method: full}
    data: {train: data/train.jsonl, format: alpaca}
    stages: [sft]
    """


@pytest.fixture
def proj(tmp_path):
    return make_project(tmp_path / "proj", recipes={"tiny": ONE_STAGE.format(preset="lora-a100"),
                                                    "multi": ONE_STAGE.format(preset="full-ft-multigpu")
                                                    .replace("name: tiny", "name: multi"),
                                                    "two": TWO_STAGES, "big": BIG},
                        files={"data/train.jsonl": DATA, "data/pref.jsonl": PREF})


def task_for(proj, name, **kw):
    rec = load_recipe(name, proj)
    opts = L.LaunchOptions(**{"cloud": "runpod", **kw})
    return L.build_task(rec, opts, L.target(rec, opts), "abc123", L.check_options(opts),
                        L.secret_names(opts, {"HF_TOKEN": SECRET}), environ={"HF_TOKEN": SECRET})


def test_task_from_the_preset(proj):
    t = task_for(proj, "tiny")
    assert t["name"] == "tb-tiny" and t["num_nodes"] == 1
    assert t["resources"] == {"accelerators": "A100-80GB:1", "use_spot": False, "infra": "runpod"}
    assert t["workdir"] == str(proj) and t["envs"]["RECIPE"] == "tiny" and t["envs"]["TUNEBOOK_COMMIT"] == "abc123"
    assert "make train RECIPE=tiny" in t["run"] and "make venv" in t["setup"]
    assert t["secrets"] == {"HF_TOKEN": None}  # by name: the value is read at launch
    assert SECRET not in json.dumps(t) and "file_mounts" not in t


def test_flags_override_the_preset_and_any_cloud_is_left_to_skypilot(proj):
    t = task_for(proj, "tiny", cloud="any", gpu="h100", gpus=4, image="ghcr.io/me/tunebook:abc")
    assert t["resources"] == {"accelerators": "H100:4", "use_spot": False, "image_id": "docker:ghcr.io/me/tunebook:abc"}
    assert "ln -sfn /app/.venv .venv" in t["setup"] and "make venv" not in t["setup"]


def test_gpu_names_map_to_skypilot():
    assert L.SKY_GPUS["a100-80"] == "A100-80GB" and L.SKY_GPUS["t4"] == "T4" and L.SKY_GPUS["h100"] == "H100"


def test_multinode_maps_skypilot_variables_onto_the_launcher(proj):
    t = task_for(proj, "multi", cloud="aws", nodes=2)
    assert t["resources"]["accelerators"] == "A100-80GB:8" and t["num_nodes"] == 2
    run = t["run"]
    for var in ("NNODES=\"$SKYPILOT_NUM_NODES\"", "NODE_RANK=\"$SKYPILOT_NODE_RANK\"",
                "GPUS=\"$SKYPILOT_NUM_GPUS_PER_NODE\"", 'MASTER_ADDR="$(echo "$SKYPILOT_NODE_IPS" | head -n1)"'):
        assert var in run
    assert "make train RECIPE=multi" in run and "tunebook train multi --until sft" in run


def test_multinode_variables_become_accelerate_arguments(monkeypatch):
    # what the run script exports on node 1 of 2 is what runner.train.axolotl turns into accelerate's arguments
    from runner.hardware import Hardware
    from runner.train.axolotl import launcher_args

    for k, v in {"GPUS": "8", "NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.5"}.items():
        monkeypatch.setenv(k, v)
    h = Hardware(cuda=True, gpu_name="A100", gpu_count=8, gpu_memory_gib=79, bf16=True, cpu_cores=8, cpu_name="")
    assert launcher_args(h) == ["--launcher", "accelerate", "--", "--num_processes", "16", "--num_machines", "2",
                                "--multi_gpu", "--machine_rank", "1", "--main_process_ip", "10.0.0.5",
                                "--main_process_port", "29500"]


def test_bucket_holds_runs(proj):
    t = task_for(proj, "tiny", cloud="aws", spot=True, bucket="s3://b/tb/")
    # The whole bucket is mounted (SkyPilot's MOUNT modes refuse a sub-path); the prefix is where runs/ is in it.
    assert t["resources"]["use_spot"] is True and t["envs"]["TUNEBOOK_RUNS"] == f"{L.REMOTE_BUCKET}/tb"
    assert t["file_mounts"] == {L.REMOTE_BUCKET: {"source": "s3://b", "mode": "MOUNT_CACHED"}}
    bare = task_for(proj, "tiny", cloud="aws", spot=True, bucket="gs://bucket-1")
    assert bare["envs"]["TUNEBOOK_RUNS"] == L.REMOTE_BUCKET
    assert bare["file_mounts"] == {L.REMOTE_BUCKET: {"source": "gs://bucket-1", "mode": "MOUNT_CACHED"}}


@pytest.mark.parametrize("kw, match", [
    ({"spot": True}, "--spot without --bucket"),
    ({"spot": True, "bucket": "s3://b", "nodes": 2}, "--spot with --nodes > 1"),
    ({"image": "localhost/tunebook:abc"}, "exists only on this machine"),
    ({"cloud": "Run Pod"}, "is not a cloud name"),
    ({"bucket": "my-bucket/runs"}, "is not a bucket URL"),
    ({"bucket": "https://acct.blob.core.windows.net/c"}, "is not a bucket URL"),
])
def test_refused_options(kw, match):
    with pytest.raises(TunebookError, match=match):
        L.check_options(L.LaunchOptions(**{"cloud": "runpod", **kw}))


def test_secrets_by_name_only():
    env = {"HF_TOKEN": SECRET, "MY_TOKEN": "x"}
    assert L.secret_names(L.LaunchOptions("runpod", secrets=["MY_TOKEN"]), env) == ["HF_TOKEN", "MY_TOKEN"]
    with pytest.raises(TunebookError, match="never sent"):
        L.secret_names(L.LaunchOptions("runpod", secrets=["RUNPOD_API_KEY"]), env)
    with pytest.raises(TunebookError, match="not set in this environment"):
        L.secret_names(L.LaunchOptions("runpod", secrets=["ABSENT"]), env)
    with pytest.raises(TunebookError, match="not an environment variable name"):
        L.secret_names(L.LaunchOptions("runpod", secrets=["hf_abc=1"]), env)


def test_multinode_needs_one_training_stage(proj):
    with pytest.raises(TunebookError, match="exactly one training stage"):
        L.check_nodes(load_recipe("two", proj), 2)


def test_a_recipe_that_does_not_fit_is_refused_before_skypilot(proj, monkeypatch):
    called = []
    monkeypatch.setattr(L.skypilot, "validate", lambda *a: called.append(a))
    with pytest.raises(TunebookError, match="does not fit the NVIDIA T4"):
        L.plan_launch(load_recipe("big", proj), L.LaunchOptions("runpod", gpu="t4"), environ={})
    assert called == [] and not (proj / "runs/big/launch/task.yaml").exists()


def test_missing_skypilot_venv_says_make_launch_venv(proj, monkeypatch):
    monkeypatch.setenv("TUNEBOOK_SKY_VENV", str(proj / "no-such-venv"))
    r = tunebook("--root", str(proj), "launch", "tiny", "--cloud", "runpod", "--dry-run")
    assert r.returncode == 2 and "make launch-venv" in r.stderr and "Traceback" not in r.stderr


# What the stand-in `sky` prints on stderr when it fails: an exception chain as SkyPilot's CLI prints one.
CHAIN = ("Traceback (most recent call last):\n"
         '  File "/venv/sky/client/sdk.py", line 12, in launch\n'
         "    raise exceptions.ProvisionError()\n"
         "ConnectionRefusedError: [Errno 111] Connection refused\n"
         "\n"
         "The above exception was the direct cause of the following exception:\n"
         "\n"
         "requests.exceptions.ConnectionError: HTTPConnectionPool(host='127.0.0.1', port=46580): Max retries exceeded\n")
FAKE_SKY = r"""#!/bin/sh
# The stand-in `sky`: records its argv (and whether HF_TOKEN reached it), models SkyPilot's local API server as
# the file $FAKE/server-up (any command but `api` starts it; `api info` reports it; `api stop` stops it).
printf '%s\n' "$*" >> "$FAKE/calls"
[ -n "$HF_TOKEN" ] && echo has-token >> "$FAKE/calls"
fail() { printf '%s' "$CHAIN" >&2; exit "$1"; }
case "$1 $2" in
  "api info") if [ -e "$FAKE/server-up" ]; then echo '{"server": {"status": "healthy"}}'
              else echo "No SkyPilot API server is connected"; fi; exit 0;;
  "api stop") rm -f "$FAKE/server-up"; exit 0;;
esac
touch "$FAKE/server-up"
case "$1 $2" in
  launch*|"jobs launch") [ -n "$FAKE_SKY_SLEEP" ] && exec sleep "$FAKE_SKY_SLEEP"
                         [ "${FAKE_SKY_RC:-0}" = 0 ] || fail "$FAKE_SKY_RC";;
  logs*|"jobs logs") [ -n "$FAKE_SKY_NO_LOG" ] && fail 1; echo "job log: training started";;
  status*) [ -n "$FAKE_SKY_OFFLINE" ] && fail 1; echo "Clusters";;
  "jobs queue") echo "Failed to connect to SkyPilot API server. Starting a local server."
                [ -e "$FAKE/queue.json" ] || { echo "sky.exceptions.ClusterNotUpError: No in-progress managed jobs." >&2; exit 1; }
                cat "$FAKE/queue.json";;
esac
exit 0
"""
# The stand-in `rsync` (first on PATH): records the call and leaves a stage log in the destination, as the copy
# of runs/<recipe>/ from the head node would.
FAKE_RSYNC = r"""#!/bin/sh
printf 'rsync %s\n' "$*" >> "$FAKE/calls"
for dest; do :; done
[ "${FAKE_RSYNC_RC:-0}" = 0 ] || exit "$FAKE_RSYNC_RC"
mkdir -p "${dest}sft" && echo "loss 0.5" > "${dest}sft/train.log"
"""


@pytest.fixture
def fake_sky(proj, monkeypatch):
    """A stand-in SkyPilot venv (bin/sky above, $FAKE_SKY_RC for `launch`), a stand-in rsync on PATH, and
    bin/python answering the validator with 'ok' for every task. Returns calls(): every call so far, in order
    (`sky` argv, 'rsync ...', 'has-token' after each `sky` that got HF_TOKEN)."""
    venv = proj / "fake-sky"
    (venv / "bin").mkdir(parents=True)
    sky, rsync, py = venv / "bin" / "sky", venv / "bin" / "rsync", venv / "bin" / "python"
    sky.write_text(FAKE_SKY)
    rsync.write_text(FAKE_RSYNC)
    py.write_text("#!/bin/sh\n" + f"exec '{sys.executable}' -c "
                  "'import json,sys; [print(json.dumps({\"ok\": True})) for _ in json.load(sys.stdin)]'\n")
    for f in (sky, rsync, py):
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("TUNEBOOK_SKY_VENV", str(venv))
    monkeypatch.setenv("FAKE", str(venv))
    monkeypatch.setenv("CHAIN", CHAIN)
    monkeypatch.setenv("PATH", f"{venv / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setenv("HF_TOKEN", SECRET)
    log = venv / "calls"
    return lambda: log.read_text().splitlines() if log.exists() else []


def sky_calls(calls):
    """The calls without the API-server probes and the has-token marks."""
    return [c for c in calls if c != "has-token" and not c.startswith("api ")]


def test_launch_spot_runs_a_managed_job_and_down_cancels_it(proj, fake_sky):
    out = io.StringIO()
    rec = load_recipe("tiny", proj)
    opts = L.LaunchOptions("aws", spot=True, bucket="s3://b/tb", yes=True)
    assert L.launch(rec, opts, out=out) == 0
    calls = fake_sky()
    task = str(proj / "runs/tiny/launch/task.yaml")
    assert calls[0] == "api info -o json"  # is SkyPilot's API server up? (it is not: stopped at the end)
    launched = calls.index(f"jobs launch -y -n tb-tiny --secret HF_TOKEN {task}")
    assert calls[launched + 1] == "has-token"
    assert [c for c in calls if c != "has-token"][-2:] == ["api info -o json", "api stop"]
    assert sky_calls(calls)[1] == "jobs logs -n tb-tiny --no-follow"  # the job's log, kept
    assert (proj / "runs/tiny/launch/job.log").read_text() == "job log: training started\n"
    assert SECRET not in out.getvalue() and SECRET not in (proj / "runs/tiny/launch/task.yaml").read_text()
    assert L.manage(rec, "down") == 0 and sky_calls(fake_sky())[-1] == "jobs cancel -y -n tb-tiny"
    assert L.manage(rec, "logs") == 0 and sky_calls(fake_sky())[-1] == "jobs logs -n tb-tiny"


def test_done_with_a_bucket_says_where_the_results_are_and_how_to_fetch_them(proj, fake_sky):
    out = io.StringIO()
    assert L.launch(load_recipe("tiny", proj), L.LaunchOptions("aws", spot=True, bucket="s3://b/tb", yes=True),
                    out=out) == 0
    done = out.getvalue().splitlines()[-1]
    assert done.startswith("done: tiny on aws; the managed job has ended; results on the bucket at s3://b/tb/tiny")
    assert "not copied into runs/tiny/" in done and "`aws s3 sync s3://b/tb/tiny runs/tiny`" in done
    assert "job.log" in done and not (proj / "runs/tiny/sft").exists()
    assert not any(c.startswith("rsync") for c in fake_sky())


def test_success_without_a_bucket_saves_the_log_copies_back_then_tears_down(proj, fake_sky):
    out = io.StringIO()
    assert L.launch(load_recipe("tiny", proj), L.LaunchOptions("runpod", yes=True), out=out) == 0
    calls = sky_calls(fake_sky())
    assert calls[0].startswith("launch -y -c tb-tiny --down -i 15 --secret HF_TOKEN")
    assert calls[1] == "logs tb-tiny --no-follow --tail 0"
    assert calls[2].startswith("rsync -a --exclude prepared/ tb-tiny:~/sky_workdir/runs/tiny/ ")
    assert calls[3] == "down -y tb-tiny"
    assert (proj / "runs/tiny/sft/train.log").exists() and (proj / "runs/tiny/launch/job.log").exists()
    assert "tb-tiny torn down; results in runs/tiny/; the job's log is in runs/tiny/launch/job.log" in out.getvalue()


def test_a_failed_launch_keeps_the_log_and_the_files_then_tears_down(proj, fake_sky, monkeypatch):
    monkeypatch.setenv("FAKE_SKY_RC", "3")
    rec = load_recipe("tiny", proj)
    with pytest.raises(TunebookError) as exc:
        L.launch(rec, L.LaunchOptions("lambda", yes=True), out=io.StringIO())
    calls = sky_calls(fake_sky())
    assert calls[0].startswith("launch -y -c tb-tiny --down -i 15 --secret HF_TOKEN")
    # before the teardown: the log, then the files
    assert calls[1:] == ["logs tb-tiny --no-follow --tail 0", calls[2], "down -y tb-tiny"]
    assert calls[2].startswith("rsync -a --exclude prepared/ tb-tiny:")
    assert (proj / "runs/tiny/launch/job.log").read_text() == "job log: training started\n"
    assert (proj / "runs/tiny/sft/train.log").exists()
    text, err = str(exc.value), exc.value
    assert err.exit_code == 1 and "\n" not in text
    assert text.startswith("SkyPilot failed: `sky launch -y -c tb-tiny --down -i 15") and "exited with 3" in text
    assert "requests.exceptions.ConnectionError" in text and "Traceback" not in text and 'File "' not in text
    assert "The above exception" not in text
    assert "The job's log is in runs/tiny/launch/job.log; the run's files were copied back into runs/tiny/; " \
           "tb-tiny was torn down" in text
    assert "--logs" not in text  # the cluster is gone: no advice that cannot work


def test_a_launch_that_never_provisioned_says_nothing_was_kept(proj, fake_sky, monkeypatch):
    monkeypatch.setenv("FAKE_SKY_RC", "1")
    monkeypatch.setenv("FAKE_SKY_NO_LOG", "1")
    monkeypatch.setenv("FAKE_RSYNC_RC", "255")
    with pytest.raises(TunebookError) as exc:
        L.launch(load_recipe("tiny", proj), L.LaunchOptions("lambda", yes=True), out=io.StringIO())
    text = str(exc.value)
    assert "No job log (`sky logs tb-tiny --no-follow --tail 0` exited with 1" in text
    assert "nothing was copied back (rsync exited with 255" in text and "tb-tiny was torn down" in text
    assert not (proj / "runs/tiny/launch/job.log").exists()
    assert not [p for p in (proj / "runs/tiny/launch").iterdir() if p.name.endswith(".tmp")]


def test_a_failed_launch_with_a_bucket_points_at_the_bucket(proj, fake_sky, monkeypatch):
    monkeypatch.setenv("FAKE_SKY_RC", "3")
    rec = load_recipe("tiny", proj)
    with pytest.raises(TunebookError, match="SkyPilot failed") as exc:
        L.launch(rec, L.LaunchOptions("lambda", bucket="gs://b/tb", yes=True), out=io.StringIO())
    calls = sky_calls(fake_sky())
    assert calls[1:] == ["logs tb-tiny --no-follow --tail 0", "down -y tb-tiny"]  # no rsync: files are on the bucket
    assert "the run's files are on the bucket at gs://b/tb/tiny (fetch them with " \
           "`gcloud storage rsync --recursive gs://b/tb/tiny runs/tiny`)" in str(exc.value)
    assert L.manage(rec, "status") == 0 and sky_calls(fake_sky())[-1] == "status tb-tiny"


def test_runs_elsewhere_are_named_in_the_messages(proj, fake_sky, tmp_path, monkeypatch):
    runs = tmp_path / "elsewhere"
    monkeypatch.setenv("TUNEBOOK_RUNS", str(runs))
    out = io.StringIO()
    rec = load_recipe("tiny", proj)
    assert L.launch(rec, L.LaunchOptions("runpod", dry_run=True), out=out) == 0
    assert f"copied back into {runs / 'tiny'}/ when the job ends" in out.getvalue()
    assert f"task       {runs / 'tiny/launch/task.yaml'} (accepted" in out.getvalue()
    assert "runs/tiny" not in out.getvalue().replace(str(runs / "tiny"), "")
    out = io.StringIO()
    assert L.launch(rec, L.LaunchOptions("runpod", yes=True), out=out) == 0
    assert f"results in {runs / 'tiny'}/" in out.getvalue() and (runs / "tiny/sft/train.log").exists()


def test_status_offline_is_one_paragraph_and_stops_the_api_server_it_started(proj, fake_sky):
    r = tunebook("--root", str(proj), "launch", "tiny", "--status", env={"FAKE_SKY_OFFLINE": "1"})
    assert r.returncode == 1 and "Traceback" not in r.stderr and 'File "' not in r.stderr
    error = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1, r.stderr
    assert error[0].startswith("error: SkyPilot's status of tb-tiny failed: `sky status tb-tiny` exited with 1: "
                               "ConnectionRefusedError: [Errno 111] Connection refused; "
                               "requests.exceptions.ConnectionError: ")
    assert "sky check" in error[0] and "api info" in error[0]
    assert [c for c in fake_sky() if c != "has-token"][-1] == "api stop"
    assert "stopped SkyPilot's local API server" in r.stderr
    assert not (proj / "fake-sky/server-up").exists()


def test_an_api_server_that_was_running_is_left_running(proj, fake_sky):
    (proj / "fake-sky/server-up").touch()
    r = tunebook("--root", str(proj), "launch", "tiny", "--status")
    assert r.returncode == 0, r.stderr
    assert "api stop" not in fake_sky() and (proj / "fake-sky/server-up").exists()


def test_status_of_a_managed_job_shows_only_this_recipes_jobs(proj, fake_sky):
    rec = load_recipe("tiny", proj)
    (proj / "runs/tiny").mkdir(parents=True)
    (proj / "runs/tiny/launch.json").write_text(json.dumps({"name": "tb-tiny", "managed": True}))
    jobs = [{"job_id": 7, "job_name": "tb-tiny", "status": "RECOVERING", "submitted_at": 1.7e9, "job_duration": 1500,
             "recovery_count": 1},
            {"job_id": 8, "job_name": "tb-other", "status": "RUNNING", "submitted_at": 1.7e9},
            {"job_id": 3, "job_name": "tb-tiny", "status": "SUCCEEDED", "submitted_at": 1.6e9, "job_duration": 60}]
    (proj / "fake-sky/queue.json").write_text(json.dumps(jobs, indent=2))
    out = io.StringIO()
    assert L.manage(rec, "status", out=out) == 0
    assert sky_calls(fake_sky())[-1] == "jobs queue -o json"
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "tb-other" not in out.getvalue()
    assert lines[0].startswith("tb-tiny: managed job 3 SUCCEEDED (submitted ") and lines[0].endswith(
        ", 1 min, 0 recoveries)")
    assert lines[1].startswith("tb-tiny: managed job 7 RECOVERING") and lines[1].endswith(", 25 min, 1 recoveries)")
    (proj / "fake-sky/queue.json").write_text("[]")
    out = io.StringIO()
    assert L.manage(rec, "status", out=out) == 0 and "no managed job of that name" in out.getvalue()
    (proj / "fake-sky/queue.json").unlink()  # the jobs controller is down: SkyPilot's ClusterNotUpError
    out = io.StringIO()
    assert L.manage(rec, "status", out=out) == 0 and "no managed job in progress" in out.getvalue()


@pytest.mark.parametrize("hours, shown", [
    (0.3 / 60, "~15 min (<1 min training from the planner + 15 min assumed"),
    (0.6 / 60, "~16 min (1 min training from the planner + 15 min assumed"),
    (2.26, "~2 h 31 min (2 h 16 min training from the planner + 15 min assumed"),
])
def test_the_estimate_adds_up(hours, shown):
    est = L.Estimate(hours, 2.0, "table", "planner")
    assert est.render().startswith(shown)
    assert est.usd == pytest.approx(est.minutes / 60 * 2.0)
    assert L.Estimate(None, 2.0, "table", "no speed figure").render().startswith("unknown (no speed figure)")


def test_ctrl_c_tears_down(proj, fake_sky, monkeypatch):
    calls = []

    def interrupted(root, *args, **kw):
        calls.append(args)
        if args[0] == "launch":
            raise KeyboardInterrupt
        return L.skypilot.Result(args, 0, "", [])

    monkeypatch.setattr(L.skypilot, "run", interrupted)
    with pytest.raises(TunebookError, match="interrupted: tb-tiny was torn down") as exc:
        L.launch(load_recipe("tiny", proj), L.LaunchOptions("runpod", yes=True), out=io.StringIO())
    launched = next(c for c in calls if c[0] == "launch")
    assert exc.value.exit_code == 130 and calls[-1] == ("down", "-y", "tb-tiny")
    assert not any(c[0] == "logs" for c in calls)  # Ctrl-C: down at once, nothing saved
    assert "-i" in launched and "--down" in launched  # and the cluster downs itself if we die too


def test_sigterm_during_launch_tears_down_and_exits_143(proj, fake_sky):
    proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "--root", str(proj), "launch", "tiny", "--cloud",
                             "runpod", "--yes"], cwd=REPO, env={**os.environ, "FAKE_SKY_SLEEP": "60"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120  # the CLI plans the recipe first (seconds; more on a busy machine)
        while not any(c.startswith("launch ") for c in fake_sky()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert sky_calls(fake_sky())[-1] == "down -y tb-tiny"
    assert "stopped by SIGTERM: tb-tiny was torn down" in err and "Traceback" not in err


def test_without_yes_and_no_terminal_nothing_is_launched(proj, fake_sky):
    r = tunebook("--root", str(proj), "launch", "tiny", "--cloud", "runpod", env={"HF_TOKEN": SECRET})
    assert r.returncode == 2 and "needs confirmation" in r.stderr and fake_sky() == []
    assert SECRET not in r.stdout + r.stderr
