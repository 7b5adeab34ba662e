"""`tunebook launch`: train a recipe on a rented GPU through SkyPilot (runner.ship.skypilot is the seam).

tunebook keeps what SkyPilot does not know: the recipe -> task mapping (GPU, image or setup, the repository as
the working directory, `make train`, multi-node variables, secrets by name, where the outputs go), the
planner's time and cost estimate and its refusal of a recipe that does not fit the GPU, and resume (the lock
file and checkpoints under runs/<recipe>/). SkyPilot does the rest: provisioning on RunPod, Lambda and every
other cloud it supports, failover, syncing the working directory, bucket mounts, the node rank and peer
addresses, teardown, and spot recovery (managed jobs).

One launch: load the recipe (the caller) -> plan it on the GPU (a recipe that does not fit is refused here) ->
write runs/<recipe>/launch/task.yaml -> SkyPilot's own parser and feature checks -> show the estimate -> confirm
-> `sky launch --down` (or `sky jobs launch` with --spot) -> save the job's log into runs/<recipe>/launch/job.log
-> without a bucket, copy runs/<recipe>/ back -> tear the cluster down. A job that fails gets the same (log, copy
back, teardown) before the error, which says where they are; Ctrl-C or SIGTERM tears down at once.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from runner.console import say
from runner.errors import TunebookError
from runner.fsutil import atomic_open, atomic_write_json, atomic_write_text
from runner.layout import RunLayout
from runner.plan import estimate as P
from runner.plan.target import preset_gpu, recipe_tokens, target_hardware
from runner.recipe.load import TRAIN_KINDS, Recipe
from runner.recipe.resolve import resolve
from runner.ship import skypilot
from runner.ship.docker import git_tag

# Our GPU ids (recipes/presets/gpus.yaml) in SkyPilot's accelerator names (`sky show-gpus`).
SKY_GPUS = {"t4": "T4", "l4": "L4", "a10g": "A10G", "rtx3090": "RTX3090", "rtx4090": "RTX4090",
            "a100-40": "A100", "a100-80": "A100-80GB", "h100": "H100", "h200": "H200"}
# Sent as SkyPilot secrets when set here: by name in the task file, the value read from this environment by
# `sky launch --secret NAME` and redacted by SkyPilot in its logs and YAML dumps. Extend with --secret NAME.
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY", "MLFLOW_TRACKING_TOKEN")
PLAIN_ENV = ("WANDB_PROJECT", "WANDB_ENTITY", "WANDB_MODE", "MLFLOW_TRACKING_URI", "HF_HUB_ENABLE_HF_TRANSFER")
# A cloud's own API keys configure SkyPilot on this machine; they never go to the instance.
NEVER_FORWARD = ("RUNPOD_API_KEY", "LAMBDA_API_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID")
IMAGE_ENV = "TUNEBOOK_IMAGE"
STARTUP_HOURS = 0.25  # provisioning, image pull or setup, model download: an assumption, stated with the estimate
REMOTE_BUCKET = "/tunebook/bucket"  # where --bucket's bucket is mounted; TUNEBOOK_RUNS is its prefix in there
REMOTE_WORKDIR = "~/sky_workdir"  # where SkyPilot puts the working directory on every node
AUTODOWN_IDLE_MIN = 15  # without a bucket: time to copy runs/<recipe>/ back before the cluster downs itself
CLOUD_RE = re.compile(r"^[a-z][a-z0-9-]*$")
# Object stores whose URL is SCHEME://BUCKET[/PREFIX] (SkyPilot's StoreType); Azure's https:// URLs name an account
# and a container, not one bucket, and are not offered.
BUCKET_SCHEMES = ("s3", "gs", "r2", "cos", "oci", "nebius")
BUCKET_RE = re.compile(rf"^(?:{'|'.join(BUCKET_SCHEMES)})://[a-z0-9][a-z0-9._-]{{0,222}}(?:/[A-Za-z0-9._/-]*)?$")
JOBS_QUEUE_LIMIT = 50  # how many managed jobs `sky jobs queue` lists by default


@dataclass
class LaunchOptions:
    """How to run a recipe remotely (the `tunebook launch` flags). gpu/gpus None: the preset's."""

    cloud: str
    gpu: str | None = None
    gpus: int | None = None
    nodes: int = 1
    spot: bool = False
    bucket: str | None = None
    image: str | None = None
    secrets: list[str] = field(default_factory=list)
    allow_dirty: bool = False
    yes: bool = False
    dry_run: bool = False


