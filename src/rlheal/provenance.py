"""What every stored result records about how it was made: package versions, CPU threads, config hashes."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

_PACKAGES = ("rlheal", "torch", "transformers", "trl", "accelerate", "safetensors", "numpy", "scipy")


@cache
def versions() -> dict[str, str]:
    """Installed versions of the packages that can change a result (missing ones are left out)."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


# Variables that choose the CPU kernels of MKL, ATen and oneDNN, and so the last bits of float results.
CPU_KERNEL_VARIABLES = ("MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")


def environment() -> dict[str, Any]:
    """`versions()` plus what else changes CPU numbers: torch's thread count now (it sets the order of float
    sums), the CPU model, the instruction set torch picks its kernels for (e.g. AVX512, AVX2) and those of
    `CPU_KERNEL_VARIABLES` that are set (`cpu_env`)."""
    import torch

    return {**versions(), "torch_threads": torch.get_num_threads(), "cpu": cpu_model(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_env": {name: os.environ[name] for name in CPU_KERNEL_VARIABLES if name in os.environ}}


@cache
def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def stable_hash(obj: Any, length: int = 12) -> str:
    """A short hash of a JSON-serialisable object, independent of dict order."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]
