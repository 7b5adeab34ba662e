"""What every provider client shares: the errors, an instance's four states, the launch spec, and `Provider`
(HTTP, auth, error mapping, terminate with retries). The clients are runpod.py and lambda_cloud.py."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

import yaml

from runner.errors import TunebookError
from runner.recipe.load import PACKAGE_ROOT

PRESETS = PACKAGE_ROOT / "recipes" / "presets"
STATES = ("starting", "running", "stopped", "unknown")


class ProviderError(TunebookError):
    """A provider call failed. `created_maybe` marks failures after which an instance may exist anyway."""

    def __init__(self, what: str, fix: str | None = None, exit_code: int = 1, created_maybe: bool = False,
                 status: int | None = None):
        super().__init__(what, fix=fix, exit_code=exit_code)
        self.created_maybe = created_maybe
        self.status = status


class AuthError(ProviderError):
    """The API key is missing, wrong or lacks the permission."""

    def __init__(self, what: str, fix: str | None = None):
        super().__init__(what, fix=fix, exit_code=2)


class NoCapacity(ProviderError):
    """The provider has no machine of the requested kind right now."""


class NotFound(ProviderError):
    """The instance does not exist (any more)."""


class ProviderTimeout(ProviderError):
    """No answer within the client timeout."""


@dataclass
class Instance:
    """What tunebook knows about one pod or VM."""

    id: str
    name: str | None = None
    state: str = "unknown"                 # one of STATES
    detail: str = ""                       # the provider's own status words
    usd_per_hour: float | None = None
    gone: bool = False                     # terminated (or terminating): billing has stopped
    raw: dict = field(default_factory=dict)


@dataclass
class LaunchSpec:
    """One training run on one machine: the image, its environment (secrets included) and the hardware."""

    name: str
    image: str
    gpu: str                               # tunebook GPU id (recipes/presets/gpus.yaml)
    gpus: int
    env: dict[str, str]
    secret_names: frozenset[str] = frozenset()
    disk_gb: int = 100
    volume_gb: int = 100
    region: str | None = None
    ssh_key: str | None = None

    def shown_env(self) -> dict[str, str]:
        """The environment as it may be printed: secret values masked, long values shortened."""
        out = {}
        for k, v in self.env.items():
            out[k] = "***" if k in self.secret_names else (v if len(v) <= 60 else v[:40] + f"... ({len(v)} chars)")
        return out


def launch_table() -> dict:
    """recipes/presets/launch.yaml: tunebook GPU ids -> provider GPU names."""
    with open(PRESETS / "launch.yaml", encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


def api_key(env_names: tuple[str, ...], provider: str, where: str) -> str:
    """The first set environment variable of `env_names`; a clear error (naming the variable, never a value)."""
    for n in env_names:
        v = os.environ.get(n, "").strip()
        if v:
            return v
    raise AuthError(f"no {provider} API key: set {env_names[0]} in the environment",
                    fix=f"Create a key at {where} and `export {env_names[0]}=...` (keys are read from the "
                        "environment only; never put them in a recipe or a file in the repository).")


def http_timeout() -> float:
    return float(os.environ.get("TUNEBOOK_HTTP_TIMEOUT", "30"))


def retry_base() -> float:
    """Base delay (seconds) of the exponential back-off between retries."""
    return float(os.environ.get("TUNEBOOK_RETRY_BASE_S", "2"))


class Provider:
    """A provider's client. Subclasses implement the calls; `request` does auth, JSON and error mapping."""

    name = "provider"
    console_url = ""

    def __init__(self, base_url: str, key: str):
        self.base_url = base_url.rstrip("/")
        self._key = key

    def __repr__(self) -> str:  # never show the key
        return f"<{type(self).__name__} {self.base_url}>"

    # -- HTTP ----------------------------------------------------------------------------------------------
    def _auth_headers(self) -> dict:
        return {"Authorization": f"Bearer {self._key}"}

    def request(self, method: str, path: str, body: dict | None = None, params: dict | None = None,
                timeout: float | None = None, what: str = "", created_maybe: bool = False):
        """One call; returns the decoded JSON (None for an empty body). Errors become ProviderError subclasses
        through `error_for` (provider specific)."""
        import requests

        url = self.base_url + path
        headers = {**self._auth_headers(), "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            r = requests.request(method, url, headers=headers, params=params,
                                 data=json.dumps(body) if body is not None else None,
                                 timeout=timeout or http_timeout())
        except requests.Timeout:
            raise ProviderTimeout(f"{self.name}: no answer to {what or method + ' ' + path} within "
                                  f"{timeout or http_timeout():g} s", created_maybe=created_maybe,
                                  fix="The provider is slow or unreachable; try again (TUNEBOOK_HTTP_TIMEOUT sets "
                                      "the limit).") from None
        except requests.RequestException as exc:
            raise ProviderError(f"{self.name}: {what or method + ' ' + path} failed: {type(exc).__name__}",
                                created_maybe=created_maybe,
                                fix="Check the network connection to the provider.") from None
        try:
            data = r.json() if r.content else None
        except ValueError:
            data = {"_text": r.text[:500]}
        if r.status_code >= 400:
            raise self.error_for(r.status_code, data, what or f"{method} {path}", created_maybe)
        return data

    def error_for(self, status: int, data, what: str, created_maybe: bool) -> ProviderError:
        msg = _message(data)
        if status in (401, 403):
            return AuthError(f"{self.name} refused the API key ({status}{': ' + msg if msg else ''})",
                             fix=f"Check the key in {self.key_env} (and that it may {what}).")
        if status == 404:
            return NotFound(f"{self.name}: {what}: not found", status=404)
        return ProviderError(f"{self.name}: {what} failed ({status}{': ' + msg if msg else ''})",
                             created_maybe=created_maybe and status >= 500, status=status)

    key_env = "API_KEY"

    # -- the calls launch needs ---------------------------------------------------------------------------
    def prepare(self, spec: LaunchSpec) -> str:
        """Check the GPU choice before anything is rented; return a description of what will be rented."""
        raise NotImplementedError

    def price_per_hour(self, spec: LaunchSpec) -> float | None:
        """The provider's live price for the whole machine, when its API tells it."""
        return None

    def create(self, spec: LaunchSpec) -> Instance:
        raise NotImplementedError

    def get(self, instance_id: str) -> Instance:
        raise NotImplementedError

    def find(self, name: str) -> list[Instance]:
        """Instances with this name (used when a create call's answer was lost)."""
        raise NotImplementedError

    def terminate(self, instance_id: str) -> None:
        """Terminate; an instance that is already gone counts as terminated."""
        raise NotImplementedError

    def terminate_with_retries(self, instance_id: str, attempts: int = 6, say=None) -> bool:
        """Terminate, retrying with back-off, then confirm it is gone. True when the provider says so."""
        delay = retry_base()
        for attempt in range(1, attempts + 1):
            try:
                self.terminate(instance_id)
                try:
                    inst = self.get(instance_id)
                except NotFound:
                    return True
                if inst.gone:
                    return True
            except NotFound:
                return True
            except ProviderError as exc:
                if say:
                    say(f"terminate {instance_id}: attempt {attempt}/{attempts} failed: {exc.what}")
            if attempt < attempts:
                time.sleep(delay)
                delay = min(delay * 2, 60)
        return False


def _message(data) -> str:
    """A provider's error message from its JSON body (RunPod: error/message; Lambda: error.message)."""
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            parts = [str(err.get("message") or ""), str(err.get("suggestion") or "")]
            code = err.get("code")
            text = " ".join(p for p in parts if p)
            return f"{code}: {text}" if code else text
        for k in ("error", "message", "_text"):
            if data.get(k):
                return str(data[k])[:300]
    if isinstance(data, list) and data:
        return _message(data[0])
    return ""