# ---------------------------------------------------------------------------------------------- estimate
@dataclass
class Estimate:
    """What a run is expected to cost, and where each number came from."""

    train_hours: float | None
    usd_per_hour: float | None
    price_source: str
    hours_source: str

    @property
    def train_minutes(self) -> int | None:
        return None if self.train_hours is None else round(self.train_hours * 60)

    @property
    def minutes(self) -> int | None:
        """The whole run in minutes: the rounded parts summed, so the numbers shown add up."""
        return None if self.train_minutes is None else self.train_minutes + round(STARTUP_HOURS * 60)

    @property
    def hours(self) -> float | None:
        return None if self.minutes is None else self.minutes / 60

    @property
    def usd(self) -> float | None:
        return None if self.hours is None or self.usd_per_hour is None else self.hours * self.usd_per_hour

    def render(self) -> str:
        if self.minutes is not None:
            train = _dur(self.train_minutes) if self.train_minutes else "<1 min"
            time_ = (f"~{_dur(self.minutes)} ({train} training from the planner + "
                     f"{_dur(round(STARTUP_HOURS * 60))} assumed for provisioning, setup and downloads)")
        else:
            time_ = f"unknown ({self.hours_source})"
        price = f"${self.usd_per_hour:.2f}/h ({self.price_source})" if self.usd_per_hour else \
            f"price unknown ({self.price_source})"
        total = f" = ~${self.usd:.2f}" if self.usd is not None else ""
        return f"{time_} x {price}{total}"


def _dur(minutes: int) -> str:
    """Whole minutes as "N min" or "H h M min"."""
    h, m = divmod(minutes, 60)
    return f"{m} min" if not h else f"{h} h" + (f" {m} min" if m else "")


def planner_hours(rec: Recipe, gpu: str, gpus: int, nodes: int = 1) -> tuple[float | None, str]:
    """Training hours of every training stage on `nodes` x `gpus` x `gpu`, from runner.plan.estimate (None + why
    when a number is missing). A stage that does not fit the GPU is a TunebookError: nothing is rented for it."""
    g = P.gpu_by_id(gpu)
    n = gpus * nodes
    res = resolve(rec, h=target_hardware(g, gpus), template_check=False)
    total = 0.0
    for st in res.stages:
        if st.kind not in TRAIN_KINDS or not st.config:
            continue
        base = str(st.config.get("base_model") or res.recipe.data["base_model"])
        if base.startswith(str(res.run_root)):  # an upstream stage's output: same shape as the recipe's base
            base = res.recipe.data["base_model"]
        try:
            shape = P.load_model_shape(base, rec.root)
        except TunebookError as exc:
            return None, f"planner: {exc.what}"
        setup = P.TrainSetup.from_axolotl_config(st.config, rec.root, n_gpus=n)
        tokens, _ = recipe_tokens(res, st)
        plan = P.make_plan(shape, setup, [g], primary=g.id, tokens_per_epoch=tokens,
                           epochs=float(st.config.get("num_epochs") or 1))
        row = plan.rows[0]
        if row.verdict == "does not fit":
            raise TunebookError(
                f"stage '{st.name}' of {rec.name} needs about {plan.estimate.peak_allocated_gib:.1f} GiB per GPU: it "
                f"does not fit the {g.name} ({g.memory_gib:.0f} GiB usable)", where=str(rec.path),
                fix=f"Pick a larger GPU (--gpu), or see `tunebook plan {rec.name} --gpu {g.id}` for what to change.")
        if not tokens:
            return None, f"no token count for stage {st.name}"
        if not row.hours:
            return None, f"the planner has no speed figure for {g.name}"
        total += row.hours
    return total, "runner.plan.estimate"


def table_price(cloud: str, gpu: str, gpus: int) -> tuple[float | None, str]:
    """Per-machine USD/h from recipes/presets/gpu-prices.yaml: this cloud's on-demand/secure tier (the highest of
    its offers), or for `any` the cheapest offer of every provider (SkyPilot picks the cheapest it can get)."""
    offers = P.prices(gpu)
    if cloud != "any":
        offers = [o for o in offers if str(o.get("provider", "")).lower() == cloud]
    if not offers:
        return None, f"gpu-prices.yaml has no {cloud} price for {gpu}"
    if cloud == "any":
        o = offers[0]
    else:
        preferred = [o for o in offers if any(w in str(o.get("tier", "")).lower() for w in ("secure", "on-demand"))]
        o = max(preferred or offers, key=lambda x: x["usd_per_hour"])
    return (float(o["usd_per_hour"]) * gpus,
            f"{o.get('provider')} {o.get('tier', '')}, {o.get('date', '?')}, gpu-prices.yaml")


