"""SVD edits of weight matrices and of whole checkpoints (new HF folders with the target's format and dtype).

With W_t = U_t Σ_t V_tᵀ (target) and W_r = U_r Σ_r V_rᵀ (reference), and S the chosen singular indices
(the `top` largest and the `tail` smallest of r = min(m, n)):
- values:   U_t Σ' V_tᵀ with σ'_i = σ_r,i for i in S, σ_t,i otherwise;
- vectors:  U' Σ_t V'ᵀ with columns i in S of U', V' taken from U_r, V_r (U', V' are in general not
            orthonormal: the result is exactly this product, not an SVD);
- triplets: U' Σ' V'ᵀ, i.e. the triplets (u_i, σ_i, v_i), i in S, come from the reference.
Computed as the rank-|S| update W_t + Σ_{i∈S} (new_i − old_i) so W_t's other components stay bit-exact.
A pair (u_i, v_i) is only defined up to a joint sign flip; both modes swap u_i and v_i together, so the
flip cancels in u_i v_iᵀ. When S is the whole rank: `values` gives U_t Σ_r V_tᵀ, `vectors` gives
U_r Σ_t V_rᵀ (not W_r), `triplets` gives W_r itself — said in a warning for vectors and triplets.
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from rlheal.atomic import staged_dir
from rlheal.models.checkpoint import MANIFEST, Manifest, read_manifest, write_manifest
from rlheal.paths import resolve_inside
from rlheal.spectral.cache import DecompositionCache
from rlheal.spectral.linalg import SpectralError, decompose, resolve_k
from rlheal.spectral.weights import CheckpointWeights, WeightsError, check_compatible, parse_name

MATRIX_MODES = ("values", "vectors", "triplets")
EDIT_MODES = (*MATRIX_MODES, "layers")


def edit_indices(rank: int, top: int | float = 0, tail: int | float = 0, name: str = "matrix") -> tuple[int, int]:
    """(top count, tail count) from counts or fractions of the rank; top = tail = 0 means the whole rank."""
    top_n = resolve_k(top, rank, f"{name} (top)", allow_zero=True)
    tail_n = resolve_k(tail, rank, f"{name} (tail)", allow_zero=True)
    return (rank, 0) if top_n == tail_n == 0 else (top_n, tail_n)


def edit_matrix(W_ref, W_target, mode: str, top: int | float = 0, tail: int | float = 0,
                method: str = "gram64", name: str = "matrix", dec_ref=None):
    """The edited target matrix (float64; numpy in → numpy out, torch in → torch out on W_target's device).

    `top`/`tail`: counts or fractions of the rank of the largest/smallest singular directions to take from
    the reference; both 0 (the default) means the whole rank. `dec_ref` may pass a precomputed reference
    decomposition holding those vectors (e.g. from the cache). See the module docstring for each mode.
    """
    if mode not in MATRIX_MODES:
        raise SpectralError(f"unknown edit mode {mode!r}; choose one of {MATRIX_MODES} (layers is a checkpoint edit)")
    as_numpy = not isinstance(W_target, torch.Tensor)
    Wt = torch.as_tensor(W_target, dtype=torch.float64)
    Wr = torch.as_tensor(W_ref, dtype=torch.float64, device=Wt.device)
    if Wr.ndim != 2 or Wr.shape != Wt.shape:
        raise SpectralError(f"{name}: reference shape {tuple(Wr.shape)} differs from target {tuple(Wt.shape)}")
    rank = min(Wt.shape)
    top_n, tail_n = edit_indices(rank, top, tail, name)
    chosen = torch.tensor(sorted(set(range(top_n)) | set(range(rank - tail_n, rank))), device=Wt.device)
    whole = chosen.numel() == rank
    if whole and mode == "triplets":
        warnings.warn(f"{name}: top+tail covers the whole rank {rank}: triplets mode returns the reference "
                      "matrix W_ref", stacklevel=2)
        out = Wr.clone()
        return out.cpu().numpy() if as_numpy else out
    if whole and mode == "vectors":
        warnings.warn(f"{name}: top+tail covers the whole rank {rank}: vectors mode returns U_ref Σ_target "
                      "V_refᵀ (not W_ref)", stacklevel=2)
    dec_t = decompose(Wt, method, top=top_n, tail=tail_n)
    dec_r = dec_ref.to(Wt.device) if dec_ref is not None else decompose(Wr, method, top=top_n, tail=tail_n)
    Ut, Vt = dec_t.vectors(chosen)
    Ur, Vr = dec_r.vectors(chosen)
    st, sr = dec_t.sigma[chosen], dec_r.sigma[chosen]
    if mode == "values":
        out = Wt + (Ut * (sr - st)) @ Vt.mT
    elif mode == "vectors":
        out = Wt + (Ur * st) @ Vr.mT - (Ut * st) @ Vt.mT
    else:
        out = Wt + (Ur * sr) @ Vr.mT - (Ut * st) @ Vt.mT
    return out.cpu().numpy() if as_numpy else out


def _layer_tensors(weights: CheckpointWeights, layers: set[int]) -> list[str]:
    return [n for n in weights.all_names if parse_name(n)[0] in layers]


def edit_checkpoint(reference: str | Path, target: str | Path, out: str | Path, mode: str,
                    top: int | float = 0, tail: int | float = 0, modules: str | None = None,
                    layers: set[int] | None = None, method: str = "gram64", device: str | None = "auto",
                    cache: DecompositionCache | None = None, overwrite: bool = False,
                    progress: bool = True) -> Path:
    """Write `out`: a copy of `target` (same files, dtypes, tokenizer, config) with the chosen tensors edited.

    Matrix modes edit the 2-D tensors of `modules` (default: decoder q,k,v,o,gate,up,down) in `layers`
    (default: all). `layers` mode copies every tensor of the chosen decoder layers (norms included) from
    the reference. The manifest records stage="edit", the parent target and the edit's settings.
    """
    from rlheal.progress import bar
    from rlheal.spectral.sweep import resolve_device

    if mode not in EDIT_MODES:
        raise SpectralError(f"unknown edit mode {mode!r}; choose one of {EDIT_MODES}")
    ref_w, tgt_w = CheckpointWeights(reference), CheckpointWeights(target)
    if mode == "layers":
        if not layers:
            raise SpectralError("layers mode needs --layers (the decoder layers to restore, e.g. 0-3)")
        names = _layer_tensors(tgt_w, layers)
        differ = sorted(set(names) ^ set(_layer_tensors(ref_w, layers)))
        if not names or differ:
            raise WeightsError(f"cannot restore layers {sorted(layers)}: " + (
                f"tensors {differ[:5]} are not in both checkpoints" if differ else "the target has no such layers"))
        infos = []
    else:
        infos = tgt_w.select(modules, layers)
        if not infos:
            raise WeightsError(f"no 2-D tensors of {tgt_w.folder} match modules={modules} layers={layers}")
        check_compatible(tgt_w, ref_w, infos)
        names = [i.name for i in infos]
    by_name = {i.name: i for i in infos}
    dev = resolve_device(device, max((min(i.shape) for i in infos), default=0))
    whole_rank: list[str] = []
    out = Path(out)
    with staged_dir(out, overwrite=overwrite) as tmp, bar(f"edit ({mode})", total=len(names), enabled=progress) as shown:
        for file in tgt_w.files:
            tensors = load_file(tgt_w.folder / file)
            with safe_open(tgt_w.folder / file, framework="pt") as fh:
                metadata = fh.metadata()
            for name in [n for n in names if n in tensors]:
                original = tensors[name]
                if mode == "layers":
                    new = ref_w.load(name, original.dtype)
                    if new.shape != original.shape:
                        raise WeightsError(f"{name}: reference shape {tuple(new.shape)} differs from target "
                                           f"{tuple(original.shape)}")
                else:
                    new, whole = _edit_tensor(ref_w, tgt_w, by_name[name], original, mode, top, tail, method, dev,
                                              cache)
                    if whole:
                        whole_rank.append(name)
                tensors[name] = new.to(dtype=original.dtype).to(device="cpu").contiguous()
                shown.advance()
            save_file(tensors, resolve_inside(tmp, file, "a weight shard"), metadata=metadata)
        for path in tgt_w.folder.iterdir():
            if path.is_file() and path.suffix != ".safetensors" and path.name != MANIFEST:
                shutil.copy2(path, tmp / path.name)
        parent = read_manifest(tgt_w.folder)
        what = (f"first{len(layers)}" if mode == "layers" and layers else f"top{top:g}" + (f"-tail{tail:g}" if tail else ""))
        extra: dict[str, Any] = {"name": f"edit-{mode}-{what}", "mode": mode, "reference": str(ref_w.folder), "top": top, "tail": tail,
                                 "modules": modules, "layers": sorted(layers) if layers else None,
                                 "method": method, "edited_tensors": len(names),
                                 "whole_rank_tensors": whole_rank, "target_manifest": asdict(parent)}
        write_manifest(tmp, Manifest(stage="edit", step=parent.step, parent=str(tgt_w.folder),
                                     seed=parent.seed, extra=extra))
    return out


def _edit_tensor(ref_w: CheckpointWeights, tgt_w: CheckpointWeights, info, stored: torch.Tensor, mode: str, top,
                 tail, method: str, dev: torch.device, cache: DecompositionCache | None) -> tuple[torch.Tensor, bool]:
    """One edited matrix (float64 on `dev`) and whether the edit covered its whole rank.

    `stored` is the target's tensor as read from its file; the reference goes through `cache` when given.
    """
    rank = min(info.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        top_n, tail_n = edit_indices(rank, top, tail, info.name)
    whole = top_n + tail_n >= rank
    W_ref = ref_w.load(info.name, torch.float64, dev)
    W_t = tgt_w.upload(info.name, stored, torch.float64, dev)
    dec_ref = None
    if not (whole and mode == "triplets"):
        dec_ref = (cache.get(ref_w, info, method, top_n, tail_n, dev, matrix=W_ref) if cache is not None
                   else decompose(W_ref, method, top=top_n, tail=tail_n))
    return edit_matrix(W_ref, W_t, mode, top, tail, method, info.name, dec_ref=dec_ref), whole
