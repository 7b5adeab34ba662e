"""Ship commands: `docker build`, `launch`, `terminate`, `serve`, `export`, and `artifacts` (the container's side
of launch). Each is a thin layer over runner.ship.launch / runner.ship.serve / runner.ship.export (docs/deploy.md)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from runner.cli.common import loaded_recipe, project_root, resolved_recipe
from runner.console import say
from runner.errors import TunebookError
from runner.layout import RunLayout
from runner.ship import docker
from runner.ship import launch as L
from runner.ship.export import export
from runner.ship.providers import CLOUDS
from runner.ship.serve import serve


# ---------------------------------------------------------------------------------------------- docker build
def cmd_docker_build(args) -> int:
    root = project_root(args)
    builder = docker.choose_builder(args.builder)
    commit = docker.git_tag(root)
    tag = args.tag or f"{args.repo}:{commit}"
    cmd = docker.build_command(root, builder, tag, args.base_image, args.extras, args.pip_extra, commit,
                               latest=not args.no_latest)
    print(" ".join(cmd), flush=True)
    if args.dry_run:
        return 0
    docker.run_build(cmd, builder)
    print(f"built {tag}" + ("" if tag.startswith("localhost/") else
                            f"; push it (`{builder} push {tag} <registry>/...`) and set TUNEBOOK_IMAGE for `make launch`"))
    return 0


# ---------------------------------------------------------------------------------------------- launch
def cmd_launch(args) -> int:
    opts = L.LaunchOptions(cloud=args.cloud, gpu=args.gpu, gpus=args.gpus, yes=args.yes, image=args.image,
                           artifacts=args.artifacts, disk_gb=args.disk, volume_gb=args.volume, region=args.region,
                           ssh_key=args.ssh_key, env=args.env or [], max_hours=args.max_hours, dry_run=args.dry_run,
                           include_checkpoints=args.with_checkpoints)
    return L.launch(loaded_recipe(args), opts, out=sys.stdout)


def cmd_terminate(args) -> int:
    return L.terminate(args.cloud, args.instance)


# ---------------------------------------------------------------------------------------------- serve, export
def cmd_serve(args) -> int:
    recipes = [resolved_recipe(args, name, template_check=False) for name in args.recipe]
    return serve(recipes, merged=args.merged, host=args.host, port=args.port, extra=list(args.vllm_args or []),
                 dry_run=args.dry_run)


def cmd_export(args) -> int:
    path = export(resolved_recipe(args, template_check=False), args.format)
    print(os.path.relpath(path, project_root(args)))
    return 0


# ---------------------------------------------------------------------------------------------- artifacts
def cmd_artifacts(args) -> int:
    """The container's side of launch (docker/entrypoint.sh); `recipe` is the run's folder name under runs/."""
    if args.action == "status":
        L.write_status(args.url, args.state)
        return 0
    root = project_root(args)
    run_dir = RunLayout.for_recipe(root, args.recipe).root
    shown = os.path.relpath(run_dir, root)
    if args.action == "heartbeat":
        L.heartbeat(args.url, run_dir, Path(args.log), args.interval, once=args.once)
        return 0
    if args.action == "push":
        n, state = L.push_final(run_dir, args.url, args.exit_code, Path(args.log) if args.log else None,
                                include_checkpoints=args.with_checkpoints)
        say(f"uploaded {n} files of {shown}/ to {args.url}/run ({state})")
        return 0
    if args.action == "pull":
        n = L.pull_run(args.url, run_dir)
        print(f"fetched {n} files to {shown}/")
        return 0
    raise TunebookError(f"unknown artifacts action {args.action}")


# ---------------------------------------------------------------------------------------------- parser
def register(subparsers) -> None:
    d = subparsers.add_parser("docker", help="build the training image (docker/Dockerfile)")
    dsub = d.add_subparsers(dest="docker_command", required=True, metavar="ACTION")
    b = dsub.add_parser("build", help="build the image, tagged with the git commit (docker, else buildah)")
    b.add_argument("--builder", choices=("auto", *docker.BUILDERS), default="auto")
    b.add_argument("--repo", default="tunebook", help="image name without tag (default tunebook)")
    b.add_argument("--tag", help="full image name:tag (default <repo>:<git commit>)")
    b.add_argument("--base-image", help="FROM image (default: the Dockerfile's pinned Axolotl image)")
    b.add_argument("--extras", help="tunebook extras to install: train (default) or none")
    b.add_argument("--pip-extra", help="more pip requirements to install (space separated)")
    b.add_argument("--no-latest", action="store_true", help="don't also tag <repo>:latest")
    b.add_argument("--dry-run", action="store_true", help="print the build command only")
    b.set_defaults(func=cmd_docker_build)

    p = subparsers.add_parser("launch", help="train a recipe on a rented GPU (RunPod, Lambda); always terminates it",
                              description="Validate, estimate the cost, confirm, rent, train, fetch the results "
                                          "and terminate the machine (on failure and Ctrl-C too). See docs/deploy.md.")
    p.add_argument("recipe")
    p.add_argument("--cloud", required=True, choices=CLOUDS)
    p.add_argument("--gpu", required=True, help="GPU id from recipes/presets/gpus.yaml, e.g. a100-80, h100")
    p.add_argument("--gpus", type=int, default=1, help="GPUs on the machine (default 1)")
    p.add_argument("--yes", action="store_true", help="don't ask for confirmation")
    p.add_argument("--image", help="image to run (default: $TUNEBOOK_IMAGE)")
    p.add_argument("--artifacts", help="fsspec URL for the results (default: $TUNEBOOK_ARTIFACTS)")
    p.add_argument("--disk", type=int, default=100, help="RunPod container disk, GB (default 100)")
    p.add_argument("--volume", type=int, default=100, help="RunPod pod volume, GB (default 100; 0 for none)")
    p.add_argument("--region", help="Lambda region (default: the first with capacity)")
    p.add_argument("--ssh-key", help="Lambda SSH key name (default: $TUNEBOOK_LAMBDA_SSH_KEY, or the only one)")
    p.add_argument("--env", action="append", metavar="NAME", help="also forward this environment variable "
                                                                   "(as a secret: never printed)")
    p.add_argument("--max-hours", type=float, help="terminate after this long whatever happens "
                                                   "(default: 3x the estimate, at least 6)")
    p.add_argument("--with-checkpoints", action="store_true", help="upload checkpoints too")
    p.add_argument("--dry-run", action="store_true", help="show what would be rented, rent nothing")
    p.set_defaults(func=cmd_launch)

    t = subparsers.add_parser("terminate", help="terminate instances by id (cleanup)")
    t.add_argument("--cloud", required=True, choices=CLOUDS)
    t.add_argument("instance", nargs="+")
    t.set_defaults(func=cmd_terminate)

    s = subparsers.add_parser("serve", help="serve recipes' adapters (or a merged model) with vLLM",
                              description="Start vLLM's OpenAI-compatible server: one LoRA module per recipe on "
                                          "their shared base model, or --merged. Extra vLLM flags after --vllm-args.")
    s.add_argument("recipe", nargs="+")
    s.add_argument("--merged", action="store_true", help="serve the merged model (one recipe)")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--dry-run", action="store_true", help="print the vllm command only")
    s.add_argument("--vllm-args", nargs=argparse.REMAINDER, default=[], metavar="ARGS",
                   help="everything after this is passed to `vllm serve` (e.g. --gpu-memory-utilization 0.8)")
    s.set_defaults(func=cmd_serve)

    e = subparsers.add_parser("export", help="pack the adapter or merged model with a model card (tar.gz)")
    e.add_argument("recipe")
    e.add_argument("--format", choices=("adapter", "merged"), default="merged")
    e.set_defaults(func=cmd_export)

    a = subparsers.add_parser("artifacts", help="artifact store operations (used inside the image)")
    asub = a.add_subparsers(dest="action", required=True, metavar="ACTION")
    x = asub.add_parser("status", help="write status.json")
    x.add_argument("url")
    x.add_argument("state")
    x = asub.add_parser("heartbeat", help="write status 'running' and the log tail periodically")
    x.add_argument("recipe")
    x.add_argument("url")
    x.add_argument("--log", required=True)
    x.add_argument("--interval", type=float, default=30)
    x.add_argument("--once", action="store_true")
    x = asub.add_parser("push", help="upload runs/RECIPE/ and the final status")
    x.add_argument("recipe")
    x.add_argument("url")
    x.add_argument("--log")
    x.add_argument("--exit-code", type=int, required=True)
    x.add_argument("--with-checkpoints", action="store_true")
    x = asub.add_parser("pull", help="download a run into runs/RECIPE/")
    x.add_argument("recipe")
    x.add_argument("url")
    a.set_defaults(func=cmd_artifacts)
