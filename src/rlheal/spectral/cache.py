"""On-disk cache of decompositions, so a sweep of N checkpoints against one reference decomposes it once.

Layout: ROOT/<checkpoint fingerprint>/<method>/<tensor name>.safetensors holding `sigma`, `U`, `V` (float64)
with `top`/`tail` in the metadata. Files are written atomically; an entry is reused when it holds at least
the top/tail vectors asked for, and replaced by a larger one otherwise. A fingerprint hashes the weight
files' names, sizes, mtimes and headers, so a rewritten checkpoint never reads a stale entry.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from rlheal.atomic import write_bytes
from rlheal.spectral.linalg import Decomposition, decompose
from rlheal.spectral.weights import CheckpointWeights, WeightInfo


class DecompositionCache:
    """Decompositions of checkpoint tensors, computed on `device` and kept on disk under `root`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0
        self._fingerprints: dict[Path, str] = {}

    def _path(self, weights: CheckpointWeights, name: str, method: str) -> Path:
        if weights.folder not in self._fingerprints:
            self._fingerprints[weights.folder] = weights.fingerprint()
        safe = name.replace(os.sep, "_")
        return self.root / self._fingerprints[weights.folder] / method / f"{safe}.safetensors"

    def _read(self, path: Path, top: int, tail: int, device: str | torch.device) -> Decomposition | None:
        if not path.exists():
            return None
        try:
            with safe_open(path, framework="pt", device="cpu") as fh:
                meta = fh.metadata() or {}
                dec = Decomposition(fh.get_tensor("sigma"), fh.get_tensor("U"), fh.get_tensor("V"),
                                    int(meta["top"]), int(meta["tail"]), meta["method"])
        except (SafetensorError, KeyError, ValueError, OSError):
            return None  # a damaged entry is recomputed and overwritten
        return dec.to(device) if dec.covers(top, tail) else None

    def get(self, weights: CheckpointWeights, info: WeightInfo, method: str, top: int, tail: int,
            device: str | torch.device = "cpu", matrix: torch.Tensor | None = None) -> Decomposition:
        """The decomposition of `info` holding at least `top`/`tail` vectors: from disk, or computed and stored.

        `matrix` (the tensor already loaded in float64) saves a second read on a miss.
        """
        path = self._path(weights, info.name, method)
        dec = self._read(path, top, tail, device)
        if dec is not None:
            self.hits += 1
            return dec
        self.misses += 1
        W = matrix if matrix is not None else weights.load(info.name, torch.float64, device)
        dec = decompose(W, method, top=top, tail=tail)
        blob = save({"sigma": dec.sigma.cpu().contiguous(), "U": dec.U.cpu().contiguous(),
                     "V": dec.V.cpu().contiguous()},
                    metadata={"top": str(dec.top), "tail": str(dec.tail), "method": dec.method,
                              "tensor": info.name, "checkpoint": str(weights.folder)})
        write_bytes(path, blob)
        return dec
