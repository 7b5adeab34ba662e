"""`tunebook launch`: train a recipe on a rented GPU and always give the machine back.

One run: validate the recipe here -> estimate time and cost (planner) -> confirm -> create a RunPod pod or a
Lambda instance running our image (`docker/Dockerfile`) with the recipe, its environment and secrets -> watch
it (provider status + the container's heartbeat in the artifact store) -> terminate it -> fetch
`runs/<recipe>/` back from the artifact store. The instance is terminated on every path: success, a failed run,
a provider error, a timeout, Ctrl-C or SIGTERM (the create call itself is shielded from signals, and a create
whose answer was lost is looked up by name and terminated).

The artifact store is any fsspec URL (`s3://bucket/prefix` with AWS_* credentials, `gs://`, `file://` for tests),
set by --artifacts or TUNEBOOK_ARTIFACTS. Each run writes to `<url>/<recipe>/<run id>/`:
  status.json   {"state": "starting|running|succeeded|failed", "exit_code", "stage", "updated", ...}
  log.txt       the last lines of the container's output (heartbeat, every TUNEBOOK_HEARTBEAT_S seconds)
  run/          the container's runs/<recipe>/ (checkpoints and tokenisation caches left out)
The container side of this protocol is `tunebook artifacts ...`, called by docker/entrypoint.sh.
"""
from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import secrets
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from runner.console import say
from runner.errors import TunebookError
from runner.fsutil import atomic_write_json
from runner.layout import RunLayout
from runner.plan import estimate as P
from runner.plan.target import recipe_tokens, target_hardware
from runner.recipe.load import TRAIN_KINDS, Recipe
from runner.recipe.resolve import resolve
from runner.ship.providers import (AuthError, Instance, LaunchSpec, NoCapacity, NotFound, Provider, ProviderError,
                                   get_provider)

# Secrets forwarded to the instance when set here (values never printed). Extend with --env NAME.
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
              "AWS_SESSION_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
PLAIN_ENV = ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "WANDB_PROJECT",
             "WANDB_ENTITY", "WANDB_MODE", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "HF_HUB_ENABLE_HF_TRANSFER")
NEVER_FORWARD = ("RUNPOD_API_KEY", "LAMBDA_API_KEY")
STARTUP_HOURS = 0.25  # boot, image pull, model download and upload: an assumption, stated with every estimate
FINAL_STATES = ("succeeded", "failed")
SKIP_DIRS = ("prepared",)  # tokenisation caches: rebuilt in seconds, often large



# ---------------------------------------------------------------------------------------------- artifacts
def _fs(url: str):
    try:
        import fsspec
    except ImportError:
        raise TunebookError("fsspec is not installed", fix="pip install fsspec (and s3fs for s3:// URLs)") from None
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise TunebookError(f"cannot open artifact store {url}: {exc}",
                            fix="Install the fsspec backend for that URL (s3fs for s3://, gcsfs for gs://).") from None


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts if p]])


def upload_files(run_dir: Path, include_checkpoints: bool = False) -> list[Path]:
    """The files of runs/<recipe>/ worth keeping, relative to it."""
    out = []
    for p in sorted(run_dir.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(run_dir)
        parts = rel.parts
        if any(x.startswith(".") and x.endswith((".tmp", ".old")) for x in parts):
            continue
        if any(x in SKIP_DIRS for x in parts[:-1]):
            continue
        if not include_checkpoints and any(x.startswith("checkpoint-") for x in parts[:-1]):
            continue
        out.append(rel)
    return out


def push_run(run_dir: Path, url: str, include_checkpoints: bool = False) -> int:
    """Copy runs/<recipe>/ to <url>/run/; returns the number of files."""
    fs, base = _fs(url)
    n = 0
    for rel in upload_files(run_dir, include_checkpoints):
        dest = f"{base.rstrip('/')}/run/{rel.as_posix()}"
        fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(run_dir / rel), dest)
        n += 1
    return n