# ---------------------------------------------------------------------------------------------- the task
@dataclass
class Target:
    """The machine a launch asks for: GPU id, GPUs per node, nodes."""

    gpu: str
    gpus: int
    nodes: int


def target(rec: Recipe, opts: LaunchOptions) -> Target:
    """The GPU and its count: the flags, else the recipe's preset (`gpu: {id, count}`); checked against the
    planner's GPU table and SkyPilot's names."""
    wanted = preset_gpu(rec)
    gpu = opts.gpu or wanted.get("id")
    if not gpu:
        raise TunebookError(f"recipe '{rec.name}' has no preset GPU, so launch needs one", where=str(rec.path),
                            fix=f"Pass --gpu (one of: {', '.join(SKY_GPUS)}).")
    if gpu not in SKY_GPUS:
        raise TunebookError(f"GPU '{gpu}' has no SkyPilot name in tunebook's table",
                            fix=f"Use one of: {', '.join(SKY_GPUS)}.")
    gpus = opts.gpus or int(wanted.get("count") or 1)
    if gpus < 1 or opts.nodes < 1:
        raise TunebookError(f"--gpus {gpus} --nodes {opts.nodes}: at least one of each", fix="Pass 1 or more.")
    return Target(gpu, gpus, opts.nodes)


def cluster_name(rec: Recipe) -> str:
    """SkyPilot's cluster (or managed job) name for a recipe: lower case, digits and dashes, short enough for
    every cloud's name limit."""
    return ("tb-" + re.sub(r"[^a-z0-9-]+", "-", rec.name.lower()).strip("-"))[:30].rstrip("-")


def secret_names(opts: LaunchOptions, environ=None) -> list[str]:
    """The secrets to send: SECRET_ENV and --secret names that are set in this environment (names only)."""
    environ = os.environ if environ is None else environ
    names = []
    for name in (*SECRET_ENV, *opts.secrets):
        if name in NEVER_FORWARD:
            raise TunebookError(f"{name} is a cloud credential for SkyPilot on this machine: it is never sent to "
                                "the instance", fix=f"Remove --secret {name}.")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise TunebookError(f"--secret {name!r} is not an environment variable name",
                                fix="Pass the variable's name, e.g. --secret MY_TOKEN (never its value).")
        if environ.get(name) and name not in names:
            names.append(name)
    missing = [n for n in opts.secrets if not environ.get(n)]
    if missing:
        raise TunebookError(f"--secret {', '.join(missing)}: not set in this environment",
                            fix="Export the variable here first; its value is read by SkyPilot, never written.")
    return names


def train_stage_names(rec: Recipe) -> list[str]:
    return [s.name for s in rec.stages if s.kind in TRAIN_KINDS]


def run_script(rec: Recipe, nodes: int) -> str:
    """The task's `run:`. SkyPilot sets SKYPILOT_NODE_RANK, SKYPILOT_NODE_IPS (head node first),
    SKYPILOT_NUM_NODES and SKYPILOT_NUM_GPUS_PER_NODE on every node; they become the GPUS/NNODES/NODE_RANK/
    MASTER_ADDR variables runner.train.axolotl.launcher_args turns into accelerate/torchrun arguments."""
    recipe = rec.path.stem
    lines = ["set -euo pipefail", "export GPUS=\"$SKYPILOT_NUM_GPUS_PER_NODE\""]
    if nodes == 1:
        return "\n".join([*lines, f"make train RECIPE={recipe}"]) + "\n"
    stage = train_stage_names(rec)[0]
    lines += ['export NNODES="$SKYPILOT_NUM_NODES" NODE_RANK="$SKYPILOT_NODE_RANK"',
              'export MASTER_ADDR="$(echo "$SKYPILOT_NODE_IPS" | head -n1)" MASTER_PORT="${MASTER_PORT:-29500}"',
              # Node 0 runs the whole pipeline (train, eval, merge) and holds the results; the others join
              # the training stage only, with their bookkeeping in a folder of their own.
              'if [ "$NODE_RANK" = 0 ]; then',
              f"  make train RECIPE={recipe}",
              "else",
              '  export TUNEBOOK_RUNS="runs-node$NODE_RANK"',
              f"  make venv model && .venv/bin/tunebook train {recipe} --until {stage}",
              "fi"]
    return "\n".join(lines) + "\n"


