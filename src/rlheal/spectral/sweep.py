"""The spectral diagnostic of checkpoints against references, matrix by matrix.

Matrix-major: for each tensor name, every checkpoint that takes part (references and targets) is read once,
moved to the device as stored and upcast there, decomposed once with as many top/tail vectors as the largest
k needs, and kept on the device while a pair still needs it; every pair is compared at every k. A background
thread reads the next tensor's weights from disk while this one computes. The on-disk decomposition cache is
used only when one is given (for checkpoints that serve as a reference).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from rlheal.progress import bar
from rlheal.spectral.cache import DecompositionCache
from rlheal.spectral.linalg import Decomposition, decompose, resolve_k
from rlheal.spectral.metrics import matrix_metrics
from rlheal.spectral.weights import CheckpointWeights, WeightInfo, WeightsError, check_compatible

# `--device auto` takes CUDA only for matrices with at least this rank: below it the per-call overhead of the
# GPU's eigensolvers outweighs their speed (the built-in models' sweeps took several times longer on an H200
# than on two CPU cores, docs/BENCHMARKS.md).
AUTO_CUDA_MIN_RANK = 1024


def resolve_device(device: str | None, largest_rank: int | None = None) -> torch.device:
    """"auto"/None → cuda when available and `largest_rank` (None: unknown) reaches AUTO_CUDA_MIN_RANK, else
    cpu; otherwise the named device."""
    if device in (None, "auto"):
        big = largest_rank is None or largest_rank >= AUTO_CUDA_MIN_RANK
        return torch.device("cuda" if big and torch.cuda.is_available() else "cpu")
    return torch.device(device)


Pair = tuple[int, CheckpointWeights, CheckpointWeights]  # (pair index, reference, target)


def _plan(jobs: Sequence[tuple[CheckpointWeights, CheckpointWeights, list[WeightInfo]]]
          ) -> dict[str, tuple[WeightInfo, list[Pair]]]:
    """Tensor name → (its info, the pairs comparing it), in first-seen order."""
    plan: dict[str, tuple[WeightInfo, list[Pair]]] = {}
    for index, (ref, target, infos) in enumerate(jobs):
        for info in infos:
            plan.setdefault(info.name, (info, []))[1].append((index, ref, target))
    return plan


def _members(pairs: list[Pair]) -> list[CheckpointWeights]:
    """The distinct checkpoints of `pairs`, in order of first use."""
    seen: dict[Path, CheckpointWeights] = {}
    for _, ref, target in pairs:
        seen.setdefault(ref.folder, ref)
        seen.setdefault(target.folder, target)
    return list(seen.values())


def _prefetched(plan: dict[str, tuple[WeightInfo, list[Pair]]], pin: bool
                ) -> Iterator[tuple[str, dict[Path, torch.Tensor]]]:
    """(tensor name, {checkpoint folder: tensor as stored}) per planned tensor; the next one is read meanwhile
    (into pinned memory with `pin`, so that its copy to a GPU is fast and asynchronous)."""
    names = list(plan)

    def read(name: str) -> dict[Path, torch.Tensor]:
        return {w.folder: w.read(name).pin_memory() if pin else w.read(name) for w in _members(plan[name][1])}

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlheal-prefetch") as pool:
        pending = pool.submit(read, names[0]) if names else None
        for i, name in enumerate(names):
            stored = pending.result()
            pending = pool.submit(read, names[i + 1]) if i + 1 < len(names) else None
            yield name, stored


def _compare_tensor(info: WeightInfo, tensor_pairs: list[Pair], stored: dict[Path, torch.Tensor],
                    ks: Sequence[int | float], method: str, dev: torch.device, cache: DecompositionCache | None,
                    references: set[Path], advance) -> list[tuple[Pair, list[dict[str, Any]], dict[str, Any], str]]:
    """(pair, metric rows, σ row, methods) for every pair of one tensor: each checkpoint is uploaded and
    decomposed once and dropped from the device after its last pair."""
    kmax = max(resolve_k(k, min(info.shape), info.name) for k in ks)
    last_use = {w.folder: j for j, (_, ref, target) in enumerate(tensor_pairs) for w in (ref, target)}
    held: dict[Path, tuple[torch.Tensor, Decomposition]] = {}

    def prepare(weights: CheckpointWeights) -> tuple[torch.Tensor, Decomposition]:
        if weights.folder not in held:
            W = weights.upload(info.name, stored.pop(weights.folder), torch.float64, dev)
            if cache is not None and weights.folder in references:
                dec = cache.get(weights, info, method, kmax, kmax, dev, matrix=W)
            else:
                dec = decompose(W, method, top=kmax, tail=kmax)
            held[weights.folder] = W, dec
        return held[weights.folder]

    done = []
    for j, pair in enumerate(tensor_pairs):
        _, ref, target = pair
        (W_ref, dec_ref), (W_t, dec_t) = prepare(ref), prepare(target)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # k clipping was already reported above for this tensor
            metric_rows, sigma_row = matrix_metrics(info.name, W_ref, dec_ref, W_t, dec_t, ks)
        for folder in {ref.folder, target.folder}:
            if last_use[folder] == j:
                del held[folder]
        done.append((pair, metric_rows, sigma_row, f"{dec_ref.method}|{dec_t.method}"))
        advance()
    return done


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

    Rows come pair by pair, each in the reference's tensor order. Each checkpoint is decomposed once per
    tensor however many pairs it is part of; with `cache`, checkpoints that appear as a reference are
    decomposed through it (read when present, written otherwise), others in memory only. A row's `seconds` is
    its tensor's wall time shared equally among the tensor's pairs. Raises WeightsError when a target lacks a
    tensor of the reference, differs in shape, or holds non-finite values.
    """
    if not pairs:
        raise WeightsError("no (reference, target) pairs to compare")
    if not ks:
        raise WeightsError("give at least one k")
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
    plan = _plan(jobs)
    dev = resolve_device(device, max(min(info.shape) for info, _ in plan.values()))

    per_pair: list[list[tuple[list[dict[str, Any]], dict[str, Any]]]] = [[] for _ in jobs]
    created = datetime.now(UTC).isoformat(timespec="seconds")
    with bar("spectrum", total=sum(len(p) for _, p in plan.values()), enabled=progress) as shown:
        for name, stored in _prefetched(plan, pin=dev.type == "cuda"):
            start = time.perf_counter()
            info, tensor_pairs = plan[name]
            done = _compare_tensor(info, tensor_pairs, stored, ks, method, dev, cache, references,
                                   shown.advance)
            seconds = (time.perf_counter() - start) / len(tensor_pairs)
            for (index, ref, target), metric_rows, sigma_row, methods in done:
                ident = {"target": str(target.folder), "reference": str(ref.folder), "tensor": name,
                         "layer": info.layer, "module": info.module}
                for row in metric_rows:
                    row.update(ident, rows=info.shape[0], cols=info.shape[1], rank=min(info.shape),
                               method=methods, seconds=seconds, device=str(dev), created=created)
                per_pair[index].append((metric_rows, {**ident, **sigma_row, "method": methods}))
    rows = [row for results in per_pair for metric_rows, _ in results for row in metric_rows]
    sigma_rows = [sigma_row for results in per_pair for _, sigma_row in results]
    return rows, sigma_rows

