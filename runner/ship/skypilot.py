"""The one seam to SkyPilot: its own virtual environment, its task validator and its CLI.

SkyPilot pins many packages (pydantic, fastapi, ...) that must not disturb Axolotl's in `.venv`, so it lives in a
venv of its own, `.venv-launch` (`make launch-venv`), or wherever `$TUNEBOOK_SKY_VENV` says. tunebook never imports
`sky`: it writes a task YAML and runs SkyPilot's `sky` command or a small validator script in that venv.

A `sky` command that fails is one paragraph (the command, the last lines of its stderr without traceback frames, a
fix), never SkyPilot's traceback. Every `sky` command starts SkyPilot's local API server when none is running, and
it keeps running: tunebook stops one that its own commands started (api_server_as_found).
"""
from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from runner.console import say
from runner.errors import TunebookError

VENV_ENV = "TUNEBOOK_SKY_VENV"
DEFAULT_VENV = ".venv-launch"
VERSION = "0.14.1"  # what `make launch-venv` installs and the tests ran against

# Run inside SkyPilot's venv: read task files (JSON list of paths on stdin), parse each with SkyPilot's own
# parser (sky.Task.from_yaml_config: schema, resources, secrets, file mounts) and, where the task names a
# cloud, ask that cloud whether it supports what the task needs (multi-node, spot, Docker image, bucket
# mounts): the check `sky launch` makes before it provisions, done here offline. One JSON line per file.
_VALIDATOR = r"""
import json, sys
import yaml
import sky
from sky import clouds

def check(path):
    with open(path, encoding="utf-8") as fh:
        cfg = yaml.safe_load(fh)
    task = sky.Task.from_yaml_config(cfg)
    needs = task.get_required_cloud_features()
    for res in task.resources:
        if res.cloud is not None:
            res.cloud.check_features_are_supported(res, needs | res.get_required_cloud_features())
    res = sorted(task.resources, key=str)[0]
    return {"ok": True, "num_nodes": task.num_nodes, "cloud": None if res.cloud is None else str(res.cloud).lower(),
            "accelerators": res.accelerators, "use_spot": res.use_spot, "image": res.extract_docker_image(),
            "envs": sorted(task.envs), "inline_secrets": sorted(task.secrets),
            # a secret named without a value: resolved at launch from `--secret NAME` (this environment)
            "secrets": sorted({*task.secrets, *(r.name for r in getattr(task, "managed_secret_refs", []))}), "run": task.run, "setup": task.setup,
            "storage_mounts": sorted(task.storage_mounts), "sky": sky.__version__}

for path in json.load(sys.stdin):
    try:
        out = check(path)
    except Exception as exc:
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(out), flush=True)
"""


def venv(root: Path) -> Path:
    """SkyPilot's virtual environment: `$TUNEBOOK_SKY_VENV` (absolute or relative to the project root), else
    `.venv-launch` in the project."""
    return Path(root) / (os.environ.get(VENV_ENV) or DEFAULT_VENV)


def _exe(root: Path, name: str) -> Path:
    path = venv(root) / "bin" / name
    if not os.access(path, os.X_OK):
        raise TunebookError(f"SkyPilot is not installed: {path} is missing",
                            fix=f"Run `make launch-venv` (a venv of its own with skypilot[runpod,lambda]=={VERSION}), "
                                f"or set {VENV_ENV} to a venv that has SkyPilot.")
    return path


def validate(root: Path, paths: list[Path], timeout: float = 300) -> list[dict]:
    """SkyPilot's verdict on each task file, in order: {"ok": True, accelerators, cloud, num_nodes, use_spot,
    image, envs, secrets (names), inline_secrets (names given a value in the file), run, setup, storage_mounts} or {"ok": False, "error": "..."}. One SkyPilot process for
    all of them (importing sky takes seconds)."""
    if not paths:
        return []
    py = _exe(root, "python")
    try:
        proc = subprocess.run([str(py), "-c", _VALIDATOR], check=False, input=json.dumps([str(p) for p in paths]),
                              capture_output=True, text=True, timeout=timeout, cwd=root)
    except subprocess.TimeoutExpired:
        raise TunebookError(f"SkyPilot's validator did not answer within {timeout:.0f} s", exit_code=1,
                            fix=f"Check the SkyPilot venv ({venv(root)}) with `{py} -c 'import sky'`.") from None
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or len(results) != len(paths):
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise TunebookError(f"SkyPilot's validator failed (exit code {proc.returncode}):\n{tail}", exit_code=1,
                            fix=f"Reinstall it with `rm -rf {venv(root)} && make launch-venv`.")
    return results


def command(root: Path, *args: str) -> list[str]:
    """The argv of `sky ARGS` in SkyPilot's venv."""
    return [str(_exe(root, "sky")), *args]


# SkyPilot's CLI reports a failure on stderr as an exception chain; these are its scaffolding, not the message.
_CHAIN = ("The above exception was the direct cause of the following exception:",
          "During handling of the above exception, another exception occurred:")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
STDERR_KEPT = 200  # stderr lines kept per `sky` command (bounded memory; the message uses the last few)
NO_LOCAL_SERVER = "No SkyPilot API server is connected"  # `sky api info` when no local server runs


