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

    def describe(self) -> str:
        if self.cuda:
            return f"{self.gpu_count} x {self.gpu_name} ({self.gpu_memory_gib:.0f} GiB)"
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


@lru_cache(maxsize=1)
def detect() -> Hardware:
    """Detect once per process. TUNEBOOK_DEVICE=cpu forces the CPU view (tests, debugging)."""
    forced_cpu = os.environ.get("TUNEBOOK_DEVICE", "").lower() == "cpu"
    cuda, name, count, mem, bf16 = False, None, 0, None, False
    if not forced_cpu:
        try:
            import torch

            if torch.cuda.is_available():
                cuda, count = True, torch.cuda.device_count()
                props = torch.cuda.get_device_properties(0)
                name, mem = props.name, props.total_memory / 2**30
                bf16 = torch.cuda.is_bf16_supported()
        except ImportError:
            pass
    return Hardware(cuda=cuda, gpu_name=name, gpu_count=count, gpu_memory_gib=mem, bf16=bf16,
                    cpu_cores=cpu_cores(), cpu_name=_cpu_name())
