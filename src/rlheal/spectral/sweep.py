"""The spectral diagnostic of checkpoints against references: streams matrices, caches decompositions, emits rows.

Each reference is decomposed once (through the on-disk cache) with as many top/tail vectors as the largest
k needs; each target is decomposed once per matrix and compared at every k.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from rlheal.spectral.cache import DecompositionCache
from rlheal.spectral.linalg import decompose, resolve_k
from rlheal.spectral.metrics import matrix_metrics
from rlheal.spectral.weights import CheckpointWeights, WeightsError, check_compatible


def resolve_device(device: str | None) -> torch.device:
    """"auto"/None → cuda when available, else cpu; otherwise the named device."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def run_spectrum(
    pairs: Sequence[tuple[str | Path, str | Path]],
    ks: Sequence[int | float] = (0.2,),
    modules: str | Sequence[str] | None = None,
    layers: set[int] | None = None,
    method: str = "gram64",
    device: str | None = "auto",
    cache: DecompositionCache | None = None,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Metric rows (table `spectral`) and σ rows (table `spectral_sigma`) for each (reference, target) pair.

    Checkpoints that appear as a reference are decomposed through `cache` (default: the user cache folder);
    targets that are nobody's reference are decomposed in memory only. Raises WeightsError when a target
    lacks a tensor of the reference, differs in shape, or holds non-finite values.
    """
    if not pairs:
        raise WeightsError("no (reference, target) pairs to compare")
    if not ks:
        raise WeightsError("give at least one k")
    dev = resolve_device(device)
    cache = cache or DecompositionCache()
    opened: dict[Path, CheckpointWeights] = {}

    def open_weights(path: str | Path) -> CheckpointWeights:
        key = Path(path).resolve()
        if key not in opened:
            opened[key] = CheckpointWeights(key)
        return opened[key]

    jobs = []
    for ref_path, target_path in pairs:
        ref, target = open_weights(ref_path), open_weights(target_path)
        infos = ref.select(modules, layers)
        if not infos:
            raise WeightsError(f"no 2-D tensors of {ref.folder} match modules={modules} layers={layers}; "
                               f"it holds modules {sorted({i.module for i in ref.tensors.values()})}")
        check_compatible(ref, target, infos)
        wanted = modules if isinstance(modules, str) else ",".join(modules or [])
        if ref.tied_embeddings and "head" in wanted:
            warnings.warn(f"{ref.folder}: lm_head is tied to the embeddings (no head tensor): the head is "
                          "reported as the embed matrix", stacklevel=2)
        jobs.append((ref, target, infos))
    references = {ref.folder for ref, _, _ in jobs}

    rows: list[dict[str, Any]] = []
    sigma_rows: list[dict[str, Any]] = []
    created = datetime.now(UTC).isoformat(timespec="seconds")
    total = sum(len(infos) for _, _, infos in jobs)
    with _progress(progress) as bar:
        task = bar.add_task("spectrum", total=total) if bar else None
        for ref, target, infos in jobs:
            for info in infos:
                start = time.perf_counter()
                rank = min(info.shape)
                kmax = max(resolve_k(k, rank, info.name) for k in ks)
                W_ref = ref.load(info.name, torch.float64, dev)
                dec_ref = cache.get(ref, info, method, kmax, kmax, dev, matrix=W_ref)
                W_t = target.load(info.name, torch.float64, dev)
                if target.folder in references:
                    dec_t = cache.get(target, info, method, kmax, kmax, dev, matrix=W_t)
                else:
                    dec_t = decompose(W_t, method, top=kmax, tail=kmax)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # k clipping was already reported above for this tensor
                    metric_rows, sigma_row = matrix_metrics(info.name, W_ref, dec_ref, W_t, dec_t, ks)
                ident = {"target": str(target.folder), "reference": str(ref.folder), "tensor": info.name,
                         "layer": info.layer, "module": info.module}
                seconds = time.perf_counter() - start
                for row in metric_rows:
                    row.update(ident, rows=info.shape[0], cols=info.shape[1], rank=rank,
                               method=f"{dec_ref.method}|{dec_t.method}", seconds=seconds, device=str(dev),
                               created=created)
                    rows.append(row)
                sigma_rows.append({**ident, **sigma_row, "method": f"{dec_ref.method}|{dec_t.method}"})
                if bar:
                    bar.advance(task)
    return rows, sigma_rows


def _progress(enabled: bool):
    from contextlib import nullcontext

    if not enabled:
        return nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    return Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), transient=True)
