"""Where an update moves the weights: per matrix, the cosine between a checkpoint's change from its start
(W_target − W_start, e.g. what RL did) and the direction from the start back to a reference
(W_reference − W_start, e.g. back to the SFT checkpoint where OOD success peaked).

A cosine near 1 means the update walks back toward the reference; near 0, somewhere new; below 0, away from
it. `back_fraction` is the length of the update's projection on that direction over the direction's length:
1 means the update, projected, covers the whole way back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from rlheal.spectral.weights import CheckpointWeights, check_compatible, parse_modules
from rlheal.store import Table

ALIGNMENT = Table(
    name="alignment",
    columns={"start": "path", "target": "path", "reference": "path", "tensor": "str", "layer": "int",
             "module": "str", "cosine": "float", "back_fraction": "float", "update_norm": "float",
             "back_norm": "float"},
    key=("start", "target", "reference", "tensor"),
)


def update_alignment(start: torch.Tensor, target: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """cosine(target − start, reference − start), the projection's share of the way back, and both norms,
    in float64. The cosine and share are NaN when either change is zero."""
    start, target, reference = (m.to(torch.float64) for m in (start, target, reference))
    update, back = (target - start).flatten(), (reference - start).flatten()
    update_norm, back_norm = float(update.norm()), float(back.norm())
    inner = float(update @ back)
    if update_norm == 0.0 or back_norm == 0.0:
        return {"cosine": math.nan, "back_fraction": math.nan, "update_norm": update_norm, "back_norm": back_norm}
    return {"cosine": inner / (update_norm * back_norm), "back_fraction": inner / back_norm**2,
            "update_norm": update_norm, "back_norm": back_norm}


def run_alignment(triples: Sequence[tuple[str | Path, str | Path, str | Path]],
                  modules: str | Iterable[str] | None = None) -> list[dict[str, Any]]:
    """`alignment` rows for each (start, target, reference) of checkpoint folders, one per selected matrix
    (decoder modules by default). Raises WeightsError when the checkpoints' matrices do not match."""
    rows = []
    opened: dict[Path, CheckpointWeights] = {}

    def weights(folder: str | Path) -> CheckpointWeights:
        path = Path(folder).resolve()
        return opened.setdefault(path, CheckpointWeights(path))

    for start, target, reference in triples:
        s, t, r = weights(start), weights(target), weights(reference)
        infos = s.select(parse_modules(modules))
        check_compatible(s, t, infos)
        check_compatible(s, r, infos)
        for info in infos:
            found = update_alignment(s.load(info.name), t.load(info.name), r.load(info.name))
            rows.append({"start": str(s.folder), "target": str(t.folder), "reference": str(r.folder),
                         "tensor": info.name, "layer": info.layer, "module": info.module, **found})
    return rows
