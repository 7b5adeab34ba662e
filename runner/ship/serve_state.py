"""Where a running `tunebook serve` is, for the commands that talk to it (`serve --add/--remove`, `eval --server`).

Each server has a folder runs/_serve/<port>/ holding what vLLM was started with (chat_template.jinja, generation/
generation_config.json), its log (vllm.log) and, while it runs, server.json: its URL, the pids of vLLM and of the
tunebook that watches it, the base model, the largest LoRA rank it takes, the chat template's hash and the adapters
it serves. The serving process writes server.json (atomically) once vLLM is healthy and removes it when vLLM has
stopped; `--add`/`--remove` rewrite its adapter list. A record whose tunebook is gone (killed with SIGKILL) is stale
and ignored.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from runner.errors import TunebookError
from runner.fsutil import atomic_write_json
from runner.layout import runs_dir

# Beside the recipes' run folders; no recipe name starts with "_" (schema), so none can collide with it.
SERVE_DIR = "_serve"


@dataclass(frozen=True)
class ServerFiles:
    """The files of the server on one port."""

    dir: Path

    @classmethod
    def for_port(cls, project_root: str | Path, port: int) -> "ServerFiles":
        return cls(runs_dir(project_root) / SERVE_DIR / str(port))

    @property
    def record(self) -> Path:
        return self.dir / "server.json"

    @property
    def chat_template(self) -> Path:
        return self.dir / "chat_template.jinja"

    @property
    def generation_dir(self) -> Path:
        """The folder given to vLLM's --generation-config (it reads generation_config.json there)."""
        return self.dir / "generation"

    @property
    def log(self) -> Path:
        return self.dir / "vllm.log"


@dataclass
class ServerRecord:
    """A running server, as server.json holds it."""

    url: str
    host: str
    port: int
    pid: int                    # vLLM's API server (leader of its process group)
    tunebook_pid: int           # the `tunebook serve` watching it
    model: str                  # the model folder or hub id vLLM loaded
    name: str                   # its served name
    merged: bool
    max_lora_rank: int | None
    template_sha256: str
    end_of_turn: str | None
    stop_ids: list[int]
    dtype: str
    adapters: dict[str, str] = field(default_factory=dict)  # served LoRA module name -> adapter folder
    started: str = ""


def write(path: Path, record: ServerRecord) -> None:
    atomic_write_json(path, asdict(record))


def read(path: Path) -> ServerRecord | None:
    """The record at `path`, None when there is none (or it cannot be read)."""
    try:
        return ServerRecord(**json.loads(Path(path).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def alive(record: ServerRecord) -> bool:
    """Is the tunebook that watches this server still running?"""
    try:
        os.kill(record.tunebook_pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def remove(path: Path, pid: int) -> None:
    """Remove the record of the server whose vLLM pid is `pid` (never another's that took the port since)."""
    rec = read(path)
    if rec is not None and rec.pid == pid:
        Path(path).unlink(missing_ok=True)


def running(project_root: str | Path) -> list[tuple[Path, ServerRecord]]:
    """(record file, record) of every server of this project whose tunebook still runs, by port."""
    base = runs_dir(project_root) / SERVE_DIR
    found = []
    for f in sorted(base.glob("*/server.json"), key=lambda p: p.parent.name):
        rec = read(f)
        if rec is not None and alive(rec):
            found.append((f, rec))
    return found


def normal_url(url: str) -> str:
    """A server URL without a trailing slash or /v1: http://host:port."""
    url = url.strip().rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def find(project_root: str | Path, url: str | None = None) -> tuple[Path, ServerRecord] | None:
    """The running server at `url` (None when tunebook has no record of it), or, without a URL, the only one
    running; a TunebookError when none runs or several do."""
    live = running(project_root)
    if url:
        want = normal_url(url)
        return next(((f, r) for f, r in live if normal_url(r.url) == want), None)
    if not live:
        raise TunebookError("no `tunebook serve` is running for this project (runs/_serve/*/server.json)",
                            fix="Start one (`tunebook serve RECIPE ...`), or name a server with --url.")
    if len(live) > 1:
        raise TunebookError(f"several servers are running ({', '.join(r.url for _, r in live)})",
                            fix="Say which with --url.")
    return live[0]
