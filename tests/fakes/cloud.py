"""Fake RunPod and Lambda Cloud APIs on 127.0.0.1, for `tunebook launch` tests.

Each implements the endpoints tunebook uses with the request and response shapes of the providers' API references
(RunPod REST v1: https://docs.runpod.io/api-reference; Lambda Cloud API: https://docs-api.lambda.ai/api/cloud),
rejects fields those references do not list, and simulates the container: it reads the environment the launch
sent (RunPod: `env`; Lambda: the env file inside the cloud-init `user_data`) and plays the container side of the
artifact protocol (status.json, log.txt, run/) with runner.ship.launch's own functions, the code the image runs.

Modes (FakeCloud(mode=...)):
  ok             the run succeeds: heartbeat, log lines, upload of `template_run`, status succeeded
  fail           training fails (exit 1) after a partial upload
  auth           every call answers 401 as the provider documents it
  no_capacity    create/launch answers "no capacity" (Lambda: also no region has capacity in /instance-types)
  launch_no_capacity  Lambda: /instance-types lists capacity, but the launch call answers insufficient-capacity
  slow_create    the instance is created, but the create call answers only after `delay` seconds
  dies           the instance stops (RunPod EXITED / Lambda terminated) in the middle of training
  hang           training never ends (for Ctrl-C / SIGTERM / --max-hours tests)
  never_starts   the machine runs but the container never writes a status
  flaky_terminate  the first two terminate calls fail with 500
  broken_terminate every terminate call fails with 500
"""
from __future__ import annotations

import base64
import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

RUNPOD_CREATE_FIELDS = {
    "allowedCudaVersions", "cloudType", "computeType", "containerDiskInGb", "containerRegistryAuthId", "countryCodes",
    "cpuFlavorIds", "cpuFlavorPriority", "dataCenterIds", "dataCenterPriority", "dockerEntrypoint", "dockerStartCmd",
    "env", "globalNetworking", "gpuCount", "gpuTypeIds", "gpuTypePriority", "imageName", "interruptible", "locked",
    "minDiskBandwidthMBps", "minDownloadMbps", "minRAMPerGPU", "minUploadMbps", "minVCPUPerGPU", "name",
    "networkVolumeId", "ports", "supportPublicIp", "templateId", "vcpuCount", "volumeInGb", "volumeMountPath"}
LAMBDA_LAUNCH_FIELDS = {"region_name", "instance_type_name", "ssh_key_names", "file_system_names", "quantity", "name",
                        "image", "user_data", "tags", "hostname", "firewall_rulesets", "file_system_mounts"}
LAMBDA_TYPES = {
    "gpu_1x_a100_sxm4": ("1x A100 (40 GB SXM4)", "A100 (40 GB SXM4)", 1, 129),
    "gpu_8x_a100_80gb_sxm4": ("8x A100 (80 GB SXM4)", "A100 (80 GB SXM4)", 8, 1432),
    "gpu_1x_h100_pcie": ("1x H100 (80 GB PCIe)", "H100 (80 GB PCIe)", 1, 249),
    "gpu_2x_h100_sxm5": ("2x H100 (80 GB SXM5)", "H100 (80 GB SXM5)", 2, 658),
}


class Request:
    def __init__(self, method, path, query, headers, body):
        self.method, self.path, self.query, self.headers, self.body = method, path, query, headers, body

    def __repr__(self):
        return f"{self.method} {self.path}"