def setup_script(image: str | None) -> str:
    """The task's `setup:`. In our image (docker/Dockerfile) the environment is at /app/.venv: reuse it, with
    the working directory's tunebook installed over /app's; without an image, `make venv` builds it (~4 min)."""
    if image:
        return ("set -euo pipefail\n"
                "ln -sfn /app/.venv .venv\n"
                ".venv/bin/python -m pip install -q --no-deps -e .\n"
                "touch .venv/.installed\n")
    return "set -euo pipefail\nmake venv\n"


def build_task(rec: Recipe, opts: LaunchOptions, tgt: Target, commit: str, image: str | None,
               secrets: list[str], environ=None) -> dict:
    """The SkyPilot task for one recipe (pure: no SkyPilot, no git; `commit` recorded in the envs)."""
    environ = os.environ if environ is None else environ
    resources: dict = {"accelerators": f"{SKY_GPUS[tgt.gpu]}:{tgt.gpus}", "use_spot": opts.spot}
    if opts.cloud != "any":
        resources["infra"] = opts.cloud
    if image:
        resources["image_id"] = f"docker:{image}"
    envs = {"RECIPE": rec.path.stem, "TUNEBOOK_RUN_NAME": rec.name, "TUNEBOOK_COMMIT": commit,
            "HF_HUB_DISABLE_TELEMETRY": "1", "AXOLOTL_DO_NOT_TRACK": "1"}
    envs.update({k: environ[k] for k in PLAIN_ENV if environ.get(k)})
    task: dict = {"name": cluster_name(rec), "resources": resources, "num_nodes": tgt.nodes,
                  "workdir": str(rec.root), "envs": envs,
                  # null: the value is given at launch (`--secret NAME`, read from this environment)
                  "secrets": {name: None for name in secrets},
                  "setup": setup_script(image), "run": run_script(rec, tgt.nodes)}
    if opts.bucket:
        # runs/ on the bucket: checkpoints and the lock survive a preempted or lost machine, and a recovered
        # managed job resumes from them. MOUNT_CACHED writes locally and uploads in the background.
        # SkyPilot mounts only a whole bucket in the MOUNT modes (a sub-path raises StorageModeError when the
        # storage is built at launch, which Task.from_yaml_config does not do): mount the bucket itself and put
        # TUNEBOOK_RUNS at the prefix inside it, so the run is still <bucket>/<prefix>/<recipe>/.
        store, prefix = split_bucket(opts.bucket)
        envs["TUNEBOOK_RUNS"] = "/".join(p for p in (REMOTE_BUCKET, prefix) if p)
        task["file_mounts"] = {REMOTE_BUCKET: {"source": store, "mode": "MOUNT_CACHED"}}
    return task


class _TaskDumper(yaml.SafeDumper):
    """Multi-line strings (setup, run) as YAML block scalars, as a person would write them."""


_TaskDumper.add_representer(str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s,
                                                                 style="|" if "\n" in s else None))


def task_yaml(task: dict, rec: Recipe, tgt: Target, how: str) -> str:
    """The task file's text: a header saying what it is and the command that launches it, then the task."""
    head = [f"# SkyPilot task for recipe {rec.name}, written by `tunebook launch` (rewritten on every launch).",
            f"# {tgt.nodes} node(s) x {tgt.gpus} x {tgt.gpu}; launched as: sky {how}",
            "# Teardown: RunPod and Lambda cannot stop a machine, only terminate it, so the cluster is always torn",
            "# down (--down), never stopped."]
    return "\n".join(head) + "\n" + yaml.dump(task, Dumper=_TaskDumper, sort_keys=False, width=120)


# ---------------------------------------------------------------------------------------------- plan
@dataclass
class LaunchPlan:
    """One launch, written and validated; nothing rented yet."""

    rec: Recipe
    opts: LaunchOptions
    target: Target
    task: dict
    task_file: Path
    est: Estimate
    layout: RunLayout
    secrets: list[str]
    commit: str

    @property
    def name(self) -> str:
        return self.task["name"]


