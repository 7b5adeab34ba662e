"""Damaged state, a damaged disk, two runs at once, a killed run, --force, and secrets: on the stand-in Axolotl.

Each ends in a one-paragraph error naming the path and the fix (no traceback), never in a lock silently read as
empty or rewritten, a trainer left running, a checkpoint resumed that should not be, or a secret in a file."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.fakes.pipeline_project import CHAIN, RESUME, lock, states, tb, train, trained_stages


def _no_traceback(r):
    assert "Traceback" not in r.stdout + r.stderr, (r.stdout + r.stderr)[-3000:]


# ------------------------------------------------------------------------------------------------ the lock

DAMAGED_LOCKS = {
    "a-list": b"[1, 2, 3]\n",
    "stages-a-list": b'{"version": 1, "stages": ["sft"]}\n',
    "entry-a-string": b'{"version": 1, "stages": {"sft": "done"}}\n',
    "input-hash-a-number": b'{"version": 1, "stages": {"sft": {"kind": "sft", "input_hash": 7}}}\n',
    "inputs-data-a-list": b'{"stages": {"sft": {"input_hash": "x", "inputs": {"data": []}}}}\n',
    "failed-gates-not-strings": b'{"stages": {"sft": {"input_hash": "x", "gate": "failed", "failed_gates": [1]}}}',
    "truncated": None,  # the first half of the real lock
    "binary": b"\x00\x1f\x8b\x08garbage\xff\xfe",
    "empty": b"",
    "nested": b"[" * 5000 + b"]" * 5000,
}


@pytest.mark.parametrize("kind", list(DAMAGED_LOCKS))
def test_a_damaged_lock_is_reported_with_its_path_and_never_rewritten(proj, standin, kind):
    root = proj(CHAIN)
    train(root, "--until", "sft")
    path = root / "runs/r/tunebook.lock"
    data = DAMAGED_LOCKS[kind]
    if data is None:
        data = path.read_bytes()[: len(path.read_bytes()) // 2]
    path.write_bytes(data)
    for cmd in ("status", "train"):
        r = tb(root, cmd, "r")
        assert r.returncode == 2, (cmd, r.stderr[-2000:])
        _no_traceback(r)
        assert "the lock file is damaged" in r.stderr and str(path) in r.stderr
        assert f"mv {path} {path}.damaged" in r.stderr
    assert path.read_bytes() == data, "a damaged lock is never rewritten"
    assert len(standin.calls("train")) == 1, "nothing trains on a damaged lock"


def test_a_lock_that_is_a_folder_and_a_damaged_manifest(proj, standin):
    root = proj(CHAIN)
    train(root, "--until", "sft")
    man = root / "runs/r/manifest.json"
    man.write_text('{"stages": "oops"}')
    r = tb(root, "train", "r")
    assert r.returncode == 2 and "the run manifest is damaged" in r.stderr and str(man) in r.stderr
    _no_traceback(r)
    assert man.read_text() == '{"stages": "oops"}'
    man.unlink()
    path = root / "runs/r/tunebook.lock"
    path.unlink()
    path.mkdir()
    r = tb(root, "status", "r")
    assert r.returncode == 2 and "the lock file is damaged" in r.stderr and "not a regular file" in r.stderr


# -------------------------------------------------------------------------------------------- a damaged disk


def test_a_runs_folder_that_cannot_be_made_names_the_path(proj, standin):
    # Tests run as root, whom chmod does not stop: a file where the runs folder should be fails the same way.
    root = proj(CHAIN)
    (root / "runs").write_text("not a folder")
    for cmd in (["data", "check", "r", "--no-tokens"], ["train", "r", "--quiet"]):
        r = tb(root, *cmd)
        assert r.returncode == 1, (cmd, r.stderr[-2000:])
        _no_traceback(r)
        assert str(root / "runs") in r.stderr and "move it away" in r.stderr


@pytest.mark.parametrize("code,fix", [(errno.ENOSPC, "The disk is full"), (errno.EROFS, "read-only"),
                                      (errno.EACCES, "Permission denied")])
def test_a_full_or_read_only_disk_while_writing_is_reported_with_the_path(proj, standin, monkeypatch, code, fix):
    root = proj(CHAIN)
    train(root, "--until", "sft")
    before = (root / "runs/r/tunebook.lock").read_bytes()
    real = os.replace

    def replace(src, dst, *a, **kw):  # the one seam every result goes through (runner.fsutil.atomic_open)
        if str(dst).startswith(str(root / "runs")):
            raise OSError(code, os.strerror(code), str(dst))
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", replace)
    r = tb(root, "train", "r", "--quiet", "--force", "sft")
    assert r.returncode == 1, r.stderr[-2000:]
    _no_traceback(r)
    assert fix in r.stderr and str(root / "runs/r") in r.stderr and "recipe" not in r.stderr.split("(at")[0]
    monkeypatch.setattr(os, "replace", real)
    assert (root / "runs/r/tunebook.lock").read_bytes() == before, "what finished is still recorded"
    assert not [p for p in (root / "runs").rglob("*.tmp")], "no temp file is left behind"


def test_a_full_disk_during_training_is_not_called_a_recipe_problem(proj, standin, tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "axolotl-disk-full"
    fake.write_text("#!/bin/sh\necho 'Saving model checkpoint to output/checkpoint-2'\n"
                    "echo 'OSError: [Errno 28] No space left on device'\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("TUNEBOOK_AXOLOTL", str(fake))
    root = proj(CHAIN)
    r = train(root, ok=False)
    assert r.returncode == 1
    _no_traceback(r)
    assert "the disk is full" in r.stderr and "the recipe is fine" in r.stderr and "fix the recipe" not in r.stderr
    assert "runs/r/sft/train.log" in r.stderr


# ---------------------------------------------------------------------------------- two runs, a killed run


def _wait(cond, timeout=60.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return True
        time.sleep(0.1)
    return False


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_a_second_train_is_refused_and_sigterm_stops_axolotls_whole_group(proj, standin):
    root = proj(RESUME)
    env = {**os.environ, "TUNEBOOK_STANDIN_HANG_AT": "3", "PYTHONPATH": str(REPO)}
    first = subprocess.Popen([sys.executable, "-m", "runner.cli", "--root", str(root), "train", "r", "--quiet"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait(lambda: any(c.get("last_step") == 3 for c in standin.calls("train"))), "stand-in never hung"
        hung = standin.calls("train")[-1]
        assert hung["sid"] == hung["pid"] != first.pid, "Axolotl runs in its own session and process group"
        run_lock = root / "runs/r/.tunebook-run.lock"
        assert run_lock.read_text().split()[0] == str(first.pid)

        second = train(root, ok=False)
        assert second.returncode == 1 and f"PID {first.pid}" in second.stderr and str(run_lock) in second.stderr
        assert "another `tunebook train r` is running" in second.stderr
        _no_traceback(second)

        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "SIGTERM" in err and "Traceback" not in err
    assert _wait(lambda: not _alive(hung["pid"]), 10), "the stand-in Axolotl outlived tunebook"
    with pytest.raises(ProcessLookupError):
        os.killpg(hung["pid"], 0)  # nothing of its process group is left
    assert not [p for p in (root / "runs").rglob("*.tmp")]
    assert "sft" not in (lock(root)["stages"] if (root / "runs/r/tunebook.lock").exists() else {})

    # The killed run's lock file is stale (the kernel released the flock): the next run takes it and resumes.
    r = train(root)
    assert "sft: resuming from checkpoint-2 (a previous run of this stage was interrupted)" in r.stderr
    assert standin.calls("train")[-1]["first_step"] == 3
    assert states(root) == {"sft": "done", "merge": "done"}


def test_data_check_takes_the_run_lock_and_says_which_command_holds_it(proj, standin):
    """`data check` writes runs/<recipe>/data/, which a running train reads and hashes: it waits its turn, and a
    train beside a running `data check` is refused naming that command (flock conflicts between two open files
    even in one process, so this process holding the lock stands for the other command)."""
    from runner.layout import RunLayout
    from runner.pipeline.lock import run_lock

    root = proj(RESUME)
    layout = RunLayout.for_recipe(root, "r")
    with run_lock(layout):
        r = tb(root, "data", "check", "r", "--no-tokens")
        assert r.returncode == 1, r.stderr[-2000:]
        _no_traceback(r)
        assert (f"another `tunebook train r` is running (PID {os.getpid()}) and holds the run lock, so `tunebook "
                "data check` cannot write the run folder now") in " ".join(r.stderr.split())
        assert not (root / "runs/r/data").exists(), "nothing written beside the running train"
    with run_lock(layout, "data check"):
        assert layout.run_lock.read_text() == f"{os.getpid()} data check\n"
        r = train(root, ok=False)
        assert r.returncode == 1 and "another `tunebook data check r` is running" in " ".join(r.stderr.split())
    assert standin.calls("train") == []
    r = tb(root, "data", "check", "r", "--no-tokens")  # the lock is free again
    assert r.returncode == 0, r.stderr[-2000:]
    assert (root / "runs/r/data/report.json").is_file()


def test_an_axolotl_left_running_by_a_sigkilled_train_still_holds_the_run_lock(proj, standin):
    root = proj(RESUME)
    env = {**os.environ, "TUNEBOOK_STANDIN_HANG_AT": "3", "PYTHONPATH": str(REPO)}
    first = subprocess.Popen([sys.executable, "-m", "runner.cli", "--root", str(root), "train", "r", "--quiet"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    hung = None
    try:
        assert _wait(lambda: any(c.get("last_step") == 3 for c in standin.calls("train")))
        hung = standin.calls("train")[-1]
        first.kill()  # SIGKILL: tunebook cannot stop its Axolotl; the orphan keeps training
        first.wait(timeout=30)
        assert _alive(hung["pid"])
        r = train(root, ok=False)
        assert r.returncode == 1 and "left running" in r.stderr and f"PID {first.pid}" in r.stderr, r.stderr
        assert len(standin.calls("train")) == 1, "no second training beside the orphan"
    finally:
        if first.poll() is None:
            first.kill()
        if hung:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(hung["pid"], signal.SIGKILL)
    assert _wait(lambda: not _alive(hung["pid"]), 10)
    r = train(root)
    assert "resuming from checkpoint-2" in r.stderr


# ------------------------------------------------------------------------------------------------- --force


def test_force_starts_the_stage_fresh_and_never_resumes_an_old_checkpoint(proj, standin):
    root = proj(RESUME)
    train(root)
    out = root / "runs/r/sft/output"
    assert (out / "checkpoint-6").is_dir()
    r = train(root, "--force", "sft")
    assert "sft: --force: starting fresh (the previous run's checkpoints and outputs are removed)" in r.stderr
    assert "resuming" not in r.stderr
    last = standin.calls("train")[-1]
    assert last["resumed_from"] is None and last["first_step"] == 1 and last["global_step"] == 6
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert [h["step"] for h in state["log_history"] if "loss" in h] == [1, 2, 3, 4, 5, 6]


def test_damaged_outputs_of_a_finished_stage_retrain_from_scratch(proj, standin):
    root = proj(RESUME)
    train(root)
    (root / "runs/r/sft/output/adapter_model.safetensors").write_bytes(b"damaged")
    r = train(root)
    assert "resuming" not in r.stderr and "starting fresh (the stage had finished" in r.stderr
    assert standin.calls("train")[-1]["first_step"] == 1
    assert trained_stages(standin) == ["sft", "sft"]


# ------------------------------------------------------------------------------------------------- secrets

SECRETS = {"HF_TOKEN": "hf_tunebookTestSecret0001", "WANDB_API_KEY": "wandbTestSecret0002xyz",
           "OPENAI_API_KEY": "sk-tunebookTestSecret0003", "MY_SERVICE_SECRET": "svcTestSecret0004",
           "GITHUB_TOKEN": "ghp_tunebookTestSecret0005", "AWS_SECRET_ACCESS_KEY": "awsTestSecret0006abc"}


def test_no_secret_reaches_a_file_of_the_run_or_the_export(proj, standin, monkeypatch):
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    root = proj(CHAIN)
    r = train(root)
    r2 = tb(root, "export", "r")
    assert r2.returncode == 0, r2.stderr[-2000:]
    found = []
    files = [p for p in (root / "runs").rglob("*") if p.is_file()]
    assert any(p.name == "tunebook.lock" for p in files) and any(p.name == "manifest.json" for p in files)
    assert any(p.name == "train.log" for p in files)
    blobs = [(str(p), p.read_bytes()) for p in files]
    for p in files:
        if p.name.endswith(".tar.gz"):
            with tarfile.open(p) as tar:
                for m in tar.getmembers():
                    if m.isfile():
                        blobs.append((f"{p}:{m.name}", tar.extractfile(m).read()))
    blobs += [("stdout", (r.stdout + r2.stdout).encode()), ("stderr", (r.stderr + r2.stderr).encode())]
    for where, data in blobs:
        for k, v in SECRETS.items():
            if v.encode() in data:
                found.append(f"{k} in {where}")
    assert not found, found
