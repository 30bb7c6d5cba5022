"""Devices as users name them (auto, cpu, cuda, cuda:N), checked against what this machine has."""

from __future__ import annotations

import os

import torch


def resolve_device(name: str) -> torch.device:
    """auto, cpu, cuda or cuda:N, checked against what this machine has."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"unknown device {name!r} (expected auto, cpu, cuda or cuda:N)") from error
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {name!r} (expected auto, cpu, cuda or cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} was asked for, but no CUDA device is available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def memory_of(device: torch.device) -> int:
    """Bytes of memory on `device` (the GPU's, or the host's physical memory)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
