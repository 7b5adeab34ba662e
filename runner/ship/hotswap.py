"""`tunebook serve --add RECIPE` / `--remove RECIPE`: load a recipe's adapter into a running vLLM server, or unload
one, without restarting it (vLLM's runtime LoRA updating: POST /v1/load_lora_adapter {lora_name, lora_path} and
/v1/unload_lora_adapter {lora_name}, enabled by VLLM_ALLOW_RUNTIME_LORA_UPDATING, which `tunebook serve` sets).

The server is found through its record (runner.ship.serve_state): the only one running for the project, or the one
at --url. Before vLLM is asked, an adapter is refused when its recipe's gates failed, it trains on another base, its
rank is above the server's --max-lora-rank, or it trained with another chat template than the one the server
renders with (the answers would not be the ones evaluated). A server tunebook has no record of (another project's,
or started by hand) is checked against its /v1/models list instead: the base model only.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from runner.console import say
from runner.errors import TunebookError
from runner.fsutil import sha256_json
from runner.recipe.resolve import ResolvedRecipe
from runner.ship import serve_state as state
from runner.ship.serve import served_model, trained_template


def _post(url: str, path: str, body: dict, timeout: float = 300) -> tuple[int, str]:
    req = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        raise TunebookError(f"cannot reach the server at {url}: {getattr(exc, 'reason', exc)}",
                            fix="Check that `tunebook serve` is running there (and --url).", exit_code=1) from None


def _message(body: str) -> str:
    try:
        return json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return body.strip()[:500]


def served_models(url: str) -> list[dict]:
    """The server's /v1/models entries: the base (parent None) and its LoRA modules (parent: the base)."""
    try:
        with urllib.request.urlopen(f"{url}/v1/models", timeout=30) as r:
            return json.loads(r.read()).get("data") or []
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise TunebookError(f"cannot list the models of the server at {url}: {getattr(exc, 'reason', exc)}",
                            fix="Check that `tunebook serve` is running there (and --url).", exit_code=1) from None


def _server(root: Path, url: str | None) -> tuple[str, Path | None, state.ServerRecord | None]:
    found = state.find(root, url)
    if found is None:  # a server at --url that this project did not start
        return state.normal_url(url or ""), None, None
    path, rec = found
    return rec.url, path, rec


def add(res: ResolvedRecipe, url: str | None = None) -> str:
    """Hot-load the recipe's adapter, served under the recipe's name; returns the server's URL."""
    name = res.recipe.name
    served = served_model(res)  # gates, a trained adapter
    url, path, rec = _server(res.recipe.root, url)
    if rec is not None:
        if rec.merged:
            raise TunebookError(f"the server at {url} serves a merged model: it takes no adapters",
                                fix=f"Start one for the adapters: `tunebook serve {name} --port N`.")
        if served.base != rec.model:
            raise TunebookError(f"{name} is trained on {served.base}, but the server at {url} serves {rec.model}",
                                fix=f"Serve it on its own server: `tunebook serve {name} --port N`.")
        if served.rank and rec.max_lora_rank and served.rank > rec.max_lora_rank:
            raise TunebookError(f"{name}'s LoRA rank {served.rank} is above the server's --max-lora-rank "
                                f"{rec.max_lora_rank} (set when it started, from the adapters it served then)",
                                fix="Restart the server with this recipe among those served, or serve it on its "
                                    "own server (--port N).")
        trained_template(res, served)
        if sha256_json(served.template) != rec.template_sha256:
            raise TunebookError(f"{name} trained with another chat template than the one the server at {url} "
                                "renders every request with",
                                fix=f"Serve it on its own server: `tunebook serve {name} --port N`.")
        if name in rec.adapters:
            raise TunebookError(f"the server at {url} already serves {name}",
                                fix=f"Remove it first (`tunebook serve --remove {name}`) to load it again.")
    else:
        base = next((m for m in served_models(url) if m.get("parent") is None), None)
        if base is not None and base.get("root") != served.base:
            raise TunebookError(f"{name} is trained on {served.base}, but the server at {url} serves "
                                f"{base.get('root')}", fix=f"Serve it on its own server: `tunebook serve {name}`.")
    code, body = _post(url, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(served.adapter)})
    if code != 200:
        hint = (" (it was not started with runtime LoRA updating: VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)"
                if code in (404, 405) and "lora" not in body.lower() else "")
        raise TunebookError(f"the server at {url} refused to load {name} (HTTP {code}): {_message(body)}{hint}",
                            fix="Read the server's log (runs/_serve/<port>/vllm.log).", exit_code=1)
    if rec is not None and path is not None:
        rec.adapters[name] = str(served.adapter)
        state.write(path, rec)
    say(f"loaded {name} into the server at {url} ({served.adapter})")
    return url


def remove(root: Path, name: str, url: str | None = None) -> str:
    """Unload the adapter served as `name`; returns the server's URL."""
    url, path, rec = _server(root, url)
    code, body = _post(url, "/v1/unload_lora_adapter", {"lora_name": name})
    if code != 200:
        raise TunebookError(f"the server at {url} did not unload {name} (HTTP {code}): {_message(body)}",
                            fix="`curl " + url + "/v1/models` lists what it serves.", exit_code=1 if code >= 500 else 2)
    if rec is not None and path is not None:
        rec.adapters.pop(name, None)
        state.write(path, rec)
    say(f"unloaded {name} from the server at {url}")
    return url
