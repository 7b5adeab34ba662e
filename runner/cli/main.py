"""The `tunebook` command line. Each command is a thin layer over the modules that do the work.

COMMAND_GROUPS is the whole command table: each module adds its commands with register(subparsers), in this
order (the order `tunebook --help` lists them), and each command calls into the library with the project root
and the recipe that runner.cli.common builds once from its arguments."""
from __future__ import annotations

import argparse
import os
import sys

from runner.cli import bench, data, evaluate, pipeline, plan, ship
from runner.errors import TunebookError

COMMAND_GROUPS = (
    pipeline,   # validate, resolve, train, status, model
    plan,       # plan
    data,       # data check, data preview
    evaluate,   # eval, report
    ship,       # docker build, launch, terminate, serve, export, artifacts
    bench,      # bench
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tunebook", description="Declarative fine-tuning of open LLMs on Axolotl.")
    p.add_argument("--root", help="project root (the folder holding recipes/); default: current folder")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except TunebookError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; finished stages are kept and an interrupted stage resumes from its last "
              "checkpoint on the next run", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
