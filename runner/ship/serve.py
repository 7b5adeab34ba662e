"""`tunebook serve`: vLLM's OpenAI-compatible server for one or several trained recipes, started, watched and
stopped.

Adapters (default): one base model, `--enable-lora --lora-modules <recipe>=<adapter> ...`, one LoRA module per
recipe (the adapter of its last training stage, runner.recipe.shipped), named after the recipe; a request picks one
with `"model": "<recipe>"`, and `"model": "<base name>"` gets the untouched base. Merged (--merged, one recipe):
the merged model, served under the recipe's name.

What is served is what was trained and evaluated:
- the chat template the recipe trained with (runner.chat_template.stage_template, never the base tokenizer's own,
  which for SmolLM2 injects a default system prompt that training removed) goes to vLLM as a file (--chat-template);
- its end-of-turn token stops every answer: vLLM adds the `eos_token_id`s of the generation config
  (`--generation-config DIR`) to each request's stop ids (SamplingParams.update_from_generation_config), so a plain
  OpenAI request stops at the end of the turn without the client passing anything; `--override-generation-config`
  would not do it (vLLM reads only sampling defaults from the override);
- the dtype the eval stage generates in (runner.evaluate.generate.inference_dtype: fp32 on a CPU).

vLLM runs from its own venv (runner.ship.vllm_env) as a child in its own process group, so tunebook can wait for
/health, print the URL and a ready `curl`, and on Ctrl-C or SIGTERM stop the whole group (the API server, its
engine core and workers). While it runs, runs/_serve/<port>/server.json says where it is (runner.ship.serve_state)
for `tunebook serve --add/--remove` and `tunebook eval --server`.
"""
from __future__ import annotations

import ctypes
import datetime as dt
import errno
import json
import os
import shlex
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from runner.chat_template import end_of_turn_token, stage_template
from runner.console import say
from runner.errors import TunebookError
from runner.fsutil import atomic_write_json, atomic_write_text, sha256_json
from runner.pipeline.lock import refuse_if_gate_failed
from runner.recipe.load import looks_like_path
from runner.recipe.resolve import ResolvedRecipe
from runner.recipe.shipped import shipped_model
from runner.ship import serve_state as state
from runner.ship import vllm_env

# vLLM accepts these --max-lora-rank values; an adapter's rank is rounded up to the next one.
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
# Adapters vLLM keeps loaded in CPU memory beyond those served from the start, so hot-loaded ones (`--add`) are
# not evicted and re-read from disk while several are in use (--max-cpu-loras; --max-loras, the adapters one
# batch can mix, stays the number served at start: each of those slots is allocated up front on the device).
HOT_LOAD_ROOM = 4
DEFAULT_PORT = 8000  # vLLM's
START_TIMEOUT = 900.0  # seconds to wait for /health: a large model's first load from disk takes minutes


@dataclass
class Served:
    """One recipe's model as served: a LoRA adapter on `base`, or a merged model folder."""

    recipe: str
    base: str
    adapter: Path | None
    merged: Path | None
    rank: int | None
    template: str = ""          # the chat template it trained with (its text)
    end_of_turn: str | None = None


@dataclass
class ServePlan:
    """What one vLLM server serves, and how."""

    model: str                  # the model folder or hub id vLLM loads
    name: str                   # its served name (the base's short name; the recipe for a merged model)
    served: list[Served]
    merged: bool
    template: str
    end_of_turn: str | None
    stop_ids: list[int]         # the generation config's eos_token_id: the base's and the end-of-turn token
    generation_config: dict
    max_lora_rank: int | None
    dtype: str


def _resolve_base(res: ResolvedRecipe, base: str) -> str:
    return str(res.recipe.resolve_path(base)) if looks_like_path(base) else base


