"""RunPod pods over the REST API (https://rest.runpod.io/v1, docs: https://docs.runpod.io/api-reference).

Used calls, with the fields the API reference documents:
- POST /pods (CreatePod): name, imageName, gpuTypeIds, gpuTypePriority, gpuCount, computeType, cloudType,
  containerDiskInGb, volumeInGb, volumeMountPath, env, ports. 201 -> the Pod; 400 invalid input; 401; 500
  create failed (RunPod's "There are no longer any instances available with the requested specifications" is
  how it says "no capacity").
- GET /pods/{podId}: 200 -> the Pod; `desiredStatus` is RUNNING, EXITED or TERMINATED.
- GET /pods?name=...: the Pods with that name (to find a pod whose create answer was lost).
- DELETE /pods/{podId}: 204 -> deleted (terminated: billing stops, the container disk is wiped).
Auth: `Authorization: Bearer <RUNPOD_API_KEY>`.
"""
from __future__ import annotations

import os
import re

from runner.errors import TunebookError
from runner.ship.providers.base import (AuthError, Instance, LaunchSpec, NoCapacity, NotFound, Provider, ProviderError,
                                        _message, api_key, launch_table)

DEFAULT_URL = "https://rest.runpod.io/v1"
NO_CAPACITY = re.compile(r"no longer any instances available|not enough free gpus|no instances? available|"
                         r"insufficient capacity|out of stock", re.I)


class RunPod(Provider):
    name = "RunPod"
    key_env = "RUNPOD_API_KEY"
    console_url = "https://console.runpod.io/pods"

    @classmethod
    def from_env(cls) -> "RunPod":
        return cls(os.environ.get("TUNEBOOK_RUNPOD_URL") or DEFAULT_URL,
                   api_key(("RUNPOD_API_KEY",), "RunPod", "https://console.runpod.io/user/settings (API Keys)"))

    def error_for(self, status, data, what, created_maybe):
        msg = _message(data)
        if status in (400, 500) and NO_CAPACITY.search(msg or ""):
            return NoCapacity(f"RunPod has no capacity for this request right now ({msg})",
                              fix="Try another --gpu, fewer --gpus, or again in a few minutes; or --cloud lambda.")
        return super().error_for(status, data, what, created_maybe)

    def gpu_type_ids(self, spec: LaunchSpec) -> list[str]:
        table = launch_table().get("runpod") or {}
        if spec.gpu not in table:
            raise TunebookError(f"unknown GPU '{spec.gpu}' for RunPod",
                                fix=f"GPUs: {', '.join(k for k, v in table.items() if v)} "
                                    "(recipes/presets/launch.yaml maps them to RunPod's GPU type ids).")
        ids = table[spec.gpu] or []
        if not ids:
            offered = ", ".join(k for k, v in table.items() if v)
            raise TunebookError(f"RunPod does not offer {spec.gpu}", fix=f"RunPod GPUs: {offered}.")
        return list(ids)

    def prepare(self, spec: LaunchSpec) -> str:
        return f"RunPod pod, {spec.gpus} x {' or '.join(self.gpu_type_ids(spec))}"

    def body(self, spec: LaunchSpec) -> dict:
        """The POST /pods request body (documented fields only)."""
        body = {
            "name": spec.name,
            "imageName": spec.image,
            "computeType": "GPU",
            "cloudType": "SECURE",
            "gpuTypeIds": self.gpu_type_ids(spec),
            "gpuTypePriority": "custom",
            "gpuCount": spec.gpus,
            "containerDiskInGb": spec.disk_gb,
            "volumeInGb": spec.volume_gb,
            "volumeMountPath": "/workspace",
            "env": dict(spec.env),
            "ports": [],
        }
        if not spec.volume_gb:
            del body["volumeInGb"], body["volumeMountPath"]
        return body

    def create(self, spec: LaunchSpec) -> Instance:
        pod = self.request("POST", "/pods", body=self.body(spec), what="create a pod", created_maybe=True)
        if not isinstance(pod, dict) or not pod.get("id"):
            raise ProviderError(f"RunPod answered the create call without a pod id ({str(pod)[:200]})",
                                created_maybe=True)
        return self._instance(pod)

    def get(self, instance_id: str) -> Instance:
        pod = self.request("GET", f"/pods/{instance_id}", what=f"read pod {instance_id}")
        if not isinstance(pod, dict) or not pod:
            raise NotFound(f"RunPod: pod {instance_id} not found")
        return self._instance(pod)

    def find(self, name: str) -> list[Instance]:
        pods = self.request("GET", "/pods", params={"name": name}, what="list pods")
        return [self._instance(p) for p in (pods or []) if isinstance(p, dict) and p.get("name") == name]

    def terminate(self, instance_id: str) -> None:
        try:
            self.request("DELETE", f"/pods/{instance_id}", what=f"delete pod {instance_id}")
        except NotFound:
            return

    @staticmethod
    def _instance(pod: dict) -> Instance:
        desired = str(pod.get("desiredStatus") or "").upper()
        state = {"RUNNING": "running", "EXITED": "stopped", "TERMINATED": "stopped"}.get(desired, "unknown")
        try:
            price = float(pod.get("adjustedCostPerHr") or pod.get("costPerHr") or 0) or None
        except (TypeError, ValueError):
            price = None
        detail = desired.lower() or "unknown"
        if pod.get("lastStatusChange"):
            detail += f" ({pod['lastStatusChange']})"
        return Instance(id=str(pod["id"]), name=pod.get("name"), state=state, detail=detail, usd_per_hour=price,
                        gone=desired == "TERMINATED", raw=pod)


__all__ = ["RunPod", "AuthError"]