class FakeCloud:
    """Base: HTTP server in a thread, request log, simulated containers."""

    provider = "fake"

    def __init__(self, mode: str = "ok", key: str = "test-key", template_run: Path | None = None,
                 delay: float = 1.5, step: float = 0.15):
        self.mode, self.key, self.template_run, self.delay, self.step = mode, key, template_run, delay, step
        self.requests: list[Request] = []
        self.instances: dict[str, dict] = {}
        self.envs: dict[str, dict] = {}
        self.terminate_calls = 0
        self.lock = threading.Lock()
        self._stop = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _handle(self, method):
                u = urlparse(self.path)
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = {"_invalid": raw.decode(errors="replace")}
                req = Request(method, u.path, parse_qs(u.query), dict(self.headers), body)
                with fake.lock:
                    fake.requests.append(req)
                status, payload = fake.route(req)
                data = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                if data:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if data:
                    self.wfile.write(data)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def do_DELETE(self):
                self._handle("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}" + self.base_path
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    base_path = ""

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()

    # -- helpers for tests --------------------------------------------------------------------------------
    def calls(self, method: str, pattern: str) -> list[Request]:
        rx = re.compile(pattern)
        with self.lock:
            return [r for r in self.requests if r.method == method and rx.fullmatch(r.path)]

    def authorized(self, req: Request) -> bool:
        auth = req.headers.get("Authorization", "")
        if auth == f"Bearer {self.key}":
            return True
        if auth.startswith("Basic "):
            try:
                user = base64.b64decode(auth[6:]).decode().split(":")[0]
            except ValueError:
                return False
            return user == self.key
        return False

    # -- the simulated container --------------------------------------------------------------------------
    def start_container(self, iid: str, env: dict) -> None:
        self.envs[iid] = env
        if self.mode == "never_starts":
            return
        threading.Thread(target=self._container, args=(iid, env), daemon=True).start()

    def _alive(self, iid: str) -> bool:
        return not self._stop.is_set() and self.instances.get(iid, {}).get("_alive", False)

    def _container(self, iid: str, env: dict) -> None:
        from runner.ship import launch as L

        url = env.get("TUNEBOOK_ARTIFACTS")
        recipe = env.get("RECIPE")
        if not url or not recipe:
            return
        time.sleep(self.step)
        L.write_status(url, "starting")
        lines = [f"tunebook: training {recipe} (GPUS={env.get('GPUS')})"]

        def beat(stage):
            L.write_log(url, "\n".join(lines) + "\n")
            L.write_status(url, "running", stage=stage, log_lines=len(lines), log_first_line=0)

        for i in range(3):
            if not self._alive(iid):
                return
            lines.append(f"sft: step {i + 1}/3 loss {2.5 - i * 0.3:.2f}")
            beat("sft")
            time.sleep(self.step)
        if self.mode == "dies":
            self.die(iid)
            return
        while self.mode == "hang" and self._alive(iid):
            lines.append("sft: still training")
            beat("sft")
            time.sleep(self.step)
        if not self._alive(iid):
            return
        code = 1 if self.mode == "fail" else 0
        lines.append("Traceback (most recent call last):\nRuntimeError: CUDA out of memory" if code else "merge: done")
        if self.template_run:
            L.push_run(self.template_run, url)
        L.write_log(url, "\n".join(lines) + "\n")
        L.write_status(url, "succeeded" if code == 0 else "failed", exit_code=code, stage="sft",
                       log_lines=len(lines), log_first_line=0)

    def die(self, iid: str) -> None:
        raise NotImplementedError


class FakeRunPod(FakeCloud):
    provider = "runpod"
    base_path = "/v1"

    def route(self, req: Request):
        path = req.path[len(self.base_path):] if req.path.startswith(self.base_path) else req.path
        if not self.authorized(req) or self.mode == "auth":
            return 401, {"error": "Unauthorized", "status": 401}
        m = re.fullmatch(r"/pods/([^/]+)", path)
        if req.method == "POST" and path == "/pods":
            return self.create(req.body or {})
        if req.method == "GET" and path == "/pods":
            name = (req.query.get("name") or [None])[0]
            pods = [self.public(p) for p in self.instances.values() if not p["_deleted"]
                    and (name is None or p["name"] == name)]
            return 200, pods
        if m and req.method == "GET":
            pod = self.instances.get(m.group(1))
            if pod is None or pod["_deleted"]:
                return 404, {"error": "pod not found", "status": 404}
            return 200, self.public(pod)
        if m and req.method == "DELETE":
            self.terminate_calls += 1
            if self.mode == "broken_terminate" or (self.mode == "flaky_terminate" and self.terminate_calls <= 2):
                return 500, {"error": "delete pod: internal error", "status": 500}
            pod = self.instances.get(m.group(1))
            if pod is None or pod["_deleted"]:
                return 404, {"error": "pod not found", "status": 404}
            pod.update(_deleted=True, _alive=False, desiredStatus="TERMINATED")
            return 204, None
        return 404, {"error": f"no route {req.method} {path}", "status": 404}

    def create(self, body: dict):
        unknown = set(body) - RUNPOD_CREATE_FIELDS
        if unknown:
            return 400, {"error": f"Invalid input: unknown fields {sorted(unknown)}", "status": 400}
        if not body.get("imageName") or not isinstance(body.get("gpuTypeIds"), list) or \
                not isinstance(body.get("gpuCount"), int) or not isinstance(body.get("env", {}), dict):
            return 400, {"error": "Invalid input", "status": 400}
        if self.mode == "no_capacity":
            return 500, {"error": "create pod: There are no longer any instances available with the requested "
                                  "specifications. Please refresh and try again.", "status": 500}
        pid = uuid.uuid4().hex[:14]
        pod = {"id": pid, "name": body.get("name"), "desiredStatus": "RUNNING", "image": body["imageName"],
               "imageName": body["imageName"], "env": body.get("env", {}), "costPerHr": "1.79",
               "adjustedCostPerHr": 1.79, "gpu": {"id": body["gpuTypeIds"][0], "count": body["gpuCount"],
                                                   "displayName": body["gpuTypeIds"][0]},
               "containerDiskInGb": body.get("containerDiskInGb"), "volumeInGb": body.get("volumeInGb"),
               "lastStatusChange": "Rented by User", "_deleted": False, "_alive": True, "_body": body}
        self.instances[pid] = pod
        self.start_container(pid, body.get("env", {}))
        if self.mode == "slow_create":
            time.sleep(self.delay)
        return 201, self.public(pod)

    @staticmethod
    def public(pod: dict) -> dict:
        return {k: v for k, v in pod.items() if not k.startswith("_")}

    def die(self, pid: str) -> None:
        self.instances[pid].update(desiredStatus="EXITED", _alive=False, lastStatusChange="Exited by Runpod")


class FakeLambda(FakeCloud):
    provider = "lambda"
    base_path = "/api/v1"

    def error(self, status, code, message, suggestion=None):
        return status, {"error": {"code": code, "message": message, "suggestion": suggestion}}

    def route(self, req: Request):
        path = req.path[len(self.base_path):] if req.path.startswith(self.base_path) else req.path
        if not self.authorized(req) or self.mode == "auth":
            return self.error(401, "global/invalid-api-key", "API key was invalid, expired, or deleted.",
                              "Check your API key or create a new one, then try again.")
        if req.method == "GET" and path == "/instance-types":
            return 200, {"data": self.types()}
        if req.method == "GET" and path == "/ssh-keys":
            return 200, {"data": [{"id": "k1", "name": "laptop", "public_key": "ssh-ed25519 AAAAC3Nza test"}]}
        if req.method == "POST" and path == "/instance-operations/launch":
            return self.launch(req.body or {})
        if req.method == "GET" and path == "/instances":
            return 200, {"data": [self.public(i) for i in self.instances.values() if i["status"] != "terminated"]}
        m = re.fullmatch(r"/instances/([^/]+)", path)
        if m and req.method == "GET":
            inst = self.instances.get(m.group(1))
            if inst is None:
                return self.error(404, "global/object-does-not-exist", "Specified instance does not exist.")
            return 200, {"data": self.public(inst)}
        if req.method == "POST" and path == "/instance-operations/terminate":
            self.terminate_calls += 1
            if self.mode == "broken_terminate" or (self.mode == "flaky_terminate" and self.terminate_calls <= 2):
                return self.error(500, "global/unknown", "Something unexpected occurred.")
            ids = (req.body or {}).get("instance_ids") or []
            done = []
            for iid in ids:
                inst = self.instances.get(iid)
                if inst is None:
                    return self.error(404, "global/object-does-not-exist", "Specified instance does not exist.")
                inst.update(status="terminated", _alive=False)
                done.append(self.public(inst))
            return 200, {"data": {"terminated_instances": done}}
        return self.error(404, "global/object-does-not-exist", f"no route {req.method} {path}")

    def types(self) -> dict:
        out = {}
        for name, (desc, gdesc, gpus, cents) in LAMBDA_TYPES.items():
            regions = [] if self.mode == "no_capacity" else [{"name": "us-east-1", "description": "Virginia, USA"}]
            out[name] = {"instance_type": {"name": name, "description": desc, "gpu_description": gdesc,
                                           "price_cents_per_hour": cents,
                                           "specs": {"vcpus": 26 * gpus, "memory_gib": 200 * gpus,
                                                     "storage_gib": 1024, "gpus": gpus}},
                         "regions_with_capacity_available": regions}
        return out

    def launch(self, body: dict):
        unknown = set(body) - LAMBDA_LAUNCH_FIELDS
        if unknown:
            return self.error(400, "global/invalid-parameters", f"Unknown fields: {sorted(unknown)}")
        if not body.get("region_name") or body.get("instance_type_name") not in LAMBDA_TYPES or \
                len(body.get("ssh_key_names") or []) != 1:
            return self.error(400, "global/invalid-parameters", "Invalid request parameters.")
        if self.mode in ("no_capacity", "launch_no_capacity"):
            return self.error(400, "instance-operations/launch/insufficient-capacity",
                              "Not enough capacity to fulfill launch request.",
                              "Choose an instance type with more availability, or try again later.")
        iid = uuid.uuid4().hex
        name = body["instance_type_name"]
        desc, gdesc, gpus, cents = LAMBDA_TYPES[name]
        inst = {"id": iid, "name": body.get("name"), "status": "active", "ip": "198.51.100.7",
                "ssh_key_names": body["ssh_key_names"], "file_system_names": [],
                "region": {"name": body["region_name"], "description": "Virginia, USA"},
                "instance_type": {"name": name, "description": desc, "gpu_description": gdesc,
                                  "price_cents_per_hour": cents,
                                  "specs": {"vcpus": 26, "memory_gib": 200, "storage_gib": 1024, "gpus": gpus}},
                "hostname": "198-51-100-7.cloud.lambda.ai", "_alive": True, "_body": body}
        self.instances[iid] = inst
        self.start_container(iid, self.env_from_user_data(body.get("user_data") or ""))
        if self.mode == "slow_create":
            time.sleep(self.delay)
        return 200, {"data": {"instance_ids": [iid]}}

    @staticmethod
    def env_from_user_data(script: str) -> dict:
        """The env file tunebook embeds (base64) in its cloud-init script, as docker --env-file would read it."""
        m = re.search(r"echo '([A-Za-z0-9+/=]+)' \| base64 -d > /opt/tunebook/env", script)
        if not m:
            return {}
        env = {}
        for line in base64.b64decode(m.group(1)).decode().splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                env[k] = v
        return env

    @staticmethod
    def public(inst: dict) -> dict:
        return {k: v for k, v in inst.items() if not k.startswith("_")}

    def die(self, iid: str) -> None:
        self.instances[iid].update(status="terminated", _alive=False)