def pull_run(url: str, dest: Path) -> int:
    """Copy <url>/run/ to `dest` (a new folder, swapped in at the end); returns the number of files."""
    fs, base = _fs(url)
    src = f"{base.rstrip('/')}/run"
    if not fs.exists(src):
        return 0
    files = [f for f in fs.find(src) if not fs.isdir(f)]
    tmp = dest.parent / f".{dest.name}.pull.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for f in files:
            rel = f[len(src.rstrip("/")) + 1:] if f.startswith(src) else f.split("/run/", 1)[-1]
            local = tmp / rel
            local.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(f, str(local))
        if dest.exists() and not any(p.is_file() and p.name != "launch.json" for p in dest.rglob("*")):
            shutil.rmtree(dest)  # only the launch record of this very run: nothing to keep
        if dest.exists():
            aside = dest.with_name(f"{dest.name}.before-launch-{dt.datetime.now().strftime('%Y%m%dT%H%M%S')}")
            os.replace(dest, aside)
            say(f"the local {dest.name}/ was moved to {aside.name}/ to make room for the fetched run")
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return len(files)


def write_status(url: str, state: str, **extra) -> dict:
    fs, base = _fs(url)
    doc = {"state": state, "updated": time.time(), **extra}
    fs.makedirs(base, exist_ok=True)
    fs.pipe_file(f"{base.rstrip('/')}/status.json", json.dumps(doc).encode())
    return doc


def read_status(url: str) -> dict | None:
    """The container's status.json, or None when it has not written one (yet) or it is unreadable."""
    fs, base = _fs(url)
    try:
        return json.loads(fs.cat_file(f"{base.rstrip('/')}/status.json"))
    except (FileNotFoundError, ValueError, OSError):
        return None


def write_log(url: str, text: str) -> None:
    fs, base = _fs(url)
    fs.pipe_file(f"{base.rstrip('/')}/log.txt", text.encode("utf-8", "replace"))


def read_log(url: str) -> str:
    fs, base = _fs(url)
    try:
        return fs.cat_file(f"{base.rstrip('/')}/log.txt").decode("utf-8", "replace")
    except (FileNotFoundError, OSError):
        return ""


def log_tail_lines(path: Path, n: int = 400) -> tuple[list[str], int]:
    """(last n lines, total line count) of a log file."""
    try:
        lines = path.read_text(errors="replace").replace("\r", "\n").splitlines()
    except OSError:
        return [], 0
    return lines[-n:], len(lines)


def current_stage(run_dir: Path) -> str | None:
    """The stage being worked on, from the run folder: the last one with a train.log."""
    logs = sorted(run_dir.glob("*/train.log"), key=lambda p: p.stat().st_mtime)
    return logs[-1].parent.name if logs else None


def heartbeat(url: str, run_dir: Path, log: Path, interval: float, once: bool = False) -> None:
    """Container side: write status 'running' (stage, log line count) and the log tail every `interval` s."""
    while True:
        lines, total = log_tail_lines(log)
        with contextlib.suppress(Exception):  # a missed beat is not worth killing the run for
            write_log(url, "\n".join(lines) + "\n")
            write_status(url, "running", stage=current_stage(run_dir), log_lines=total,
                         log_first_line=max(0, total - len(lines)))
        if once:
            return
        time.sleep(interval)


def push_final(run_dir: Path, url: str, exit_code: int, log: Path | None = None,
               include_checkpoints: bool = False) -> tuple[int, str]:
    """Container side, after training: upload runs/<recipe>/ (checkpoints too with `include_checkpoints` or
    TUNEBOOK_UPLOAD_CHECKPOINTS=1), the log tail and the final status; returns (files uploaded, final state)."""
    include = include_checkpoints or os.environ.get("TUNEBOOK_UPLOAD_CHECKPOINTS") == "1"
    n = push_run(run_dir, url, include_checkpoints=include) if run_dir.is_dir() else 0
    lines, total = log_tail_lines(log) if log else ([], 0)
    if log:
        write_log(url, "\n".join(lines) + "\n")
    state = "succeeded" if exit_code == 0 else "failed"
    write_status(url, state, exit_code=exit_code, stage=current_stage(run_dir), files=n, log_lines=total,
                 log_first_line=max(0, total - len(lines)))
    return n, state