def check_options(opts: LaunchOptions) -> str | None:
    """The checks that need neither the recipe nor SkyPilot; returns the image (None: setup commands)."""
    if not CLOUD_RE.match(opts.cloud):
        raise TunebookError(f"--cloud {opts.cloud!r} is not a cloud name",
                            fix="Use runpod, lambda, any, or another SkyPilot cloud (aws, gcp, kubernetes, ...).")
    if opts.spot and not opts.bucket:
        raise TunebookError("--spot without --bucket: a preempted machine would take the checkpoints with it",
                            fix="Pass --bucket s3://BUCKET/PREFIX (or gs://, r2://, ...) for runs/<recipe>/.")
    if opts.bucket and not BUCKET_RE.match(opts.bucket):
        raise TunebookError(f"--bucket {opts.bucket!r} is not a bucket URL SkyPilot can mount",
                            fix="Write it as SCHEME://BUCKET[/PREFIX] with SCHEME one of "
                                f"{', '.join(BUCKET_SCHEMES)} (e.g. s3://my-bucket/tunebook).")
    if opts.spot and opts.nodes > 1:
        raise TunebookError("--spot with --nodes > 1 is not supported: recovering a multi-node run needs every "
                            "node's checkpoint shard, and only node 0 keeps its run on the bucket",
                            fix="Use on-demand machines for multi-node runs, or one node with more GPUs.")
    image = opts.image or os.environ.get(IMAGE_ENV) or None
    if image and image.startswith("localhost/"):
        raise TunebookError(f"image {image} exists only on this machine",
                            fix="Push it to a registry the cloud can pull from (ghcr.io, Docker Hub, ...) and pass "
                                "that name, or leave --image unset to install with setup commands.")
    return image


def check_nodes(rec: Recipe, nodes: int) -> None:
    if nodes > 1 and len(train_stage_names(rec)) != 1:
        raise TunebookError(f"--nodes {nodes}: multi-node launch takes a recipe with exactly one training stage "
                            f"({rec.name} has {len(train_stage_names(rec))})", where=str(rec.path),
                            fix="A later stage would start from a model that only node 0 holds; launch on one node "
                                "(with --gpus N), or split the recipe.")


def repo_commit(root: Path, allow_dirty: bool) -> str:
    """The commit the task records. A dirty tree is refused (the cluster gets the working directory as it is,
    which no commit names) unless --allow-dirty; a project outside git is said so."""
    tag = git_tag(root)
    if tag == "nogit":
        say(f"{root} is not a git checkout: the task records no commit (recipes are meant to be versioned)")
    elif tag.endswith("-dirty") and not allow_dirty:
        raise TunebookError("the working tree has uncommitted changes: the cluster would train what no commit "
                            "records", where=str(root), fix="Commit (or stash) them, or pass --allow-dirty.")
    elif tag.endswith("-dirty"):
        say(f"uncommitted changes: the task records {tag}")
    return tag


def plan_launch(rec: Recipe, opts: LaunchOptions, environ=None) -> LaunchPlan:
    """Check, plan, write and validate: everything before SkyPilot rents anything. A recipe that does not fit
    the GPU is refused before SkyPilot is called."""
    image = check_options(opts)
    tgt = target(rec, opts)
    check_nodes(rec, tgt.nodes)
    hours, hours_src = planner_hours(rec, tgt.gpu, tgt.gpus, tgt.nodes)
    price, price_src = table_price(opts.cloud, tgt.gpu, tgt.gpus)
    est = Estimate(hours, price * tgt.nodes if price else None, price_src, hours_src)
    secrets = secret_names(opts, environ)
    commit = repo_commit(rec.root, opts.allow_dirty)
    task = build_task(rec, opts, tgt, commit, image, secrets, environ)
    layout = RunLayout.for_recipe(rec.root, rec.name)
    path = layout.launch_task
    plan = LaunchPlan(rec, opts, tgt, task, path, est, layout, secrets, commit)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, task_yaml(task, rec, tgt, " ".join(launch_args(plan)[:-1]) + " task.yaml"))
    verdict = skypilot.validate(rec.root, [path])[0]
    if not verdict["ok"]:
        raise TunebookError(f"SkyPilot rejects the task: {verdict['error']}", where=str(path),
                            fix="Change --cloud, --nodes, --spot or --bucket (the message says which feature the "
                                "cloud lacks).")
    return plan


def launch_args(plan: LaunchPlan) -> list[str]:
    """The `sky` arguments that launch the plan (after `sky`). Secrets by name: SkyPilot reads the values here."""
    secrets = [a for name in plan.secrets for a in ("--secret", name)]
    if plan.opts.spot:
        return ["jobs", "launch", "-y", "-n", plan.name, *secrets, str(plan.task_file)]
    # --down: torn down when the job ends, but only after AUTODOWN_IDLE_MIN idle minutes, which leave tunebook time
    # to save the job's log and (without a bucket) copy the outputs back before it runs `sky down` itself; the
    # cluster still downs itself if this process dies meanwhile.
    return ["launch", "-y", "-c", plan.name, "--down", "-i", str(AUTODOWN_IDLE_MIN), *secrets, str(plan.task_file)]