def served_model(res: ResolvedRecipe, merged: bool = False, require_files: bool = True) -> Served:
    """What serving a resolved recipe means: what its run ships (runner.recipe.shipped), as its last training
    stage's adapter or as the merged model. A run whose evaluation gate failed is refused."""
    name = res.recipe.name
    if require_files:
        refuse_if_gate_failed(res.run_root, name, "serve")
    model = shipped_model(res, action="serve")
    st = model.stage
    rel = lambda p: os.path.relpath(p, res.recipe.root)
    if merged:
        path = model.merged
        if path is None:
            raise TunebookError(f"recipe {name} has no merge stage after {st.name}: there is no merged model",
                                fix=f"Serve the adapter (`tunebook serve {name}`) or add `merge` to its stages.")
        if require_files and not (path / "config.json").is_file():
            raise TunebookError(f"no merged model at {rel(path)}", fix=f"Run `make train RECIPE={name}` first.")
        return Served(name, str(path), None, path, None)
    if model.adapter is None:
        raise TunebookError(f"recipe {name} trains all weights (no LoRA adapter) in stage {st.name}",
                            fix=f"Serve the model itself: `tunebook serve {name} --merged`.")
    if require_files and not (model.adapter / "adapter_config.json").is_file():
        raise TunebookError(f"no trained adapter at {rel(model.adapter)}",
                            fix=f"Run `make train RECIPE={name}` first (stage {st.name} writes it).")
    return Served(name, _resolve_base(res, model.base), model.adapter, None, model.rank)


def trained_template(res: ResolvedRecipe, served: Served) -> Served:
    """`served` with the chat template its recipe trained with and that template's end-of-turn token."""
    from runner.tokenizer import load_tokenizer

    model = shipped_model(res, action="serve")
    stage, base = model.stage, _resolve_base(res, model.base)
    tok = load_tokenizer(base)  # shared, unchanged: only its template and vocabulary are read
    template, _origin = stage_template(stage.config, tok, f"the tokenizer of {base}")
    text = template or tok.chat_template
    served.template, served.end_of_turn = text, end_of_turn_token(tok, template)
    return served


def max_lora_rank(ranks) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds every rank."""
    top = max([r for r in ranks if r] or [16])
    for allowed in LORA_RANKS:
        if allowed >= top:
            return allowed
    raise TunebookError(f"LoRA rank {top} is above vLLM's maximum ({LORA_RANKS[-1]})",
                        fix="Serve the merged model instead (--merged).")


def base_name(base: str) -> str:
    """The served name of a base model: a local folder's name, or the hub id itself."""
    return Path(base).name if os.path.isabs(base) or base.startswith(".") else base


def stop_token_ids(model: str, end_of_turn: str | None) -> tuple[dict, list[int]]:
    """(the generation config to serve with, its eos_token_id list): the model's own generation config (its
    sampling defaults stay as vLLM would take them) with the end-of-turn token added to eos_token_id."""
    from transformers import AutoConfig, GenerationConfig

    from runner.tokenizer import load_tokenizer

    try:
        gen = GenerationConfig.from_pretrained(model)
    except OSError:
        gen = GenerationConfig.from_model_config(AutoConfig.from_pretrained(model))
    cfg = gen.to_diff_dict()
    eos = cfg.get("eos_token_id")
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    tok = load_tokenizer(model)
    if tok.eos_token_id is not None and tok.eos_token_id not in ids:
        ids.append(tok.eos_token_id)
    if end_of_turn:
        eot = tok.convert_tokens_to_ids(end_of_turn)
        if isinstance(eot, int) and eot not in ids:
            ids.append(eot)
    cfg["eos_token_id"] = ids
    return cfg, ids


