"""Run one Axolotl command as a subprocess: output streamed to the terminal and to a log file."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from runner import hardware as hw
from runner.errors import TunebookError

# The tree this `runner` package was imported from, when it is a source checkout (pyproject.toml beside runner/).
SOURCE_TREE = Path(__file__).resolve().parents[2]
RELEVANT = re.compile(r"(Error|Exception|error:|Traceback|CUDA|out of memory|Killed|ValueError|raise )")


# The one seam between tunebook and Axolotl's executable. Tests of pure bookkeeping (lock, staleness, resume,
# manifest, report, gates) point it at a stand-in that writes recorded Axolotl outputs; everything that shows
# what only a real training can show runs the real `axolotl`.
AXOLOTL_EXE_ENV = "TUNEBOOK_AXOLOTL"

# File descriptors every Axolotl process inherits: the recipe's run lock (runner.pipeline.lock.run_lock), so that
# an Axolotl left running by a tunebook killed with SIGKILL still holds it and no second run trains beside it.
INHERITED_FDS: set[int] = set()


def venv_bin() -> Path:
    return Path(sys.executable).parent


def axolotl_exe() -> str:
    """The `axolotl` executable: $TUNEBOOK_AXOLOTL when set, else our venv's, else whatever is on PATH."""
    override = os.environ.get(AXOLOTL_EXE_ENV)
    if override:
        return override
    exe = venv_bin() / "axolotl"
    return str(exe) if exe.exists() else "axolotl"


def axolotl_cmd(*args: str) -> list[str]:
    """`axolotl <args>` with the executable of axolotl_exe()."""
    return [axolotl_exe(), *args]


def child_env(extra: dict | None = None) -> dict:
    """Environment for Axolotl: our venv's bin on PATH (Axolotl execs `accelerate` by name), all cores for
    torch (accelerate otherwise pins one thread), offline-friendly telemetry settings, this checkout of tunebook
    first on PYTHONPATH."""
    env = dict(os.environ)
    env["PATH"] = f"{venv_bin()}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", str(hw.cpu_cores()))
    env.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if (SOURCE_TREE / "pyproject.toml").is_file():
        # Axolotl imports tunebook's own plugin (runner.train.early_stop_plugin) in its process: it must be this
        # checkout's, the code that resolved the config, even when the venv's editable install points at another
        # checkout (a git worktree). An installed tunebook (site-packages) needs nothing: it is on Axolotl's path.
        rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(SOURCE_TREE)]
        env["PYTHONPATH"] = os.pathsep.join([str(SOURCE_TREE), *rest])
    env.update(extra or {})
    return env


LAUNCHERS = ("accelerate", "torchrun")
DIST_ENV = ("GPUS", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "TUNEBOOK_LAUNCHER")
DEFAULT_MASTER_PORT = 29500


def _env_int(env, name: str, default: int | None, minimum: int) -> int | None:
    raw = str(env.get(name, "")).strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise TunebookError(f"{name}={raw!r} is not a whole number >= {minimum}",
                            fix=f"Set {name} to a number (see docs/deploy.md, multi-GPU and multi-node), or unset it.")
    return value


def dist_settings(env=None) -> dict:
    """GPUS, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT and TUNEBOOK_LAUNCHER from the environment (the names
    torchrun and most schedulers use), as train_command() keyword arguments. Unset means: every GPU of this
    machine, one node, accelerate."""
    env = os.environ if env is None else env
    launcher = str(env.get("TUNEBOOK_LAUNCHER", "") or "accelerate").strip()
    if launcher not in LAUNCHERS:
        raise TunebookError(f"TUNEBOOK_LAUNCHER={launcher!r} is not a launcher tunebook knows",
                            fix=f"Use one of: {', '.join(LAUNCHERS)}.")
    return {"gpus": _env_int(env, "GPUS", None, 1), "nnodes": _env_int(env, "NNODES", 1, 1),
            "node_rank": _env_int(env, "NODE_RANK", 0, 0), "master_addr": (env.get("MASTER_ADDR") or None),
            "master_port": _env_int(env, "MASTER_PORT", DEFAULT_MASTER_PORT, 1), "launcher": launcher}