def shown(path: Path, root: Path) -> str:
    """A path for a message: relative to the project root when inside it ($TUNEBOOK_RUNS may point elsewhere)."""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def split_bucket(url: str) -> tuple[str, str]:
    """'s3://B/PREFIX/...' -> ('s3://B', 'PREFIX/...'): the bucket SkyPilot mounts and the folder in it."""
    scheme, _, rest = url.rstrip("/").partition("://")
    name, _, prefix = rest.partition("/")
    return f"{scheme}://{name}", prefix.strip("/")


def bucket_url(plan: LaunchPlan) -> str | None:
    """Where runs/<recipe>/ lives with --bucket (the task's file mount)."""
    return f"{plan.opts.bucket.rstrip('/')}/{plan.rec.name}" if plan.opts.bucket else None


def bucket_fetch(plan: LaunchPlan) -> str:
    """How to copy the bucket's runs/<recipe>/ into the local one: the store's own client for s3:// and gs://."""
    url, dest = bucket_url(plan), shown(plan.layout.root, plan.rec.root)
    if url.startswith("s3://"):
        return f"`aws s3 sync {url} {dest}`"
    if url.startswith("gs://"):
        return f"`gcloud storage rsync --recursive {url} {dest}`"
    return f"your object store's client (copy {url} into {dest})"


def show_plan(plan: LaunchPlan, out) -> None:
    """What will be rented, where the outputs go and the estimate (secrets by name only)."""
    t, root = plan.target, plan.rec.root
    rel, runs = shown(plan.task_file, root), shown(plan.layout.root, root)
    outputs = (f"{bucket_url(plan)} (the cluster's runs/{plan.rec.name}/; nothing is copied into {runs}/)"
               if plan.opts.bucket else f"copied back into {runs}/ when the job ends")
    print(f"tunebook launch {plan.rec.name}: {t.nodes} node(s) x {t.gpus} x {SKY_GPUS[t.gpu]} on "
          f"{plan.opts.cloud}{' (spot, managed job)' if plan.opts.spot else ''}\n"
          f"  task       {rel} (accepted by SkyPilot)\n"
          f"  image      {plan.task['resources'].get('image_id', 'none: setup runs `make venv`')}\n"
          f"  commit     {plan.commit}\n"
          f"  outputs    {outputs}\n"
          f"  secrets    {', '.join(plan.secrets) or 'none'} (by name; values stay in this environment)\n"
          f"  estimate   {plan.est.render()}\n"
          f"  command    sky {' '.join(launch_args(plan)[:-1])} {rel}", file=out, flush=True)


