"""Lambda Cloud instances over the Cloud API (https://cloud.lambdalabs.com/api/v1,
docs: https://docs-api.lambda.ai/api/cloud).

Lambda rents VMs, not containers: the launch call carries a cloud-init `user_data` shell script that writes the
run's environment to a root-only file and starts our image with `docker run --gpus all` (Docker and the NVIDIA
container toolkit come with Lambda's default image).

Used calls, with the documented fields:
- GET /instance-types: instance types with `gpu_description`, `price_cents_per_hour`, `specs.gpus` and
  `regions_with_capacity_available` (how tunebook picks a type and a region, and sees "no capacity" before
  renting anything).
- GET /ssh-keys: only when no SSH key name is given and the account has exactly one.
- POST /instance-operations/launch: region_name, instance_type_name, ssh_key_names (exactly one), quantity, name,
  user_data -> {"data": {"instance_ids": [...]}}.
- GET /instances/{id}: status booting | active | unhealthy | terminating | terminated.
- GET /instances: running instances (to find one whose launch answer was lost, by name).
- POST /instance-operations/terminate: {"instance_ids": [...]}.
Errors are {"error": {"code", "message", "suggestion"}}; codes used: global/invalid-api-key,
instance-operations/launch/insufficient-capacity, global/quota-exceeded, global/object-does-not-exist.
Auth: `Authorization: Bearer <LAMBDA_API_KEY>` (HTTP basic with the key as user name also works).
"""
from __future__ import annotations

import base64
import os
import re
import shlex

from runner.errors import TunebookError
from runner.ship.providers.base import (AuthError, Instance, LaunchSpec, NoCapacity, NotFound, Provider, ProviderError,
                                        _message, api_key, launch_table)

DEFAULT_URL = "https://cloud.lambdalabs.com/api/v1"
GONE = ("terminating", "terminated")


