"""The `tunebook` command line. Each command is a thin layer over the modules that do the work.

COMMAND_GROUPS is the whole command table: each module adds its commands with register(subparsers), in this
order (the order `tunebook --help` lists them), and each command calls into the library with the project root
and the recipe that runner.cli.common builds once from its arguments."""
from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
import threading

from runner.cli import bench, data, evaluate, pipeline, plan, ship
from runner.errors import TunebookError

COMMAND_GROUPS = (
    pipeline,   # validate, resolve, train, status, model
    plan,       # plan
    data,       # data check, data preview
    evaluate,   # eval, report
    ship,       # docker build, launch (SkyPilot), serve, export
    bench,      # bench
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tunebook", description="Declarative fine-tuning of open LLMs on Axolotl.")
    p.add_argument("--root", help="project root (the folder holding recipes/); default: current folder")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(sub)
    return p


class _NoiseFilter(logging.Filter):
    """Drops log lines of libraries that are harmless here but read like a broken install.

    torchao (imported by transformers/axolotl for Axolotl's own config check in `validate`, and by training)
    tries to load its optional compiled kernels: `_C_mxfp8` (MX-FP8 kernels for Blackwell GPUs) ships built for
    CPython 3.10 and `_C_cutlass_90a` needs an sm_90 GPU, so on this Python, or on a CPU, each logs "Failed to
    load ...so" on every command; torchao falls back to its Python code and tunebook uses neither kernel. torch
    logs a deprecation notice for each enum torchao registers with its pytree. Both go to Axolotl's train.log
    in full, where a run's diagnosis belongs."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if record.name.startswith("torchao") and msg.startswith("Failed to load") and "/torchao/_C" in msg:
            return False
        return not (record.name == "torch.utils._pytree" and "is an Enum subclass" in msg)


NOISE_FILTER = _NoiseFilter()


class Signalled(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is, so that it unwinds as on Ctrl-C: Axolotl's process group
    is stopped (runner.train.axolotl.run_logged) and temp files are removed (runner.fsutil)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_signalled(signum, frame):
    raise Signalled(signum)


OS_FIXES = {
    errno.ENOSPC: "The disk is full: free space on it (`df -h {dir}`) or point $TUNEBOOK_RUNS at a bigger disk, "
                  "and run again; finished stages are kept.",
    errno.EDQUOT: "The disk quota is used up: free space or point $TUNEBOOK_RUNS at another disk, and run again.",
    errno.EROFS: "That file system is read-only: point $TUNEBOOK_RUNS at a writable folder (or work in a writable "
                 "copy of the project).",
    errno.EACCES: "Permission denied: fix the permissions (`ls -ld {dir}`) or point $TUNEBOOK_RUNS at a folder "
                  "you can write.",
    errno.EPERM: "Operation not permitted: fix the permissions (`ls -ld {dir}`) or point $TUNEBOOK_RUNS at a "
                 "folder you can write.",
    errno.ENOTDIR: "A file is in the way where tunebook needs a folder: move it away.",
    errno.EEXIST: "A file is in the way where tunebook needs a folder: move it away.",
    errno.EISDIR: "A folder is where tunebook needs a file: move it away.",
}


def os_error_message(exc: OSError) -> str:
    """One paragraph for an OSError no module turned into a TunebookError: what, the path, the fix."""
    path = exc.filename2 or exc.filename
    what = exc.strerror or str(exc)
    fix = OS_FIXES.get(exc.errno, "Check the path, the disk and the permissions, and run again.")
    folder = os.path.dirname(os.fspath(path)) if path else "."
    return f"error: {what}" + (f" (at {os.fspath(path)})" if path else "") + ". " + fix.format(dir=folder or ".")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    for name in ("torchao", "torch.utils._pytree"):
        if NOISE_FILTER not in logging.getLogger(name).filters:
            logging.getLogger(name).addFilter(NOISE_FILTER)
    parser = build_parser()
    args = parser.parse_args(argv)
    saved = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            saved[sig] = signal.signal(sig, _raise_signalled)
    try:
        return args.func(args) or 0
    except TunebookError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        why = f"stopped by {signal.Signals(exc.signum).name}" if isinstance(exc, Signalled) else "interrupted"
        hint = ("; finished stages are kept and an interrupted stage resumes from its last checkpoint on the "
                "next run" if args.command == "train" else "")
        print(f"error: {why}{hint}", file=sys.stderr)
        return 128 + (exc.signum if isinstance(exc, Signalled) else signal.SIGINT)
    except OSError as exc:
        print(os_error_message(exc), file=sys.stderr)
        return 1
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
