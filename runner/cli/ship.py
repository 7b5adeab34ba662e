"""Ship commands: `docker build`, `launch` (through SkyPilot), `serve`, `export`. Each is a thin layer over
runner.ship.docker / runner.ship.launch / runner.ship.serve / runner.ship.export (docs/deploy.md)."""
from __future__ import annotations

import argparse
import os
import sys

from runner.cli.common import loaded_recipe, project_root, resolved_recipe
from runner.errors import TunebookError
from runner.ship import docker
from runner.ship import launch as L
from runner.ship.export import export
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
                            f"; push it (`{builder} push {tag} <registry>/...`) and set TUNEBOOK_IMAGE for `tunebook launch`"))
    return 0


# ---------------------------------------------------------------------------------------------- launch
def cmd_launch(args) -> int:
    rec = loaded_recipe(args)
    actions = [a for a in ("status", "logs", "down") if getattr(args, a)]
    if len(actions) > 1:
        raise TunebookError(f"--{' and --'.join(actions)}: one at a time", fix="Pass one of --status, --logs, --down.")
    if actions:
        return L.manage(rec, actions[0])
    if not args.cloud:
        raise TunebookError("launch needs --cloud", fix="Pass --cloud runpod, lambda, any, or another SkyPilot cloud.")
    opts = L.LaunchOptions(cloud=args.cloud, gpu=args.gpu, gpus=args.gpus, nodes=args.nodes, spot=args.spot,
                           bucket=args.bucket, image=args.image, secrets=args.secret or [],
                           allow_dirty=args.allow_dirty, yes=args.yes, dry_run=args.dry_run)
    return L.launch(rec, opts, out=sys.stdout)


# ---------------------------------------------------------------------------------------------- serve, export
def cmd_serve(args) -> int:
    recipes = [resolved_recipe(args, name, template_check=False) for name in args.recipe]
    return serve(recipes, merged=args.merged, host=args.host, port=args.port, extra=list(args.vllm_args or []),
                 dry_run=args.dry_run)


def cmd_export(args) -> int:
    path = export(resolved_recipe(args, template_check=False), args.format)
    print(os.path.relpath(path, project_root(args)))
    return 0


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

    p = subparsers.add_parser("launch", help="train a recipe on a rented GPU through SkyPilot (RunPod, Lambda, ...)",
                              description="Write runs/<recipe>/launch/task.yaml (a SkyPilot task), validate it with "
                                          "SkyPilot, show the planner's estimate, confirm, and `sky launch --down` it "
                                          "(`sky jobs launch` with --spot). SkyPilot lives in .venv-launch "
                                          "(`make launch-venv`). See the README, 'Launch it'.")
    p.add_argument("recipe")
    p.add_argument("--cloud", help="runpod, lambda, any (SkyPilot picks), or another SkyPilot cloud (aws, gcp, ...)")
    p.add_argument("--gpu", help="GPU id from recipes/presets/gpus.yaml, e.g. a100-80, h100 (default: the preset's)")
    p.add_argument("--gpus", type=int, help="GPUs per node (default: the preset's count)")
    p.add_argument("--nodes", type=int, default=1, help="nodes (default 1; more for one-training-stage recipes)")
    p.add_argument("--spot", action="store_true", help="spot machines as a SkyPilot managed job (needs --bucket)")
    p.add_argument("--bucket", help="bucket URL for runs/<recipe>/ (s3://, gs://, r2://...): checkpoints survive "
                                    "a lost machine; without it the results are copied back")
    p.add_argument("--image", help="our image pushed to a registry (default: $TUNEBOOK_IMAGE; none: setup commands)")
    p.add_argument("--secret", action="append", metavar="NAME", help="also send this environment variable as a "
                                                                      "SkyPilot secret (by name: never written)")
    p.add_argument("--allow-dirty", action="store_true", help="launch with uncommitted changes")
    p.add_argument("--yes", action="store_true", help="don't ask for confirmation")
    p.add_argument("--dry-run", action="store_true", help="write and validate the task, launch nothing")
    p.add_argument("--status", action="store_true",
                   help="SkyPilot's status of the recipe's cluster, or of its managed jobs (--spot)")
    p.add_argument("--logs", action="store_true", help="the job's log (SkyPilot)")
    p.add_argument("--down", action="store_true", help="tear the cluster down (or cancel the managed job)")
    p.set_defaults(func=cmd_launch)

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
