"""Ship commands: `docker build`, `launch` (through SkyPilot), `serve`, `export`, `push`. Each is a thin layer over
runner.ship.docker / runner.ship.launch / runner.ship.serve / runner.ship.export (docs/deploy.md)."""
from __future__ import annotations

import argparse
import os
import sys

from runner.cli.common import loaded_recipe, project_root, resolved_recipe
from runner.errors import TunebookError
from runner.ship import docker, hotswap
from runner.ship import launch as L
from runner.ship import gguf_export
from runner.ship.export import export
from runner.ship.push import push
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
    if args.add or args.remove:
        if args.recipe:
            raise TunebookError("--add/--remove change a running server: name no recipes to start one as well",
                                fix="`tunebook serve --add RECIPE [--url URL]` or `--remove RECIPE`.")
        for name in args.remove or []:
            hotswap.remove(project_root(args), name, args.url)
        for name in args.add or []:
            hotswap.add(resolved_recipe(args, name), args.url)
        return 0
    if not args.recipe:
        raise TunebookError("name at least one recipe to serve", fix="`tunebook serve RECIPE [RECIPE ...]`.")
    if args.url:
        raise TunebookError("--url names a running server for --add/--remove", fix="Use --host/--port to start one.")
    # Resolved with the chat-template check, as training and the eval stage resolve them: it sets the template
    # they used (e.g. the tokenizer's without its default system prompt), which is the one to serve.
    recipes = [resolved_recipe(args, name) for name in args.recipe]
    return serve(recipes, merged=args.merged, host=args.host, port=args.port, extra=list(args.vllm_args or []),
                 dry_run=args.dry_run, start_timeout=args.start_timeout)


def cmd_export(args) -> int:
    if args.quant and args.format not in gguf_export.FORMATS:
        raise TunebookError(f"--quant is for --format gguf or ollama, not {args.format}",
                            fix=f"Drop --quant, or pass --format gguf --quant {args.quant}.")
    # gguf/ollama read the trained chat template off the resolved config, which the template check completes
    # (e.g. SmolLM2's template without its injected system prompt), as for training and eval.
    res = resolved_recipe(args, template_check=args.format in gguf_export.FORMATS)
    quant = args.quant or gguf_export.DEFAULT_QUANT
    if args.format == "gguf":
        path = gguf_export.export_gguf(res, quant)
    elif args.format == "ollama":
        path = gguf_export.export_ollama(res, quant)
    else:
        path = export(res, args.format)
    print(os.path.relpath(path, project_root(args)))
    return 0


def cmd_push(args) -> int:
    done = push(resolved_recipe(args, template_check=False), args.to, args.format, private=args.private,
                revision=args.revision)
    print(f"pushed {done.files} files ({done.size / 1e6:.1f} MB) to {done.url}"
          + (" (private)" if done.private else ""))
    print(f"commit {done.commit}: {done.commit_url}")
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
                              description="Start vLLM's OpenAI-compatible server (from .venv-serve: `make "
                                          "serve-venv`) and wait: one LoRA module per recipe on their shared base "
                                          "model, or --merged; the trained chat template and its end-of-turn stop "
                                          "token. Ctrl-C stops it. --add/--remove change the adapters of a running "
                                          "one. Extra vLLM flags after --vllm-args. See docs/deploy.md.")
    s.add_argument("recipe", nargs="*")
    s.add_argument("--merged", action="store_true", help="serve the merged model (one recipe)")
    s.add_argument("--host", help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    s.add_argument("--port", type=int, help="port (default 8000; 0: a free one)")
    s.add_argument("--start-timeout", type=float, default=900.0, metavar="SECONDS",
                   help="how long to wait for vLLM to answer /health (default 900)")
    s.add_argument("--add", action="append", metavar="RECIPE",
                   help="hot-load this recipe's adapter into the running server (repeatable)")
    s.add_argument("--remove", action="append", metavar="RECIPE", help="unload this adapter from the running server")
    s.add_argument("--url", help="the running server for --add/--remove (default: the only one this project runs)")
    s.add_argument("--dry-run", action="store_true", help="print the vLLM command only")
    s.add_argument("--vllm-args", nargs=argparse.REMAINDER, default=[], metavar="ARGS",
                   help="everything after this is passed to vLLM's server (e.g. --max-model-len 4096)")
    s.set_defaults(func=cmd_serve)

    e = subparsers.add_parser("export", help="pack the adapter or merged model with a model card (tar.gz), or "
                                             "convert it to GGUF for llama.cpp / Ollama")
    e.add_argument("recipe")
    e.add_argument("--format", choices=("adapter", "merged", *gguf_export.FORMATS), default="merged",
                   help="adapter, merged (tar.gz archives), gguf (runs/<r>/export/<r>-<quant>.gguf), ollama "
                        "(runs/<r>/export/<r>-ollama/: the GGUF and a Modelfile)")
    e.add_argument("--quant", choices=gguf_export.QUANTS,
                   help=f"GGUF quantization for gguf/ollama (default {gguf_export.DEFAULT_QUANT})")
    e.set_defaults(func=cmd_export)

    u = subparsers.add_parser("push", help="upload the adapter or merged model with its model card to the Hugging "
                                           "Face Hub", description="Upload what `export` packs (the model, README.md "
                                           "model card, recipe.yaml, tunebook.lock, manifest.json) to a Hub model "
                                           "repo in one commit, creating the repo if needed. Token: HF_TOKEN or `hf "
                                           "auth login`; endpoint: HF_ENDPOINT (docs/deploy.md, 'Push to the Hub').")
    u.add_argument("recipe")
    u.add_argument("--to", required=True, metavar="USER/NAME", help="the Hub model repo, e.g. your-user/hr-bot")
    u.add_argument("--format", choices=("adapter", "merged"), default="adapter")
    u.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its "
                                                          "visibility)")
    u.add_argument("--revision", metavar="BRANCH", help="push to this branch (created from main if missing)")
    u.set_defaults(func=cmd_push)