def confirm(plan: LaunchPlan, out) -> bool:
    """--yes, or the user's answer on a terminal; without a terminal to ask on, a TunebookError."""
    if plan.opts.yes:
        return True
    if not sys.stdin or not sys.stdin.isatty():
        raise TunebookError("launching rents a paid machine and needs confirmation",
                            fix="Run it in a terminal to answer the prompt, or pass --yes (YES=1 with make).")
    usd = plan.est.usd
    answer = input(f"Launch it{f' (about ${usd:.2f})' if usd is not None else ''}? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


# ---------------------------------------------------------------------------------------------- launch
def launch(rec: Recipe, opts: LaunchOptions, out=None) -> int:
    """Run recipe `rec` through SkyPilot; see the module docstring. Returns 0 (1: not confirmed) or raises
    TunebookError. The caller loads `rec` first, so a broken recipe fails before anything is written."""
    out = out or sys.stdout
    plan = plan_launch(rec, opts)
    show_plan(plan, out)
    if opts.dry_run:
        print("dry run: task written and validated, nothing launched", file=out)
        return 0
    if not confirm(plan, out):
        print("not launched", file=out)
        return 1
    record = {"recipe": rec.name, "name": plan.name, "managed": opts.spot, "cloud": opts.cloud,
              "commit": plan.commit, "task": str(plan.task_file), "bucket": opts.bucket}
    atomic_write_json(plan.layout.launch_record, record)
    with skypilot.api_server_as_found(rec.root):
        return _launch(plan, out)


def _launch(plan: LaunchPlan, out) -> int:
    rec, opts, root = plan.rec, plan.opts, plan.rec.root
    try:
        res = skypilot.run(root, *launch_args(plan))
    except KeyboardInterrupt as exc:
        # Ctrl-C reaches SkyPilot too (same process group); SIGTERM/SIGHUP reach tunebook (the CLI raises them as
        # runner.cli.main.Signalled, a KeyboardInterrupt with .signum) and skypilot.run stops `sky`. Whatever it
        # had started is torn down here; a cluster this misses still downs itself (--down/autodown run on the
        # cluster, not on this machine).
        signum = getattr(exc, "signum", signal.SIGINT)
        why = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
        print(f"{why}: tearing down {plan.name}", file=out, flush=True)
        down = teardown(root, plan.name, opts.spot)
        raise TunebookError(f"{why}: " + (f"{plan.name} was torn down" if down.ok else
                                          f"tearing {plan.name} down failed ({down.summary()})"),
                            exit_code=128 + signum,
                            fix=None if down.ok else f"Run `tunebook launch {rec.path.stem} --down` once SkyPilot "
                                                     "answers again; the cluster downs itself after its job.") from None
    if not res.ok:
        raise _failed(plan, res, out)
    log = save_log(plan)
    if not opts.spot and not opts.bucket:
        fetch_back(plan, out)
    if not opts.spot:
        down = teardown(root, plan.name, False)
        if not down.ok:
            raise down.error(f"{rec.name} finished, but tearing {plan.name} down failed", root,
                             fix=f"Run `tunebook launch {rec.path.stem} --down`; the cluster also downs itself after "
                                 f"{AUTODOWN_IDLE_MIN} idle minutes.")
    log_note = (f"the job's log is in {shown(plan.layout.launch_log, root)}" if log.ok else
                f"no job log saved ({log.summary()})")
    runs = shown(plan.layout.root, root)
    if opts.bucket:
        where = (f"results on the bucket at {bucket_url(plan)} (not copied into {runs}/; fetch them with "
                 f"{bucket_fetch(plan)})")
    else:
        where = f"results in {runs}/"
    ended = "the managed job has ended" if opts.spot else f"{plan.name} torn down"
    print(f"done: {rec.name} on {opts.cloud}; {ended}; {where}; {log_note}", file=out)
    return 0


def _failed(plan: LaunchPlan, res: skypilot.Result, out) -> TunebookError:
    """A launch SkyPilot ended with a non-zero code (provisioning, setup, the run itself): save the job's log and
    (without a bucket) copy runs/<recipe>/ back while the cluster is still there, then tear it down. The error
    says where the log and the files are."""
    rec, opts, root = plan.rec, plan.opts, plan.rec.root
    print(f"SkyPilot exited with {res.rc}: saving what the job left, then tearing {plan.name} down", file=out,
          flush=True)
    log = save_log(plan)
    notes = [f"the job's log is in {shown(plan.layout.launch_log, root)}" if log.ok else
             f"no job log ({log.summary()})"]
    runs = shown(plan.layout.root, root)
    if opts.bucket:
        notes.append(f"the run's files are on the bucket at {bucket_url(plan)} (fetch them with "
                     f"{bucket_fetch(plan)})")
    else:
        rc = fetch_back(plan, out, check=False)
        notes.append(f"the run's files were copied back into {runs}/" if rc == 0 else
                     f"nothing was copied back (rsync exited with {rc}: the job may have failed before it started)")
    down = teardown(root, plan.name, opts.spot)
    notes.append(f"{plan.name} was torn down" if down.ok else
                 f"tearing {plan.name} down failed ({down.summary()}): run `tunebook launch {rec.path.stem} --down`")
    said = "; ".join(notes)
    return TunebookError(f"SkyPilot failed: {res.summary()}", exit_code=1,
                         fix=said[0].upper() + said[1:] + ". Read SkyPilot's output above and the log; if it could "
                             "not reach a cloud, check the network and the credentials "
                             f"(`{skypilot.venv(root) / 'bin' / 'sky'} check`).")


def save_log(plan: LaunchPlan) -> skypilot.Result:
    """The job's log so far (`sky logs --no-follow`, or `sky jobs logs` for a managed job) into
    runs/<recipe>/launch/job.log; nothing is written when SkyPilot has none (e.g. the cluster never came up)."""
    args = (["jobs", "logs", "-n", plan.name, "--no-follow"] if plan.opts.spot else
            ["logs", plan.name, "--no-follow", "--tail", "0"])
    try:
        with atomic_open(plan.layout.launch_log) as fh:
            res = skypilot.run(plan.rec.root, *args, stdout=fh, echo=False)
            if not res.ok:
                raise _NoLog(res)
    except _NoLog as exc:
        return exc.res
    return res


class _NoLog(Exception):
    """Raised inside atomic_open so that a failed `sky logs` leaves no half-written log."""

    def __init__(self, res: skypilot.Result):
        super().__init__(res.summary())
        self.res = res


def fetch_back(plan: LaunchPlan, out, check: bool = True) -> int:
    """Copy runs/<recipe>/ from the head node (SkyPilot writes an ssh alias per cluster) into the local
    runs/<recipe>/ (runner.layout, so $TUNEBOOK_RUNS), tokenisation caches left out. Returns rsync's exit code;
    with `check` a failure is a TunebookError."""
    dest = plan.layout.root
    dest.mkdir(parents=True, exist_ok=True)
    src = f"{plan.name}:{REMOTE_WORKDIR}/runs/{plan.rec.name}/"
    cmd = ["rsync", "-a", "--exclude", "prepared/", src, f"{dest}/"]
    print(" ".join(cmd), file=out, flush=True)
    rc = subprocess.run(cmd, check=False).returncode
    if rc != 0 and check:
        raise TunebookError(f"copying runs/{plan.rec.name}/ back into {shown(dest, plan.rec.root)}/ failed (rsync "
                            f"exited with {rc})", exit_code=1,
                            fix=f"The cluster downs itself after {AUTODOWN_IDLE_MIN} idle minutes: copy it now with "
                                f"`{' '.join(cmd)}`, then `tunebook launch {plan.rec.path.stem} --down`.")
    return rc


def teardown(root: Path, name: str, managed: bool) -> skypilot.Result:
    """Tear a cluster down (`sky down`) or cancel a managed job (`sky jobs cancel`)."""
    args = ["jobs", "cancel", "-y", "-n", name] if managed else ["down", "-y", name]
    return skypilot.run(root, *args)


def _record(rec: Recipe) -> dict:
    path = RunLayout.for_recipe(rec.root, rec.name).launch_record
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}


