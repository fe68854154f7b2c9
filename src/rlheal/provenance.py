"""What every stored result records about how it was made: package versions and config hashes."""

from __future__ import annotations

import hashlib
import json
import platform
from functools import cache
from importlib import metadata
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


def stable_hash(obj: Any, length: int = 12) -> str:
    """A short hash of a JSON-serialisable object, independent of dict order."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]