def train_command(config_path, hardware: hw.Hardware, gpus: int | None = None, nnodes: int = 1, node_rank: int = 0,
                  master_addr: str | None = None, master_port: int = DEFAULT_MASTER_PORT,
                  deepspeed: str | os.PathLike | None = None, launcher: str = "accelerate",
                  axolotl: str | None = None) -> list[str]:
    """The exact argv that trains one stage: `axolotl train CONFIG [--deepspeed JSON] --launcher ...`.

    CPU: Axolotl's in-process python launcher. GPUs: `accelerate launch` (default) or `torchrun`, with one process
    per GPU on each of `nnodes` machines; node 0 (`master_addr:master_port`) is where the others rendezvous.
    `deepspeed` passes a DeepSpeed JSON on the command line (a config's own `deepspeed:` key works as well:
    Axolotl sets DeepSpeed up inside each process either way)."""
    cmd = [axolotl or axolotl_exe(), "train", str(config_path)]
    if launcher not in LAUNCHERS:
        raise TunebookError(f"unknown launcher '{launcher}'", fix=f"Use one of: {', '.join(LAUNCHERS)}.")
    if not hardware.cuda:
        if (gpus or 1) > 1 or nnodes > 1:
            raise TunebookError(f"{gpus or 1} GPU(s) on {nnodes} node(s) requested, but this machine has no CUDA GPU",
                                fix="Unset GPUS/NNODES to train on the CPU, or run on a GPU machine "
                                    "(`tunebook launch`).")
        return cmd + ["--launcher", "python"]
    n = gpus or hardware.gpu_count or 1
    if hardware.gpu_count and n > hardware.gpu_count:
        raise TunebookError(f"GPUS={n} but this machine has {hardware.gpu_count} GPU(s) ({hardware.gpu_name})",
                            fix=f"Set GPUS to at most {hardware.gpu_count}, or unset it to use them all.")
    if nnodes > 1:
        if not master_addr:
            raise TunebookError(f"NNODES={nnodes} needs MASTER_ADDR: the address of node 0, reachable from every node",
                                fix="Set MASTER_ADDR (and MASTER_PORT, default 29500) to the same values on all nodes, "
                                    "and NODE_RANK to 0..NNODES-1 (0 on the node at MASTER_ADDR).")
        if not 0 <= node_rank < nnodes:
            raise TunebookError(f"NODE_RANK={node_rank} is outside 0..{nnodes - 1} (NNODES={nnodes})",
                                fix="Number the nodes 0..NNODES-1; node 0 runs at MASTER_ADDR.")
    if deepspeed:
        cmd += ["--deepspeed", str(deepspeed)]
    cmd += ["--launcher", launcher, "--"]
    if launcher == "torchrun":
        cmd += ["--nnodes", str(nnodes), "--nproc_per_node", str(n)]
        if nnodes > 1:
            cmd += ["--node_rank", str(node_rank), "--master_addr", str(master_addr), "--master_port", str(master_port)]
        return cmd
    cmd += ["--num_processes", str(n * nnodes), "--num_machines", str(nnodes)]
    if n * nnodes > 1:
        cmd.append("--multi_gpu")  # accelerate only infers it from the GPUs it sees on *this* machine
    if nnodes > 1:
        cmd += ["--machine_rank", str(node_rank), "--main_process_ip", str(master_addr),
                "--main_process_port", str(master_port)]
    return cmd


def launcher_args(h: hw.Hardware, gpus: int | None = None, nnodes: int | None = None) -> list[str]:
    """The part of train_command() after the config path, with GPUS/NNODES/NODE_RANK/MASTER_ADDR/MASTER_PORT/
    TUNEBOOK_LAUNCHER taken from the environment (explicit `gpus`/`nnodes` win)."""
    kw = dist_settings()
    if gpus is not None:
        kw["gpus"] = gpus
    if nnodes is not None:
        kw["nnodes"] = nnodes
    return train_command("CONFIG", h, axolotl="axolotl", **kw)[3:]


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


DISK_FULL = re.compile(r"No space left on device|Errno 28\b|ENOSPC|Disk quota exceeded")


def _kill_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False when no process of it is left."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def stop_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the process group led by `proc` (Axolotl's, see run_logged), then SIGKILL what is left after
    `grace` seconds; reaps `proc`."""
    if _kill_group(proc.pid, signal.SIGTERM):
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    _kill_group(proc.pid, signal.SIGKILL)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def run_logged(cmd: list[str], log: Path, stage: str, env: dict | None = None, quiet: bool = False,
               cwd: Path | None = None, tool: str = "Axolotl") -> None:
    """Run `cmd`, tee its output to `log`; raise TunebookError with the log's tail when it fails (`tool`: the
    program's name in that message)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n".encode())
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env or child_env(),
                                cwd=cwd, start_new_session=True, pass_fds=tuple(sorted(INHERITED_FDS)))
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
            # Ctrl-C, SIGTERM (runner.cli.main turns it into KeyboardInterrupt) or an error of ours: Axolotl runs
            # in its own process group (so a terminal's Ctrl-C reaches us first), so stop the whole group here:
            # no trainer, launcher or data worker is left running without us.
            stop_group(proc)
            raise
    if code != 0:
        tail = log_tail(log)
        if DISK_FULL.search(tail):
            raise TunebookError(
                f"stage '{stage}' failed: the disk is full (No space left on device). Last relevant lines of the "
                f"log:\n{tail}\n", where=str(log),
                fix=f"Free space on the disk holding {log.parent} (`df -h {log.parent}`), or point $TUNEBOOK_RUNS at "
                    "a bigger disk, and run again: the recipe is fine, finished stages are kept and this one "
                    "resumes from its last checkpoint.", exit_code=1)
        raise TunebookError(
            f"stage '{stage}' failed: {tool} exited with code {code}. Last relevant lines of the log:\n{tail}\n",
            where=str(log), fix="Read the full log at that path; fix the recipe and run again "
                                "(finished stages are not re-run).", exit_code=1)