def manage(rec: Recipe, action: str, out=None) -> int:
    """`--status`, `--logs`, `--down` of the recipe's last launch (its record, runs/<recipe>/launch.json, says the
    cluster or managed job's name). A `sky` failure is a TunebookError; SkyPilot's local API server is left as
    it was found (skypilot.api_server_as_found)."""
    out = out or sys.stdout
    record = _record(rec)
    name, managed = record.get("name") or cluster_name(rec), bool(record.get("managed"))
    what = {"status": f"SkyPilot's status of {name}", "logs": f"SkyPilot's log of {name}",
            "down": f"tearing {name} down"}[action] + " failed"
    with skypilot.api_server_as_found(rec.root):
        if action == "status" and managed:
            print_job_status(rec.root, name, out)
            return 0
        args = {("status", False): ["status", name], ("logs", False): ["logs", name],
                ("logs", True): ["jobs", "logs", "-n", name], ("down", False): ["down", "-y", name],
                ("down", True): ["jobs", "cancel", "-y", "-n", name]}[(action, managed)]
        skypilot.call(rec.root, *args, what=what)
    return 0


def print_job_status(root: Path, name: str, out) -> None:
    """The managed jobs named `name` (this recipe's), from `sky jobs queue -o json` (which has no name filter):
    id, status, submission time, duration and recoveries, newest last."""
    what = f"SkyPilot's queue of managed jobs (for {name}) failed"
    res = skypilot.run(root, "jobs", "queue", "-o", "json", capture=True)
    if not res.ok and any("No in-progress managed jobs" in line for line in res.stderr):
        # SkyPilot's jobs controller is not up: no managed job runs, and none has since it went down
        print(f"{name}: no managed job in progress (SkyPilot's jobs controller is not running)", file=out)
        return
    if not res.ok:
        raise res.error(what, root)
    jobs = skypilot.json_output(res.stdout)
    if not isinstance(jobs, list):
        raise TunebookError(f"{what}: `sky jobs queue -o json` printed no JSON list", exit_code=1,
                            fix=skypilot.network_fix(root))
    mine = sorted((j for j in jobs if isinstance(j, dict) and j.get("job_name") == name),
                  key=lambda j: j.get("job_id") or 0)
    if not mine:
        print(f"{name}: no managed job of that name among SkyPilot's latest {JOBS_QUEUE_LIMIT} "
              "(`sky jobs queue --all` lists every one)", file=out)
    for j in mine:
        submitted = (time.strftime("%Y-%m-%d %H:%M", time.localtime(j["submitted_at"]))
                     if isinstance(j.get("submitted_at"), (int, float)) else "?")
        took = (f", {_dur(round(j['job_duration'] / 60))}" if isinstance(j.get("job_duration"), (int, float))
                and j["job_duration"] > 0 else "")
        print(f"{name}: managed job {j.get('job_id', '?')} {j.get('status', '?')} (submitted {submitted}{took}, "
              f"{j.get('recovery_count') or 0} recoveries)", file=out)
