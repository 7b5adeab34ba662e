"""Run one Axolotl command as a subprocess: output streamed to the terminal and to a log file."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from . import hardware as hw
from .errors import TunebookError

RELEVANT = re.compile(r"(Error|Exception|error:|Traceback|CUDA|out of memory|Killed|ValueError|raise )")


def venv_bin() -> Path:
    return Path(sys.executable).parent


def child_env(extra: dict | None = None) -> dict:
    """Environment for Axolotl: our venv's bin on PATH (Axolotl execs `accelerate` by name), all cores for
    torch (accelerate otherwise pins one thread), offline-friendly telemetry settings."""
    env = dict(os.environ)
    env["PATH"] = f"{venv_bin()}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", str(hw.cpu_cores()))
    env.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    env.update(extra or {})
    return env


def launcher_args(h: hw.Hardware, gpus: int | None = None, nnodes: int | None = None) -> list[str]:
    """How Axolotl starts training here: in-process on a CPU, accelerate (one or more GPUs, nodes)."""
    if not h.cuda:
        return ["--launcher", "python"]
    n = gpus or h.gpu_count or 1
    env = os.environ
    nnodes = nnodes or int(env.get("NNODES", "1"))
    if n <= 1 and nnodes <= 1:
        return ["--launcher", "accelerate"]
    args = ["--launcher", "accelerate", "--", "--num_processes", str(n * nnodes), "--num_machines", str(nnodes)]
    if nnodes > 1:
        args += ["--machine_rank", env.get("NODE_RANK", "0"), "--main_process_ip", env.get("MASTER_ADDR", "127.0.0.1"),
                 "--main_process_port", env.get("MASTER_PORT", "29500")]
    return args


def log_tail(log: Path, n: int = 12) -> str:
    """The last relevant lines of a log: from the last traceback or error, else the last n lines."""
    try:
        lines = log.read_text(errors="replace").replace("\r", "\n").splitlines()
    except OSError:
        return ""
    lines = [l for l in lines if l.strip()]
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("Traceback"):
            block = lines[i:]
            return "\n".join(block[-n:])
    hits = [l for l in lines if RELEVANT.search(l)]
    return "\n".join((hits or lines)[-n:])


def run_logged(cmd: list[str], log: Path, stage: str, env: dict | None = None, quiet: bool = False,
               cwd: Path | None = None) -> None:
    """Run `cmd`, tee its output to `log`; raise TunebookError with the log's tail when it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n".encode())
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env or child_env(),
                                cwd=cwd, start_new_session=True)
        try:
            assert proc.stdout is not None
            while chunk := proc.stdout.read1(65536) if hasattr(proc.stdout, "read1") else proc.stdout.read(4096):
                fh.write(chunk)
                fh.flush()
                if not quiet:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.buffer.flush()
            code = proc.wait()
        except BaseException:
            # Ctrl-C or our own death: don't leave a trainer running without us.
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=20)
            except Exception:
                os.killpg(proc.pid, signal.SIGKILL)
            raise
    if code != 0:
        tail = log_tail(log)
        raise TunebookError(
            f"stage '{stage}' failed: Axolotl exited with code {code}. Last relevant lines of the log:\n{tail}\n",
            where=str(log), fix="Read the full log at that path; fix the recipe and run again "
                                "(finished stages are not re-run).", exit_code=1)