def plan(recipes: list[ResolvedRecipe], merged: bool = False, require_files: bool = True) -> ServePlan:
    """What serving these recipes together means, every refusal raised here: a recipe named twice, gates that
    failed, missing adapters, different base models, different chat templates or end-of-turn tokens."""
    if not recipes:
        raise TunebookError("name at least one recipe to serve")
    if len({r.recipe.name for r in recipes}) != len(recipes):
        raise TunebookError("a recipe is named twice", fix="Name each recipe once.")
    if merged and len(recipes) > 1:
        raise TunebookError("several merged models cannot share one vLLM server (each is a whole model)",
                            fix="Serve the recipes' adapters together (without --merged), or one merged model "
                                "per server (different --port).")
    served = [served_model(r, merged=merged, require_files=require_files) for r in recipes]
    bases = {s.base for s in served}
    if not merged and len(bases) > 1:
        listing = "; ".join(f"{s.recipe}: {s.base}" for s in served)
        raise TunebookError(f"recipes served together must share one base model, but they differ ({listing})",
                            fix="Serve them on separate servers (different --port), one base model each.")
    from runner.evaluate.generate import inference_dtype

    served = [trained_template(r, s) for r, s in zip(recipes, served)]
    first = served[0]
    for s in served[1:]:
        if (s.template, s.end_of_turn) != (first.template, first.end_of_turn):
            raise TunebookError(
                f"recipes {first.recipe} and {s.recipe} trained with different chat templates (or end-of-turn "
                "tokens), and one vLLM server renders every request with one template",
                fix="Serve them on separate servers (different --port), or train them with the same "
                    "chat_template.")
    model = str(first.merged) if merged else first.base
    gen, ids = stop_token_ids(model, first.end_of_turn)
    return ServePlan(model=model, name=first.recipe if merged else base_name(first.base), served=served,
                     merged=merged, template=first.template, end_of_turn=first.end_of_turn, stop_ids=ids,
                     generation_config=gen, dtype=inference_dtype(),
                     max_lora_rank=None if merged else max_lora_rank(s.rank for s in served))


def vllm_args(p: ServePlan, files: state.ServerFiles, host: str, port: int,
              extra: list[str] | None = None) -> list[str]:
    """vLLM's server arguments (after the program) for a plan, its files and the address."""
    args = ["--model", p.model, "--served-model-name", p.name, "--dtype", p.dtype,
            "--chat-template", str(files.chat_template), "--generation-config", str(files.generation_dir)]
    if not p.merged:
        args += ["--enable-lora", "--lora-modules", *[f"{s.recipe}={s.adapter}" for s in p.served],
                 "--max-lora-rank", str(p.max_lora_rank), "--max-loras", str(len(p.served)),
                 "--max-cpu-loras", str(len(p.served) + HOT_LOAD_ROOM)]
    return args + ["--host", host, "--port", str(port), *(extra or [])]


# ---------------------------------------------------------------------------------------------- the address


