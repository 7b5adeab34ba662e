"""What machine we are on: GPUs (name, count, memory) or CPU cores. Decides dtype, optimizer and threads."""
from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from functools import lru_cache


@dataclass(frozen=True)
class Hardware:
    """The accelerator situation of this machine."""

    cuda: bool
    gpu_name: str | None
    gpu_count: int
    gpu_memory_gib: float | None
    bf16: bool
    cpu_cores: int
    cpu_name: str
    compute_capability: str | None = None  # CUDA "major.minor", e.g. "7.5" (T4), "8.0" (A100), "9.0" (H100)
    nodes: int = 1

    @property
    def tf32(self) -> bool:
        """TF32 matmuls exist from Ampere (sm 8.0); transformers refuses `tf32: true` below. With the compute
        capability unknown, real bf16 support says Ampere or newer just as well."""
        if not self.cuda:
            return False
        return ampere_or_newer(self.compute_capability) if self.compute_capability else self.bf16

    def axolotl_capabilities(self) -> dict:
        """This machine as Axolotl's GPUCapabilities (what `axolotl train` detects itself on a GPU)."""
        return {"bf16": self.cuda and self.bf16, "tf32": self.tf32,
                "fp8": self.cuda and _at_least(self.compute_capability, 9.0),  # Axolotl's own probe: sm 9.0+
                "n_gpu": max(1, self.gpu_count) * self.nodes, "n_node": self.nodes,  # n_gpu: WORLD_SIZE
                "compute_capability": f"sm_{self.compute_capability.replace('.', '')}"
                if self.compute_capability else None}

    def describe(self) -> str:
        if self.cuda:
            nodes = f" on each of {self.nodes} nodes" if self.nodes > 1 else ""
            return f"{self.gpu_count} x {self.gpu_name} ({self.gpu_memory_gib:.0f} GiB){nodes}"
        return f"CPU only ({self.cpu_cores} cores, {self.cpu_name or 'unknown CPU'})"

    def to_dict(self) -> dict:
        return asdict(self)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def compute_threads() -> int:
    """Threads for CPU compute in this process (torch, llama.cpp): OMP_NUM_THREADS when set (a user or a test
    suite sharing the cores says how many this job may take), else every core this process may run on."""
    raw = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else cpu_cores()


def _at_least(cc: str | None, wanted: float) -> bool:
    try:
        major, minor = (int(x) for x in str(cc).split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (int(wanted), round((wanted - int(wanted)) * 10))


def ampere_or_newer(cc: str | None) -> bool:
    """bf16 and tf32 tensor cores: compute capability 8.0 or above (A100, A10G, L4, RTX 30xx/40xx, H100).

    Not `torch.cuda.is_bf16_supported()`: it counts emulation, so it says yes on a T4 (sm 7.5), where bf16
    training is emulated and slow and Axolotl's fp16 switch must happen."""
    return _at_least(cc, 8.0)


@lru_cache(maxsize=1)
def detect() -> Hardware:
    """Detect once per process. TUNEBOOK_DEVICE=cpu forces the CPU view (tests, debugging)."""
    forced_cpu = os.environ.get("TUNEBOOK_DEVICE", "").lower() == "cpu"
    cuda, name, count, mem, bf16, cc = False, None, 0, None, False, None
    if not forced_cpu:
        try:
            import torch

            if torch.cuda.is_available():
                cuda, count = True, torch.cuda.device_count()
                props = torch.cuda.get_device_properties(0)
                name, mem = props.name, props.total_memory / 2**30
                cc = f"{props.major}.{props.minor}"
                bf16 = ampere_or_newer(cc)
        except ImportError:
            pass
    return Hardware(cuda=cuda, gpu_name=name, gpu_count=count, gpu_memory_gib=mem, bf16=bf16,
                    cpu_cores=cpu_cores(), cpu_name=_cpu_name(), compute_capability=cc)
