"""Per-matrix spectral metrics of a target against a reference, as store rows, and their aggregation.

For each matrix and each k: σ drift (per index and mean |Δσ|/σ), principal angles between the top-k and the
tail-k left (U) and right (V) singular subspaces, projection distances, and the shares of ‖ΔW‖_F² inside the
reference top-k block split into diagonal (rescaling) and off-diagonal (rotation) parts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from rlheal.spectral.angles import subspace_angles
from rlheal.spectral.linalg import Decomposition, angle_error_bound, block_energy, resolve_k, sigma_drift
from rlheal.store import Table

ANGLE_SETS = ("top_left", "top_right", "tail_left", "tail_right")
METRIC_COLUMNS = (
    "mean_abs_rel_sigma_drift", "max_abs_rel_sigma_drift", "delta_rel_norm",
    *(f"{s}_{stat}" for s in ANGLE_SETS for stat in ("max", "mean", "proj")),
    "diag_share", "offdiag_share", "angle_error_bound",
)
# The columns holding angles (radians in the store; degrees wherever a person or an export reads them).
ANGLE_COLUMNS = (*(f"{s}_{stat}" for s in ANGLE_SETS for stat in ("max", "mean")), "angle_error_bound")

SPECTRAL = Table(
    name="spectral",
    columns={
        "target": "path", "reference": "path", "tensor": "str", "k_label": "str", "k": "int",
        "layer": "int", "module": "str", "rows": "int", "cols": "int", "rank": "int", "method": "str",
        **{c: "float" for c in METRIC_COLUMNS},
        "seconds": "float", "device": "str", "created": "str",
    },
    key=("target", "reference", "tensor", "k_label"),
)

SPECTRAL_SIGMA = Table(
    name="spectral_sigma",
    columns={"target": "path", "reference": "path", "tensor": "str", "layer": "int", "module": "str",
             "sigma_ref": "json", "sigma_target": "json", "rel_drift": "json", "method": "str"},
    key=("target", "reference", "tensor"),
)


def k_label(k: int | float) -> str:
    """The store label of a k setting: "k=0.2" for a fraction of the rank, "k=768" for a count."""
    return f"k={k:g}" if isinstance(k, float) and k <= 1.0 else f"k={int(k)}"


def _finite_or_none(values: torch.Tensor) -> list[float | None]:
    return [None if math.isnan(v) else v for v in values.tolist()]


def _angle_stats(dec_ref: Decomposition, dec_t: Decomposition, k: int) -> torch.Tensor:
    """(max, mean, projection distance) of the angle sets in ANGLE_SETS order, as a (4, 3) tensor."""
    stats = []
    for part in ("top", "tail"):
        ref, target = getattr(dec_ref, f"{part}_vectors")(k), getattr(dec_t, f"{part}_vectors")(k)
        for side in (0, 1):  # left (U), right (V)
            theta, proj = subspace_angles(ref[side], target[side])
            stats.append(torch.stack([theta.max(), theta.mean(), proj]))
    return torch.stack(stats)


def matrix_metrics(name: str, W_ref: torch.Tensor, dec_ref: Decomposition, W_t: torch.Tensor,
                   dec_t: Decomposition, ks: Sequence[int | float]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Metric rows (one per k) and the σ row of one matrix; decompositions must hold max(k) top/tail vectors.

    Angles are in radians; the projection distance of each subspace pair is ‖P_b − P_t‖_F. σ indices where
    the reference σ is zero have no relative drift and are left out of the means. Everything is computed
    on the tensors' device and brought to the host in one transfer.
    """
    counts = [resolve_k(k, dec_ref.rank, name) for k in ks]
    distinct = sorted(set(counts))
    delta = W_t - W_ref
    norms = torch.stack([(delta * delta).sum(), (W_ref * W_ref).sum()]).sqrt()
    shares = block_energy(delta, *dec_ref.top_vectors(distinct[-1]), distinct)
    angles = torch.stack([_angle_stats(dec_ref, dec_t, k) for k in distinct])
    r = dec_ref.rank
    host = torch.cat([norms, shares.flatten(), angles.flatten(), dec_ref.sigma, dec_t.sigma]).cpu()
    delta_norm, ref_norm = host[:2].tolist()
    shares_h = host[2 : 2 + shares.numel()].view(shares.shape).tolist()
    offset = 2 + shares.numel()
    angles_h = host[offset : offset + angles.numel()].view(angles.shape).tolist()
    sigma_ref, sigma_t = host[-2 * r : -r], host[-r:]
    drift = sigma_drift(sigma_ref, sigma_t)
    finite = drift[~torch.isnan(drift)].abs()
    common = {
        "mean_abs_rel_sigma_drift": float(finite.mean()) if finite.numel() else math.nan,
        "max_abs_rel_sigma_drift": float(finite.max()) if finite.numel() else math.nan,
        "delta_rel_norm": delta_norm / ref_norm if ref_norm else math.nan,
    }
    rows = []
    for k, kk in zip(ks, counts, strict=True):
        i = distinct.index(kk)
        row: dict[str, Any] = {"k_label": k_label(k), "k": kk, **common}
        for label, (theta_max, theta_mean, proj) in zip(ANGLE_SETS, angles_h[i], strict=True):
            row[f"{label}_max"], row[f"{label}_mean"], row[f"{label}_proj"] = theta_max, theta_mean, proj
        row["diag_share"], row["offdiag_share"] = shares_h[i]
        row["angle_error_bound"] = max(
            angle_error_bound(sigma, split, dec.method)
            for dec, sigma in ((dec_ref, sigma_ref), (dec_t, sigma_t)) for split in (kk, r - kk)
        )
        rows.append(row)
    sigma_row = {"sigma_ref": sigma_ref.tolist(), "sigma_target": sigma_t.tolist(), "rel_drift": _finite_or_none(drift)}
    return rows, sigma_row


def aggregate(rows: Iterable[dict[str, Any]], by: Sequence[str]) -> list[dict[str, Any]]:
    """Group rows by the `by` columns: `*_max` columns take the max, other metrics the mean over matrices.

    NaN values are skipped; each group reports `n_matrices`. Groups keep first-seen order.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(c) for c in by), []).append(row)
    out = []
    for key, members in groups.items():
        agg: dict[str, Any] = dict(zip(by, key, strict=True))
        agg["n_matrices"] = len(members)
        for col in METRIC_COLUMNS:
            values = [m[col] for m in members if m.get(col) is not None and not math.isnan(m[col])]
            if not values:
                agg[col] = math.nan
            else:
                agg[col] = max(values) if col.endswith("_max") or col == "angle_error_bound" else sum(values) / len(values)
        out.append(agg)
    return out