def free_port(host: str) -> int:
    """A port nothing listens on now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port(host: str, port: int) -> None:
    """Refuse a port in use, before anything starts (vLLM would load the model first, then fail to bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As uvicorn binds: SO_REUSEADDR, so a port in TIME_WAIT after a server stopped counts as free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise TunebookError(f"port {port} on {host} is in use (another server listens there)",
                                    fix="Pass another --port (--port 0 picks a free one), or stop that server "
                                        f"(`ss -ltnp 'sport = :{port}'` names it).") from None
            raise TunebookError(f"cannot listen on {host}:{port}: {exc.strerror}",
                                fix="Pass an address of this machine with --host (default 127.0.0.1).") from None


def local_url(host: str, port: int) -> str:
    """The server's URL as a client on this machine reaches it."""
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


# ---------------------------------------------------------------------------------------------- the process


def _die_with_parent() -> None:
    """In the child before vLLM starts: SIGTERM it if tunebook dies without stopping it (SIGKILL, a crash), so no
    server is left holding the port (Linux prctl PR_SET_PDEATHSIG; elsewhere nothing)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def stop_group(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM vLLM's whole process group (API server, engine core, workers) and wait until every process of it
    has gone; SIGKILL what is left after `grace` seconds. Reaps `proc`."""
    def alive() -> bool:
        try:
            os.killpg(proc.pid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()
            if proc.returncode is not None and not alive():
                return
            time.sleep(0.2)
    proc.poll()


def _wait_healthy(proc: subprocess.Popen, url: str, log: Path, timeout: float) -> None:
    from runner.train.axolotl import log_tail

    deadline = time.monotonic() + timeout
    while not healthy(url):
        if proc.poll() is not None:
            raise TunebookError(f"vLLM exited with code {proc.returncode} before it was ready. Last relevant lines "
                                f"of its log:\n{log_tail(log)}\n", where=str(log),
                                fix="Read the full log at that path (vLLM's own message says what failed).",
                                exit_code=1)
        if time.monotonic() > deadline:
            raise TunebookError(f"vLLM did not answer {url}/health within {timeout:.0f} s", where=str(log),
                                fix="Read its log; pass a longer --start-timeout for a big model.", exit_code=1)
        time.sleep(1.0)


def curl_example(url: str, model: str, question: str = "What can you help me with?") -> str:
    """A ready `curl` for one served model (a chat completion; the server stops it at the end of the turn)."""
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 64}
    return (f"curl -s {url}/v1/chat/completions -H 'Content-Type: application/json' \\\n"
            f"  -d {shlex.quote(json.dumps(body))}")


def _first_question(res: ResolvedRecipe) -> str | None:
    """A held-out question of the recipe (prepared by its data stage), for the printed example."""
    path = res.layout.data_file("main", "held_out")
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            msgs = json.loads(line).get("messages") or []
            user = [m["content"] for m in msgs if m.get("role") == "user"]
            if user:
                return user[-1]
    except (OSError, ValueError, KeyError):
        pass
    return None


def serve(recipes: list[ResolvedRecipe], merged: bool = False, host: str | None = None, port: int | None = None,
          extra: list[str] | None = None, dry_run: bool = False, start_timeout: float = START_TIMEOUT) -> int:
    """Serve the recipes until Ctrl-C (exit 130) or SIGTERM (exit 0, a requested stop). With dry_run, print the
    command and start nothing."""
    root = recipes[0].recipe.root if recipes else Path(".")
    p = plan(recipes, merged, require_files=not dry_run)
    host = host or "127.0.0.1"
    if port == 0:
        port = free_port(host)
    port = port or DEFAULT_PORT
    files = state.ServerFiles.for_port(root, port)
    env = {**os.environ}
    if not merged:
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"  # `tunebook serve --add/--remove` (runner.ship.hotswap)
    argv = [*vllm_env.server_argv(root, check=not dry_run), *vllm_args(p, files, host, port, extra)]
    if dry_run:
        print(shlex.join(argv), flush=True)
        return 0
    check_port(host, port)
    existing = state.read(files.record)
    if existing and state.alive(existing):
        raise TunebookError(f"a tunebook server already runs on port {port} (pid {existing.tunebook_pid})",
                            where=str(files.record), fix="Pass another --port, or stop that one (Ctrl-C there).")
    files.dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(files.chat_template, p.template)
    atomic_write_json(files.generation_dir / "generation_config.json", p.generation_config)
    url = local_url(host, port)
    say(f"starting vLLM on {host}:{port}: {', '.join(s.recipe for s in p.served)} on {p.model} "
        f"({p.dtype}; its log: {os.path.relpath(files.log, root)})")
    with open(files.log, "ab") as log:
        log.write(f"\n$ {shlex.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=root, start_new_session=True, preexec_fn=_die_with_parent)
    record = None
    stopped_by = None
    try:
        _wait_healthy(proc, url, files.log, start_timeout)
        record = state.ServerRecord(
            url=url, host=host, port=port, pid=proc.pid, tunebook_pid=os.getpid(), model=p.model, name=p.name,
            merged=merged, max_lora_rank=p.max_lora_rank, template_sha256=sha256_json(p.template),
            end_of_turn=p.end_of_turn, stop_ids=p.stop_ids, dtype=p.dtype,
            adapters={s.recipe: str(s.adapter) for s in p.served if s.adapter is not None},
            started=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        state.write(files.record, record)
        example = p.served[0].recipe
        question = _first_question(recipes[0]) or "What can you help me with?"
        print(f"serving {', '.join(s.recipe for s in p.served)} (base model: {p.name}) at {url}/v1", flush=True)
        print(f"try it:\n{curl_example(url, example, question)}", flush=True)
        print("Ctrl-C stops the server.", flush=True)
        code = proc.wait()
        from runner.train.axolotl import log_tail

        raise TunebookError(f"vLLM stopped on its own (exit code {code}). Last relevant lines of its log:\n"
                            f"{log_tail(files.log)}\n", where=str(files.log), fix="Read the full log at that path.",
                            exit_code=1)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP (runner.cli.main raises Signalled for them)
        stopped_by = getattr(exc, "signum", signal.SIGINT)
    finally:
        if record is not None or proc.poll() is None:
            say("stopping vLLM")
        stop_group(proc)
        state.remove(files.record, proc.pid)
    say(f"vLLM stopped ({signal.Signals(stopped_by).name})")
    return 130 if stopped_by == signal.SIGINT else 0