# ---------------------------------------------------------------------------------------------- estimate
@dataclass
class Estimate:
    """What a run is expected to cost, and where each number came from."""

    train_hours: float | None
    usd_per_hour: float | None
    price_source: str
    hours_source: str
    notes: list[str] = field(default_factory=list)

    @property
    def hours(self) -> float | None:
        return None if self.train_hours is None else self.train_hours + STARTUP_HOURS

    @property
    def usd(self) -> float | None:
        return None if self.hours is None or self.usd_per_hour is None else self.hours * self.usd_per_hour

    def render(self) -> str:
        if self.hours is not None:
            time_ = (f"~{_dur(self.hours)} ({_dur(self.train_hours)} training from the planner + "
                     f"{_dur(STARTUP_HOURS)} assumed for boot, image pull and upload)")
        else:
            time_ = f"unknown ({self.hours_source})"
        price = f"${self.usd_per_hour:.2f}/h ({self.price_source})" if self.usd_per_hour else \
            f"price unknown ({self.price_source})"
        total = f" = ~${self.usd:.2f}" if self.usd is not None else ""
        return f"{time_} x {price}{total}"


def _secs(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min"


def _dur(hours: float) -> str:
    return f"{hours:.1f} h" if hours >= 1 else f"{max(1, round(hours * 60))} min"


def planner_hours(rec: Recipe, gpu: str, gpus: int) -> tuple[float | None, str]:
    """Training hours of every training stage on `gpus` x `gpu`, from runner.plan.estimate (None + why when unknown)."""
    try:
        g = P.gpu_by_id(gpu)
        res = resolve(rec, h=target_hardware(g, gpus), template_check=False)
        root = rec.root
        total, parts = 0.0, []
        for st in res.stages:
            if st.kind not in TRAIN_KINDS or not st.config:
                continue
            base = str(st.config.get("base_model") or res.recipe.data["base_model"])
            if base.startswith(str(res.run_root)):  # an upstream stage's output: same shape as the recipe's base
                base = res.recipe.data["base_model"]
            shape = P.load_model_shape(base, root)
            setup = P.TrainSetup.from_axolotl_config(st.config, root, n_gpus=gpus)
            tokens, _ = recipe_tokens(res, st)
            if not tokens:
                return None, f"no token count for stage {st.name}"
            plan = P.make_plan(shape, setup, [g], primary=g.id, tokens_per_epoch=tokens,
                               epochs=float(st.config.get("num_epochs") or 1))
            row = plan.rows[0]
            if row.verdict == "does not fit":
                parts.append(f"{st.name} does NOT fit {g.name} ({plan.estimate.peak_allocated_gib:.1f} GiB)")
            if not row.hours:
                return None, f"the planner has no speed figure for {g.name}"
            total += row.hours
        return total, "; ".join(parts) or "runner.plan.estimate"
    except TunebookError as exc:
        return None, f"planner: {exc.what}"
    except (ImportError, AttributeError, KeyError, TypeError, ValueError) as exc:
        return None, f"planner unavailable ({type(exc).__name__}: {exc})"


def table_price(cloud: str, gpu: str, gpus: int) -> tuple[float | None, str]:
    """Per-machine USD/h from recipes/presets/gpu-prices.yaml for this provider (secure/on-demand tier first)."""
    try:
        offers = [o for o in P.prices(gpu) if str(o.get("provider", "")).lower() == cloud]
    except Exception as exc:  # the table is another module's; a broken one must not stop a launch
        return None, f"no price table ({type(exc).__name__})"
    if not offers:
        return None, f"gpu-prices.yaml has no {cloud} price for {gpu}"
    preferred = [o for o in offers if any(w in str(o.get("tier", "")).lower() for w in ("secure", "on-demand"))]
    o = max(preferred or offers, key=lambda x: x["usd_per_hour"])
    return float(o["usd_per_hour"]) * gpus, f"{cloud} {o.get('tier', '')}, {o.get('date', '?')}, gpu-prices.yaml"


# ---------------------------------------------------------------------------------------------- signals
class Interrupted(BaseException):
    """SIGINT/SIGTERM while a launch is in flight (a BaseException: nothing swallows it by accident)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class SignalGuard:
    """SIGINT and SIGTERM raise Interrupted, except inside `shielded()` (deferred to its end) and
    `ignoring()` (dropped: the terminate call in progress must finish)."""

    def __init__(self):
        self.mode, self.pending, self._old = "raise", None, {}

    def _handler(self, signum, frame):
        if self.mode == "raise":
            raise Interrupted(signum)
        if self.mode == "defer":
            self.pending = self.pending or signum
        else:
            say(f"{signal.Signals(signum).name} ignored: terminating the instance first")

    def install(self):
        with contextlib.suppress(ValueError):  # not the main thread: no handlers, finally still runs
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handler)
        return self

    def restore(self):
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}

    @contextlib.contextmanager
    def shielded(self):
        prev, self.mode = self.mode, "defer"
        try:
            yield
        finally:
            self.mode = prev
            if self.pending is not None and prev == "raise":
                s, self.pending = self.pending, None
                raise Interrupted(s)

    @contextlib.contextmanager
    def ignoring(self):
        prev, self.mode = self.mode, "ignore"
        try:
            yield
        finally:
            self.mode = prev


# ---------------------------------------------------------------------------------------------- launch
@dataclass
class LaunchOptions:
    """How to run a recipe remotely (the `tunebook launch` flags)."""

    cloud: str
    gpu: str
    gpus: int = 1
    yes: bool = False
    image: str | None = None
    artifacts: str | None = None
    disk_gb: int = 100
    volume_gb: int = 100
    region: str | None = None
    ssh_key: str | None = None
    env: list[str] = field(default_factory=list)
    max_hours: float | None = None
    boot_timeout_s: float | None = None
    stale_timeout_s: float | None = None
    poll_s: float | None = None
    dry_run: bool = False
    include_checkpoints: bool = False


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def build_env(opts: LaunchOptions, rec, run_url: str, rid: str) -> tuple[dict[str, str], set[str]]:
    """The container's environment and which of its names hold secrets. RECIPE is the recipe's file name (what
    `make train RECIPE=` takes); TUNEBOOK_RUN_NAME its `name:` (the folder under runs/)."""
    env = {"RECIPE": rec.path.stem, "TUNEBOOK_RUN_NAME": rec.name, "GPUS": str(opts.gpus),
           "TUNEBOOK_ARTIFACTS": run_url, "TUNEBOOK_RUN_ID": rid,
           "TUNEBOOK_RECIPE_B64": base64.b64encode(rec.path.read_bytes()).decode(),
           "HF_HUB_DISABLE_TELEMETRY": "1", "AXOLOTL_DO_NOT_TRACK": "1"}
    if opts.include_checkpoints:
        env["TUNEBOOK_UPLOAD_CHECKPOINTS"] = "1"
    if opts.cloud == "runpod":
        # RunPod restarts a container that exits: after the upload it waits to be terminated instead, and the
        # pod volume keeps runs/ and the model cache across a restart (a restarted run resumes).
        env["TUNEBOOK_HOLD"] = "1"
        if opts.volume_gb:
            env["TUNEBOOK_PERSIST_DIR"] = "/workspace"
            env["HF_HOME"] = "/workspace/hf"
    secret = set()
    extra = [e.strip() for e in opts.env if e.strip()]
    extra += [e.strip() for e in os.environ.get("TUNEBOOK_FORWARD_ENV", "").split(",") if e.strip()]
    for name in (*SECRET_ENV, *PLAIN_ENV, *extra):
        if name in NEVER_FORWARD:
            raise TunebookError(f"{name} is the provider's API key: it is never sent to the instance",
                                fix=f"Remove {name} from --env / TUNEBOOK_FORWARD_ENV.")
        if name in env:
            continue
        if os.environ.get(name):
            env[name] = os.environ[name]
            if name in SECRET_ENV or name in extra:
                secret.add(name)
    return env, secret


def _record(path: Path, data: dict) -> None:
    with contextlib.suppress(OSError):
        atomic_write_json(path, data)


@dataclass
class LaunchPlan:
    """One launch, validated and estimated; nothing rented yet."""

    rec: Recipe
    opts: LaunchOptions
    image: str
    run_id: str
    run_url: str
    spec: LaunchSpec
    provider: Provider
    what: str                   # the machine, in the provider's words
    est: Estimate
    max_hours: float
    layout: RunLayout           # runs/<recipe>/ here: launch.json, and where the results are fetched to

    def rel(self, path: Path) -> str:
        return os.path.relpath(path, self.rec.root)


@dataclass
class Rental:
    """What happened to the rented machine: its ids, the outcome, the failure to report, the launch record."""

    record: dict
    price_seen: float | None
    inst_ids: list[str] = field(default_factory=list)
    outcome: str = "failed"
    failure: TunebookError | None = None
    t0: float = field(default_factory=time.time)


def launch(rec: Recipe, opts: LaunchOptions, out=None) -> int:
    """Run recipe `rec` on a rented machine; see the module docstring. Returns 0 (1: not confirmed) or raises
    TunebookError. The caller loads `rec` first, so a broken recipe fails before anything is rented."""
    out = out or sys.stderr
    plan = plan_launch(rec, opts)
    show_plan(plan, out)
    if opts.dry_run:
        print("dry run: nothing was rented", file=out)
        return 0
    if not confirm(plan, out):
        print("not launched", file=out)
        return 1
    rental = Rental(record=new_record(plan), price_seen=plan.est.usd_per_hour)
    run_rented(plan, rental, out)
    fetch_results(plan, rental, out)
    _record(plan.layout.launch_record, rental.record)
    if rental.failure is not None:
        raise rental.failure
    mins = (time.time() - rental.t0) / 60
    cost = f", about ${rental.record['usd_approx']:.2f}" if rental.record.get("usd_approx") is not None else ""
    print(f"done: {rec.name} trained on {plan.provider.name} in {mins:.0f} min{cost}; instance terminated; results "
          f"in {plan.rel(plan.layout.root)}/", file=out)
    return 0


def check_settings(opts: LaunchOptions) -> tuple[str, str]:
    """(image, artifact store URL) after the checks that need no provider call: GPU count, a pushed image, an
    artifact store whose fsspec backend exists here too (we fetch the results)."""
    if opts.gpus < 1:
        raise TunebookError(f"--gpus {opts.gpus}: at least one GPU", fix="Pass --gpus 1 or more.")
    image = opts.image or os.environ.get("TUNEBOOK_IMAGE")
    if not image:
        raise TunebookError("no image to run: pass --image or set TUNEBOOK_IMAGE",
                            fix="Build it with `make docker`, push it to a registry the provider can pull from "
                                "(e.g. docker push ghcr.io/you/tunebook:<commit>), then set TUNEBOOK_IMAGE to that name.")
    if image.startswith("localhost/"):
        raise TunebookError(f"image {image} exists only on this machine",
                            fix="Push it to a registry (ghcr.io, Docker Hub, ...) and pass that name.")
    base_url = opts.artifacts or os.environ.get("TUNEBOOK_ARTIFACTS")
    if not base_url:
        raise TunebookError("no artifact store: the results would be lost with the instance",
                            fix="Set TUNEBOOK_ARTIFACTS (or --artifacts) to an fsspec URL the instance can write to, "
                                "e.g. s3://my-bucket/tunebook with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY set "
                                "(they are forwarded as secrets).")
    _fs(base_url)
    return image, base_url


def plan_launch(rec: Recipe, opts: LaunchOptions) -> LaunchPlan:
    """Validate and estimate: the settings, the container's environment, the provider's machine (Lambda: picks
    the instance type; no capacity is reported here), the planner's hours and the price."""
    image, base_url = check_settings(opts)
    rid = run_id()
    run_url = _join(base_url, rec.name, rid)
    env, secret_names = build_env(opts, rec, run_url, rid)
    spec = LaunchSpec(name=f"tunebook-{rec.name}-{rid}"[:64], image=image, gpu=opts.gpu, gpus=opts.gpus, env=env,
                      secret_names=frozenset(secret_names), disk_gb=opts.disk_gb, volume_gb=opts.volume_gb,
                      region=opts.region, ssh_key=opts.ssh_key or os.environ.get("TUNEBOOK_LAMBDA_SSH_KEY"))
    provider = get_provider(opts.cloud)
    what = provider.prepare(spec)
    hours, hours_src = planner_hours(rec, opts.gpu, opts.gpus)
    live = provider.price_per_hour(spec)
    price, price_src = (live, f"{provider.name} API, live") if live else table_price(opts.cloud, opts.gpu, opts.gpus)
    est = Estimate(hours, price, price_src, hours_src)
    max_hours = opts.max_hours or _env_float("TUNEBOOK_MAX_HOURS", max(6.0, 3 * (est.hours or 2)))
    return LaunchPlan(rec, opts, image, rid, run_url, spec, provider, what, est, max_hours,
                      RunLayout.for_recipe(rec.root, rec.name))


def show_plan(plan: LaunchPlan, out) -> None:
    """What will be rented, where the results go, the estimate and the environment (secrets masked)."""
    est = plan.est
    print(f"tunebook launch {plan.rec.name}: {plan.what}\n"
          f"  image      {plan.image}\n"
          f"  artifacts  {plan.run_url}\n"
          f"  estimate   {est.render()}\n"
          f"  safety     terminated after {plan.max_hours:g} h at the latest (--max-hours)\n"
          f"  env        {' '.join(f'{k}={v}' for k, v in plan.spec.shown_env().items())}", file=out, flush=True)
    if est.hours_source and est.train_hours is not None and est.hours_source != "runner.plan.estimate":
        print(f"  warning    {est.hours_source}", file=out)


def confirm(plan: LaunchPlan, out) -> bool:
    """--yes, or the user's answer on a terminal; without a terminal to ask on, a TunebookError."""
    if plan.opts.yes:
        return True
    if not sys.stdin or not sys.stdin.isatty():
        raise TunebookError("launching rents a paid machine and needs confirmation",
                            fix="Run it in a terminal to answer the prompt, or pass --yes (YES=1 with make).")
    usd = plan.est.usd
    answer = input(f"Rent it{f' (about ${usd:.2f})' if usd is not None else ''}? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def new_record(plan: LaunchPlan) -> dict:
    """The launch record (runs/<recipe>/launch.json) as it starts."""
    est, opts = plan.est, plan.opts
    return {"recipe": plan.rec.name, "cloud": opts.cloud, "run_id": plan.run_id, "image": plan.image,
            "artifacts": plan.run_url, "gpu": opts.gpu, "gpus": opts.gpus, "instance": None, "started": time.time(),
            "terminated": None, "estimate": {"hours": est.hours, "usd_per_hour": est.usd_per_hour, "usd": est.usd}}


def run_rented(plan: LaunchPlan, rental: Rental, out) -> None:
    """Create the instance, watch the run, and terminate the instance on every path (SIGINT/SIGTERM included).
    The outcome and the failure to report are left in `rental`; no capacity and an unconfirmed termination raise."""
    guard = SignalGuard().install()
    try:
        try:
            inst = create(plan, rental, guard, out)
            watch_run(plan, rental, inst, out)
        except Interrupted as exc:
            rental.outcome = "interrupted"
            rental.failure = TunebookError(f"interrupted ({exc}): the instance was terminated", exit_code=130)
        except NoCapacity:
            rental.outcome = "no capacity"
            raise
        except TunebookError as exc:
            rental.outcome = "error"
            rental.failure = exc
    finally:
        terminate_rented(plan, rental, guard, out)


def create(plan: LaunchPlan, rental: Rental, guard: SignalGuard, out) -> Instance:
    """Create the instance, shielded from signals (one that arrives is acted on once the id is in); a create
    whose answer was lost is looked up by name, so that it is terminated too."""
    provider, spec = plan.provider, plan.spec
    with guard.shielded():
        try:
            inst = provider.create(spec)
            rental.inst_ids.append(inst.id)
        except ProviderError as exc:
            if exc.created_maybe:
                say(f"the create call failed ({exc.what}); looking for an instance named {spec.name} to "
                    "terminate")
                rental.inst_ids += _recover(provider, spec.name)
            raise
    rental.price_seen = inst.usd_per_hour or rental.price_seen
    rental.record["instance"] = inst.id
    _record(plan.layout.launch_record, rental.record)
    print(f"{provider.name}: created {inst.id} ({spec.name}); watching it (Ctrl-C terminates it)", file=out,
          flush=True)
    return inst


def watch_run(plan: LaunchPlan, rental: Rental, inst: Instance, out) -> None:
    """Watch the run to its end; a run that did not succeed leaves its failure (with the log's last lines)."""
    status = watch(plan.provider, inst.id, plan.run_url, plan.opts, plan.max_hours, rental.price_seen, out)
    rental.outcome = status.get("state", "failed")
    if rental.outcome != "succeeded":
        rental.failure = TunebookError(
            f"training failed on the instance (exit code {status.get('exit_code', '?')}, stage "
            f"{status.get('stage') or '?'}). Last lines of its log:\n{_last_lines(read_log(plan.run_url), 15)}",
            where=f"{plan.run_url}/log.txt", exit_code=1,
            fix="The run's files are fetched to runs/ (logs in runs/<recipe>/<stage>/train.log); fix and launch again.")


def terminate_rented(plan: LaunchPlan, rental: Rental, guard: SignalGuard, out) -> None:
    """Terminate every instance of this launch (signals ignored meanwhile) and complete the record; a
    TunebookError, loud, when a termination is not confirmed."""
    provider, ids = plan.provider, rental.inst_ids
    try:
        with guard.ignoring():
            ok = _terminate_all(provider, ids, out)
    finally:
        guard.restore()
    hours = (time.time() - rental.t0) / 3600
    rental.record.update(terminated=ok if ids else None, finished=time.time(), outcome=rental.outcome,
                         hours=round(hours, 3),
                         usd_approx=round(hours * rental.price_seen, 2) if rental.price_seen else None)
    if ids and not ok:
        _record(plan.layout.launch_record, rental.record)
        raise TunebookError(
            f"could not confirm that {provider.name} instance(s) {', '.join(ids)} were terminated: "
            "IT MAY STILL BE RUNNING AND BILLING",
            fix=f"Terminate it now at {provider.console_url} or with `tunebook terminate --cloud {plan.opts.cloud} "
                f"{' '.join(ids)}`.", exit_code=1)


def fetch_results(plan: LaunchPlan, rental: Rental, out) -> int:
    """Fetch the run's files into runs/<recipe>/ (also after a failed or interrupted run); returns their count."""
    if rental.outcome not in ("succeeded", "failed", "error", "interrupted") or not rental.inst_ids:
        return 0
    fetched = 0
    try:
        fetched = pull_run(plan.run_url, plan.layout.root)
    except Exception as exc:  # the failure that brought us here matters more
        say(f"could not fetch the run from {plan.run_url}: {exc}")
    if fetched:
        print(f"fetched {fetched} files from {plan.run_url}/run to {plan.rel(plan.layout.root)}/", file=out)
    return fetched


def _last_lines(text: str, n: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-n:])


def _recover(provider, name: str) -> list[str]:
    """Instances named `name` (a create whose answer was lost), retried for a short while."""
    delay = max(0.05, _env_float("TUNEBOOK_RETRY_BASE_S", 2))
    for _ in range(5):
        try:
            found = [i.id for i in provider.find(name) if not i.gone]
            if found:
                return found
        except ProviderError:
            pass
        time.sleep(delay)
    return []


def _terminate_all(provider, ids: list[str], out) -> bool:
    ok = True
    for iid in ids:
        print(f"{provider.name}: terminating {iid}", file=out, flush=True)
        done = provider.terminate_with_retries(iid, say=say)
        print(f"{provider.name}: {iid} {'terminated' if done else 'NOT CONFIRMED TERMINATED'}", file=out, flush=True)
        ok = ok and done
    return ok


def watch(provider, iid: str, run_url: str, opts: LaunchOptions, max_hours: float, usd_per_hour, out) -> dict:
    """Poll the instance and the container's status until the run ends; return the final status.json.
    Raises TunebookError when the instance stops, never starts, goes silent or runs out of time."""
    from rich.console import Console

    poll = opts.poll_s or _env_float("TUNEBOOK_POLL_S", 15)
    boot_timeout = opts.boot_timeout_s or _env_float("TUNEBOOK_BOOT_TIMEOUT_S", 45 * 60)
    stale_timeout = opts.stale_timeout_s or _env_float("TUNEBOOK_STALE_TIMEOUT_S", 20 * 60)
    con = Console(file=out, highlight=False)
    t0, printed, last_state, errors, last_beat = time.time(), 0, None, 0, None
    with con.status("starting", spinner="dots") as live:
        while True:
            elapsed = time.time() - t0
            if elapsed > max_hours * 3600:
                raise TunebookError(f"the run passed --max-hours {max_hours:g} h", exit_code=1,
                                    fix="Raise --max-hours (or TUNEBOOK_MAX_HOURS) if the run really needs longer.")
            try:
                inst = provider.get(iid)
                errors = 0
            except NotFound:
                inst = None
            except AuthError:
                raise
            except ProviderError as exc:
                errors += 1
                if errors >= 5:
                    raise TunebookError(f"lost contact with {provider.name}: {exc.what}", exit_code=1)
                time.sleep(poll)
                continue
            status = read_status(run_url) or {}
            text = read_log(run_url)
            if text:
                first = int(status.get("log_first_line") or 0)
                lines = text.rstrip("\n").splitlines()
                for i, line in enumerate(lines):
                    if first + i >= printed:
                        con.print(f"  | {line}", markup=False)
                printed = max(printed, first + len(lines))
            state = status.get("state")
            if status.get("updated"):
                last_beat = float(status["updated"])
            if state in FINAL_STATES:
                con.print(f"container: {state} (exit code {status.get('exit_code', '?')})")
                return status
            if inst is None or inst.state == "stopped":
                detail = inst.detail if inst else "gone"
                raise TunebookError(f"the {provider.name} instance {iid} stopped before training finished "
                                    f"({detail}; last stage: {status.get('stage') or 'none'})", exit_code=1,
                                    fix="Out of memory, a preempted machine or a crash in the container; its log "
                                        "tail is above. The run's files so far are fetched to runs/.")
            if state is None and elapsed > boot_timeout:
                raise TunebookError(f"the container did not start within {_secs(boot_timeout)} "
                                    f"({provider.name}: {inst.detail})", exit_code=1,
                                    fix="Check that the image can be pulled by the provider (public, or registry "
                                        "credentials set up there) and TUNEBOOK_BOOT_TIMEOUT_S.")
            if last_beat and time.time() - last_beat > stale_timeout:
                raise TunebookError(f"no heartbeat from the container for {_secs(stale_timeout)}", exit_code=1,
                                    fix="The machine may have frozen or lost its network.")
            key = (inst.state, inst.detail, state, status.get("stage"))
            if key != last_state:
                con.print(f"{provider.name}: {inst.detail}; container: {state or 'not started'}"
                          f"{'; stage ' + status['stage'] if status.get('stage') else ''}")
                last_state = key
            cost = f", ~${elapsed / 3600 * usd_per_hour:.2f} so far" if usd_per_hour else ""
            live.update(f"{iid}: {inst.detail} | {state or 'booting'}"
                        f"{' | ' + status['stage'] if status.get('stage') else ''} | {elapsed / 60:.0f} min{cost}")
            time.sleep(poll)


def terminate(cloud: str, ids: list[str]) -> int:
    """`tunebook terminate`: terminate instances by id (cleanup after a failed confirmation)."""
    provider = get_provider(cloud)
    if not _terminate_all(provider, ids, sys.stdout):
        raise TunebookError("not every instance could be confirmed terminated", fix=f"Check {provider.console_url}.",
                            exit_code=1)
    return 0