def message_lines(lines: list[str], n: int | None = 2) -> list[str]:
    """The last `n` (None: all) lines of a `sky` command's stderr that say something: colours, blank lines,
    traceback headers and frames (the indented lines after 'Traceback ...') and the chain separators left out."""
    kept, in_frames = [], False
    for raw in lines:
        line = _ANSI.sub("", raw).rstrip()
        if line.startswith("Traceback (most recent call last)"):
            in_frames = True
            continue
        if in_frames and (not line or line[0].isspace()):
            continue
        in_frames = False
        line = line.strip()
        if line and line not in _CHAIN and (not kept or kept[-1] != line):
            kept.append(line if len(line) <= 200 else line[:197] + "...")
    return kept if n is None else kept[-n:]


def network_fix(root: Path) -> str:
    """The usual fix when a `sky` command fails: SkyPilot talks to its API server and the clouds."""
    sky = venv(root) / "bin" / "sky"
    return (f"Check the network and this machine's cloud credentials (`{sky} check`); `{sky} api info` says "
            "whether SkyPilot's API server answers. Then run it again.")


@dataclass
class Result:
    """One `sky` command: its arguments (after `sky`), exit code, stdout when captured, and the last lines of
    its stderr (up to STDERR_KEPT)."""

    args: tuple[str, ...]
    rc: int
    stdout: str
    stderr: list[str]

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def summary(self) -> str:
        """"`sky ARGS` exited with N: <its last message lines>", on one line."""
        said = "; ".join(message_lines(self.stderr))
        return f"`sky {' '.join(self.args)}` exited with {self.rc}" + (f": {said}" if said else "")

    def error(self, what: str, root: Path, fix: str | None = None) -> TunebookError:
        """A one-paragraph TunebookError (exit 1): what failed, the command and what it said, a fix."""
        return TunebookError(f"{what}: {self.summary()}", exit_code=1, fix=fix or network_fix(root))


def _stop(proc: subprocess.Popen) -> None:
    """Stop `sky` (after Ctrl-C or SIGTERM here): ask, then kill. Ctrl-C has reached it already (same process
    group); SIGTERM sent to tunebook alone has not."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run(root: Path, *args: str, capture: bool = False, stdout=None, echo: bool = True) -> Result:
    """Run `sky ARGS`; the caller decides what a non-zero exit means (call() raises). stdout goes to this
    terminal (SkyPilot's progress and logs), or is captured (`capture`), or into the open file `stdout`. stderr
    is kept (its last STDERR_KEPT lines) so that a failure becomes one paragraph instead of SkyPilot's
    traceback; on success it is echoed without traceback frames (`echo`). KeyboardInterrupt (Ctrl-C, or SIGTERM
    turned into one by the CLI) stops `sky` and propagates. Secrets reach it by name (`--secret NAME` reads the
    value from this environment), never on the command line."""
    proc = subprocess.Popen(command(root, *args), cwd=root, stdout=subprocess.PIPE if capture else stdout,
                            stderr=subprocess.PIPE, text=True, errors="replace")
    kept: collections.deque = collections.deque(maxlen=STDERR_KEPT)
    reader = threading.Thread(target=kept.extend, args=(proc.stderr,), daemon=True)
    reader.start()
    try:
        text = proc.stdout.read() if capture else ""
        rc = proc.wait()
    except BaseException:
        _stop(proc)
        raise
    # a process `sky` left behind may hold stderr open; its last lines are what matters, so don't wait for it
    reader.join(timeout=5)
    lines = list(kept)
    if rc == 0 and echo:
        for line in message_lines(lines, None):
            say(f"SkyPilot: {line}")
    return Result(tuple(args), rc, text, lines)


def call(root: Path, *args: str, what: str, fix: str | None = None, **kw) -> Result:
    """run(), and a non-zero exit is a TunebookError saying `what`, the command, what it said and `fix`."""
    res = run(root, *args, **kw)
    if not res.ok:
        raise res.error(what, root, fix)
    return res


def json_output(text: str):
    """The JSON a `sky ... -o json` printed, after whatever SkyPilot said before it (e.g. that it started its API
    server); None when there is none."""
    lines = _ANSI.sub("", text).splitlines()
    for i, line in enumerate(lines):
        if line.startswith(("[", "{")):
            try:
                return json.loads("\n".join(lines[i:]))
            except ValueError:
                return None
    return None


def api_server_running(root: Path) -> bool | None:
    """Whether SkyPilot's local API server is up (`sky api info`, which starts none): True, False (no local
    server is running), None (a remote API server, or no clear answer)."""
    res = run(root, "api", "info", "-o", "json", capture=True, echo=False)
    info = json_output(res.stdout)
    if isinstance(info, dict) and isinstance(info.get("server"), dict):
        return info["server"].get("status") == "healthy"
    return False if NO_LOCAL_SERVER in res.stdout else None


@contextlib.contextmanager
def api_server_as_found(root: Path):
    """Leave SkyPilot's local API server as it was found. Any `sky` command starts one when none is running, and
    it keeps running; one that the commands inside this block started is stopped at the end (`sky api stop`).
    A server that was already up, or a remote one, is left alone."""
    before = api_server_running(root)
    try:
        yield
    finally:
        if before is False and api_server_running(root):
            res = run(root, "api", "stop", capture=True, echo=False)
            say("stopped SkyPilot's local API server (it was started for this command)" if res.ok else
                f"SkyPilot's local API server keeps running: {res.summary()}")
