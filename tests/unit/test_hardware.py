"""runner.hardware: bf16 and TF32 come from the compute capability, not from torch's emulation-aware answer."""
from __future__ import annotations

import types

import pytest

from runner import hardware as hw


@pytest.mark.parametrize("cc,ampere", [("7.0", False), ("7.5", False), ("8.0", True), ("8.6", True), ("8.9", True),
                                       ("9.0", True), ("10.0", True), (None, False), ("sm_80", False)])
def test_ampere_or_newer_by_compute_capability(cc, ampere):
    assert hw.ampere_or_newer(cc) is ampere


def test_a_t4_is_not_a_bf16_gpu_even_when_torch_says_it_emulates_bf16(monkeypatch):
    """torch.cuda.is_bf16_supported() is True on a T4 (emulation): the fp16 switch must still fire."""
    import torch

    props = types.SimpleNamespace(name="Tesla T4", major=7, minor=5, total_memory=15 * 2**30)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.delenv("TUNEBOOK_DEVICE", raising=False)
    hw.detect.cache_clear()
    try:
        h = hw.detect()
    finally:
        hw.detect.cache_clear()
    assert h.cuda and h.compute_capability == "7.5"
    assert h.bf16 is False and h.tf32 is False
    assert h.axolotl_capabilities() == {"bf16": False, "tf32": False, "fp8": False, "n_gpu": 1, "n_node": 1,
                                        "compute_capability": "sm_75"}


def test_capabilities_of_profiles_count_every_gpu_of_every_node():
    h = hw.Hardware(cuda=True, gpu_name="H100", gpu_count=8, gpu_memory_gib=79, bf16=True, cpu_cores=32,
                    cpu_name="", compute_capability="9.0", nodes=2)
    caps = h.axolotl_capabilities()
    assert caps == {"bf16": True, "tf32": True, "fp8": True, "n_gpu": 16, "n_node": 2, "compute_capability": "sm_90"}
    assert "2 nodes" in h.describe()
    cpu = hw.Hardware(cuda=False, gpu_name=None, gpu_count=0, gpu_memory_gib=None, bf16=False, cpu_cores=2,
                      cpu_name="x")
    assert cpu.tf32 is False


@pytest.mark.parametrize("value, expected", [("1", 1), ("3", 3), (None, "cores"), ("", "cores"), ("0", "cores"),
                                             ("two", "cores"), (" 2 ", 2)])
def test_compute_threads_follow_omp_num_threads_else_every_core(monkeypatch, value, expected):
    """llama.cpp and the eval stage's torch take what OMP_NUM_THREADS allows (a suite of one-thread workers
    sharing two cores); without it, every core."""
    monkeypatch.setattr(hw, "cpu_cores", lambda: 6)
    if value is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert hw.compute_threads() == (6 if expected == "cores" else expected)