class LambdaCloud(Provider):
    name = "Lambda"
    key_env = "LAMBDA_API_KEY"
    console_url = "https://cloud.lambda.ai/instances"

    def __init__(self, base_url: str, key: str):
        super().__init__(base_url, key)
        self._types: dict | None = None
        self._choice: dict[tuple, tuple[str, str, float | None]] = {}

    @classmethod
    def from_env(cls) -> "LambdaCloud":
        return cls(os.environ.get("TUNEBOOK_LAMBDA_URL") or DEFAULT_URL,
                   api_key(("LAMBDA_API_KEY",), "Lambda", "https://cloud.lambda.ai/api-keys"))

    def error_for(self, status, data, what, created_maybe):
        code = ((data or {}).get("error") or {}).get("code", "") if isinstance(data, dict) else ""
        msg = _message(data)
        if code == "global/invalid-api-key" or status in (401, 403):
            return AuthError(f"Lambda refused the API key ({status}: {msg or 'unauthorized'})",
                             fix="Check LAMBDA_API_KEY (create one at https://cloud.lambda.ai/api-keys).")
        if code == "instance-operations/launch/insufficient-capacity":
            return NoCapacity(f"Lambda has no capacity for this instance type right now ({msg})",
                              fix="Try another --gpu or --gpus, another --region, later, or --cloud runpod.")
        if code == "global/quota-exceeded":
            return ProviderError(f"Lambda: account quota reached ({msg})",
                                 fix="Terminate other instances or ask Lambda to raise the quota.")
        if code == "global/object-does-not-exist" or status == 404:
            return NotFound(f"Lambda: {what}: not found", status=404)
        return ProviderError(f"Lambda: {what} failed ({status}{': ' + msg if msg else ''})",
                             created_maybe=created_maybe and status >= 500, status=status)

    # -- choosing what to rent -----------------------------------------------------------------------------
    def instance_types(self) -> dict:
        if self._types is None:
            self._types = (self.request("GET", "/instance-types", what="list instance types") or {}).get("data") or {}
        return self._types

    def choose(self, spec: LaunchSpec) -> tuple[str, str, float | None]:
        """(instance type name, region, USD per hour of the whole instance) for the spec's GPU and count."""
        key = (spec.gpu, spec.gpus, spec.region)
        if key in self._choice:
            return self._choice[key]
        table = launch_table().get("lambda") or {}
        if spec.gpu not in table:
            raise TunebookError(f"unknown GPU '{spec.gpu}' for Lambda",
                                fix=f"GPUs: {', '.join(k for k, v in table.items() if v)} "
                                    "(recipes/presets/launch.yaml).")
        if not table[spec.gpu]:
            raise TunebookError(f"Lambda does not offer {spec.gpu}",
                                fix=f"Lambda GPUs: {', '.join(k for k, v in table.items() if v)}.")
        pattern = re.compile(table[spec.gpu], re.I)
        types = self.instance_types()
        matching = {n: t for n, t in types.items()
                    if pattern.search(str((t.get("instance_type") or {}).get("gpu_description", "")))}
        sized = {n: t for n, t in matching.items()
                 if int(((t.get("instance_type") or {}).get("specs") or {}).get("gpus") or 0) == spec.gpus}
        if not sized:
            counts = sorted({int(((t.get("instance_type") or {}).get("specs") or {}).get("gpus") or 0)
                             for t in matching.values()})
            raise TunebookError(
                f"Lambda has no {spec.gpu} instance type with {spec.gpus} GPU(s)",
                fix=(f"Lambda offers {spec.gpu} with {', '.join(map(str, counts))} GPU(s): pass --gpus accordingly."
                     if counts else f"Lambda lists no {spec.gpu} instance type at the moment."))
        for name, t in sorted(sized.items()):
            regions = [r.get("name") for r in t.get("regions_with_capacity_available") or [] if r.get("name")]
            if spec.region:
                regions = [r for r in regions if r == spec.region]
            if regions:
                cents = (t.get("instance_type") or {}).get("price_cents_per_hour")
                try:
                    price = float(cents) / 100 if cents is not None else None
                except (TypeError, ValueError):
                    price = None
                self._choice[key] = (name, regions[0], price)
                return self._choice[key]
        where = f" in {spec.region}" if spec.region else ""
        raise NoCapacity(f"Lambda has no capacity{where} for {', '.join(sorted(sized))} right now",
                         fix="Try another --gpu/--gpus or region, later, or --cloud runpod.")

    def prepare(self, spec: LaunchSpec) -> str:
        name, region, price = self.choose(spec)
        return f"Lambda instance {name} in {region}" + (f" (${price:.2f}/h)" if price else "")

    def price_per_hour(self, spec: LaunchSpec) -> float | None:
        return self.choose(spec)[2]

    def ssh_key_name(self, spec: LaunchSpec) -> str:
        if spec.ssh_key:
            return spec.ssh_key
        keys = (self.request("GET", "/ssh-keys", what="list SSH keys") or {}).get("data") or []
        names = [k.get("name") for k in keys if k.get("name")]
        if len(names) == 1:
            return names[0]
        raise TunebookError("Lambda needs exactly one SSH key name for a launch" +
                            (f"; this account has {len(names)}: {', '.join(names)}" if names else
                             " and this account has none"),
                            fix="Pass --ssh-key NAME (or set TUNEBOOK_LAMBDA_SSH_KEY); add a key at "
                                "https://cloud.lambda.ai/ssh-keys.")

    # -- lifecycle -----------------------------------------------------------------------------------------
    def body(self, spec: LaunchSpec) -> dict:
        name, region, _ = self.choose(spec)
        return {"region_name": region, "instance_type_name": name, "ssh_key_names": [self.ssh_key_name(spec)],
                "quantity": 1, "name": spec.name[:64], "user_data": user_data(spec)}

    def create(self, spec: LaunchSpec) -> Instance:
        body = self.body(spec)
        data = self.request("POST", "/instance-operations/launch", body=body, what="launch an instance",
                            created_maybe=True)
        ids = ((data or {}).get("data") or {}).get("instance_ids") or []
        if not ids:
            raise ProviderError(f"Lambda answered the launch call without an instance id ({str(data)[:200]})",
                                created_maybe=True)
        price = self.choose(spec)[2]
        return Instance(id=str(ids[0]), name=spec.name, state="starting", detail="booting", usd_per_hour=price)

    def get(self, instance_id: str) -> Instance:
        data = (self.request("GET", f"/instances/{instance_id}", what=f"read instance {instance_id}") or {})
        inst = data.get("data")
        if not isinstance(inst, dict):
            raise NotFound(f"Lambda: instance {instance_id} not found")
        return self._instance(inst)

    def find(self, name: str) -> list[Instance]:
        data = (self.request("GET", "/instances", what="list instances") or {}).get("data") or []
        return [self._instance(i) for i in data if isinstance(i, dict) and i.get("name") == name]

    def terminate(self, instance_id: str) -> None:
        try:
            self.request("POST", "/instance-operations/terminate", body={"instance_ids": [instance_id]},
                         what=f"terminate instance {instance_id}")
        except NotFound:
            return

    @staticmethod
    def _instance(inst: dict) -> Instance:
        status = str(inst.get("status") or "unknown").lower()
        state = {"booting": "starting", "active": "running", "unhealthy": "running",
                 "terminating": "stopped", "terminated": "stopped"}.get(status, "unknown")
        price = None
        cents = (inst.get("instance_type") or {}).get("price_cents_per_hour")
        if cents is not None:
            try:
                price = float(cents) / 100
            except (TypeError, ValueError):
                price = None
        return Instance(id=str(inst.get("id")), name=inst.get("name"), state=state, detail=status,
                        usd_per_hour=price, gone=status in GONE, raw=inst)


ENV_LINE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def env_file(env: dict[str, str]) -> str:
    """`docker run --env-file` content: KEY=VALUE per line, values verbatim (no quotes, no newlines)."""
    lines = []
    for k, v in env.items():
        if not ENV_LINE.match(k) or "\n" in str(v) or "\r" in str(v):
            raise TunebookError(f"environment variable {k} cannot be passed to a Lambda instance "
                                "(names are letters, digits and _; values are one line)")
        lines.append(f"{k}={v}")
    return "\n".join(lines) + "\n"


def user_data(spec: LaunchSpec) -> str:
    """The cloud-init script: env file (root-only, base64 in the script so no value is shell-parsed), pull, run."""
    env_b64 = base64.b64encode(env_file(spec.env).encode()).decode()
    image = shlex.quote(spec.image)
    return f"""#!/bin/bash
# Written by `tunebook launch` (see docs/deploy.md): run one tunebook training container on this VM.
set -u
umask 077
mkdir -p /opt/tunebook
echo '{env_b64}' | base64 -d > /opt/tunebook/env
log=/var/log/tunebook.log
command -v docker > /dev/null || {{ echo "tunebook: docker is not installed on this image" >> "$log"; exit 1; }}
echo "tunebook: pulling {image}" >> "$log"
for i in 1 2 3; do docker pull {image} >> "$log" 2>&1 && break; sleep 20; done
docker run --rm --name tunebook --gpus all --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 \\
  --env-file /opt/tunebook/env {image} >> "$log" 2>&1
echo "tunebook: container exited with $?" >> "$log"
rm -f /opt/tunebook/env
"""


__all__ = ["LambdaCloud", "AuthError", "user_data", "env_file"]
