"""Pure tensor functions of the spectral room: decompositions, σ drift, ΔW block energy, error bounds.

Conventions: W = U Σ Vᵀ with σ descending; r = min(m, n) is the rank of the thin SVD; "top-k" are the
singular directions of the k largest σ, "tail-k" those of the k smallest of the r. The null space of a
short-wide (or tall-thin) matrix is never part of a tail: only the r thin singular vectors count.
Everything here takes and returns torch tensors and runs on whatever device they live on. Principal angles
are in `rlheal.spectral.angles`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

EPS64 = float(torch.finfo(torch.float64).eps)
METHODS = ("gram64", "svd64", "svd32")
# Below this σ_min/σ_max the Gram route loses more than ~1e-8 relative accuracy in σ_min's vectors:
# such matrices are decomposed with the full float64 SVD instead.
GRAM_MIN_RCOND = 1e-6


def column_norms(X: torch.Tensor) -> torch.Tensor:
    """Euclidean norms of the columns of X (..., n, k) → (..., k); sqrt of summed squares (torch's
    `vector_norm` over dim -2 is several times slower on the CPU, and weights never reach 1e150)."""
    return (X * X).sum(-2).sqrt()


class SpectralError(ValueError):
    """Bad input to a spectral computation; the message names what is wrong and what to do."""


def resolve_k(k: int | float, rank: int, name: str = "matrix", allow_zero: bool = False) -> int:
    """A subspace size from a count (int ≥ 1) or a fraction of the rank (float in (0, 1]).

    A fraction f gives round(f·rank) (halves round to even, as Python's `round`), at least 1. A count above
    the rank is clipped to the rank with a warning naming `name`. k ≤ 0 (unless `allow_zero` and k == 0),
    NaN, fractions above 1 and non-numbers are errors.
    """
    if isinstance(k, bool) or not isinstance(k, int | float):
        raise SpectralError(f"{name}: k={k!r} must be a count (int ≥ 1) or a fraction of the rank in (0, 1]")
    if allow_zero and k == 0:
        return 0
    if isinstance(k, float):
        if math.isnan(k):
            raise SpectralError(f"{name}: k is NaN; give a count ≥ 1 or a fraction of the rank in (0, 1]")
        if 0.0 < k <= 1.0:
            return max(1, round(k * rank))
        if not k.is_integer():
            raise SpectralError(f"{name}: k={k} is out of range: give a fraction in (0, 1] or a count ≥ 1")
    count = int(k)
    if count < 1:
        raise SpectralError(f"{name}: k={k} is out of range: give a count ≥ 1 or a fraction in (0, 1]")
    if count > rank:
        warnings.warn(f"{name}: k={count} exceeds the rank {rank}; using k={rank}", stacklevel=2)
        return rank
    return count


@dataclass(frozen=True)
class Decomposition:
    """Singular values (all r, descending) and the singular vectors of the `top` largest and `tail` smallest.

    `U` (m × c) and `V` (n × c) hold the top columns first, then the tail columns, both in descending-σ
    order; when top + tail ≥ r they hold all r columns (top = r, tail = 0). `method` records how it was made.
    """

    sigma: torch.Tensor
    U: torch.Tensor
    V: torch.Tensor
    top: int
    tail: int
    method: str

    @property
    def rank(self) -> int:
        return int(self.sigma.numel())

    @property
    def complete(self) -> bool:
        return self.top == self.rank

    def covers(self, top: int, tail: int) -> bool:
        return self.complete or (top <= self.top and tail <= self.tail)

    def top_vectors(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(U_k, V_k) of the k largest σ."""
        if not self.covers(k, 0):
            raise SpectralError(f"decomposition holds {self.top} top vectors, {k} asked")
        return self.U[:, :k], self.V[:, :k]

    def tail_vectors(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(U, V) of the k smallest σ, in descending-σ order."""
        if not self.covers(0, k):
            raise SpectralError(f"decomposition holds {self.tail} tail vectors, {k} asked")
        stop = self.U.shape[1]
        return self.U[:, stop - k : stop], self.V[:, stop - k : stop]

    def vectors(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(U, V) columns for singular indices (0 = largest σ), which must lie in the stored top/tail."""
        idx = indices.to(torch.long)
        if self.complete:
            return self.U[:, idx], self.V[:, idx]
        in_top = idx < self.top
        in_tail = idx >= self.rank - self.tail
        if not bool((in_top | in_tail).all()):
            raise SpectralError("asked for singular vectors outside the stored top/tail columns")
        cols = torch.where(in_top, idx, idx - (self.rank - self.tail) + self.top)
        return self.U[:, cols], self.V[:, cols]

    def to(self, device: torch.device | str) -> Decomposition:
        return Decomposition(self.sigma.to(device), self.U.to(device), self.V.to(device), self.top, self.tail,
                             self.method)


def _kept_columns(r: int, top: int | None, tail: int) -> tuple[torch.Tensor | None, int, int]:
    """(column indices into the descending-σ order, top, tail) to keep; None keeps all r (top = r, tail = 0)."""
    top = r if top is None else top
    if top + tail >= r:
        return None, r, 0
    return torch.cat([torch.arange(top), torch.arange(r - tail, r)]), top, tail


def _svd(W: torch.Tensor, dtype: torch.dtype, top: int | None, tail: int, method: str) -> Decomposition:
    U, S, Vh = torch.linalg.svd(W.to(dtype), full_matrices=False)
    cols, top, tail = _kept_columns(S.numel(), top, tail)
    V = Vh.mT
    if cols is not None:
        cols = cols.to(U.device)
        U, V = U[:, cols], V[:, cols]
    return Decomposition(S, U.contiguous(), V.contiguous(), top, tail, method)


def _gram(W: torch.Tensor, top: int | None, tail: int) -> Decomposition | None:
    """SVD from the float64 eigendecomposition of the short side's Gram matrix; None if W is too ill-conditioned.

    Short-side vectors Q come from eigh(W Wᵀ) (or WᵀW); the long side P = Wᵀ Q gives σ_i = ‖P_i‖ (accurate
    to second order in Q's error, unlike sqrt of the eigenvalues) and the long-side vectors P_i / σ_i. Only
    the kept columns are gathered and scaled.
    """
    W = W.to(torch.float64)
    wide = W.shape[0] <= W.shape[1]
    A = W if wide else W.mT  # A is short-wide: (r × long)
    _, Q = torch.linalg.eigh(A @ A.mT)
    P = A.mT @ Q
    sigma = column_norms(P)
    sigma, order = torch.sort(sigma, descending=True)
    if bool((sigma[0] == 0) | (sigma[-1] < GRAM_MIN_RCOND * sigma[0])):
        return None
    cols, top, tail = _kept_columns(sigma.numel(), top, tail)
    chosen = order if cols is None else order[cols.to(order.device)]
    scale = sigma if cols is None else sigma[cols.to(sigma.device)]
    Q, P = Q[:, chosen], P[:, chosen] / scale
    U, V = (Q, P) if wide else (P, Q)
    return Decomposition(sigma, U.contiguous(), V.contiguous(), top, tail, "gram64")


def decompose(W: torch.Tensor, method: str = "gram64", top: int | None = None, tail: int = 0) -> Decomposition:
    """All singular values of W and the singular vectors of its `top` largest and `tail` smallest σ.

    `top=None` keeps every vector. Methods: `svd64` (LAPACK/cuSOLVER SVD in float64, the exact reference),
    `gram64` (float64 eigh of the short side's Gram matrix: several times faster, vector error ~ ε·σ₁²/gap
    instead of ε·σ₁/gap; matrices with σ_min < 1e-6·σ_max fall back to `svd64`, recorded in `method`),
    `svd32` (float32 SVD, the paper's naive way, error ~1e-3 on hard spectra). Runs on W's device.
    """
    if W.ndim != 2:
        raise SpectralError(f"decompose needs a 2-D matrix, got shape {tuple(W.shape)}")
    if method == "gram64":
        dec = _gram(W, top, tail)
        if dec is not None:
            return dec
        dec = _svd(W, torch.float64, top, tail, "svd64")
        return Decomposition(dec.sigma, dec.U, dec.V, dec.top, dec.tail, "svd64(fallback)")
    if method == "svd64":
        return _svd(W, torch.float64, top, tail, "svd64")
    if method == "svd32":
        dec = _svd(W, torch.float32, top, tail, "svd32")
        return Decomposition(dec.sigma.double(), dec.U.double(), dec.V.double(), dec.top, dec.tail, "svd32")
    raise SpectralError(f"unknown decomposition method {method!r}; choose one of {METHODS}")


def sigma_drift(sigma_ref: torch.Tensor, sigma_target: torch.Tensor) -> torch.Tensor:
    """(σ_t,i − σ_b,i) / σ_b,i per index; NaN where σ_b,i is zero (no relative drift is defined there)."""
    if sigma_ref.shape != sigma_target.shape:
        raise SpectralError(f"σ vectors differ in length: {sigma_ref.numel()} vs {sigma_target.numel()}")
    ref = sigma_ref.to(torch.float64)
    out = (sigma_target.to(torch.float64) - ref) / ref
    return torch.where(ref > 0, out, torch.full_like(out, math.nan))


def block_energy(delta: torch.Tensor, U: torch.Tensor, V: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """Shares of ‖ΔW‖_F² inside the blocks C_k = U[:, :k]ᵀ ΔW V[:, :k], one row (diagonal, off-diagonal) per k.

    The diagonal share ‖diag C_k‖²/‖ΔW‖_F² is rescaling of the reference directions, the off-diagonal share
    (‖C_k‖_F² − ‖diag C_k‖²)/‖ΔW‖_F² rotation among them. One product for the largest k serves every k; a zero
    ΔW gives zeros. A (len(ks), 2) float64 tensor on ΔW's device (no host sync).
    """
    kmax = max(ks)
    C = U[:, :kmax].mT @ (delta @ V[:, :kmax])
    total = (delta * delta).sum()
    square = (C**2).cumsum(0).cumsum(1)  # square[k-1, k-1] = ‖C_k‖_F²
    diag = (C.diagonal() ** 2).cumsum(0)
    index = torch.tensor(ks, device=C.device) - 1
    inside, on_diag = square[index, index], diag[index]
    shares = torch.stack([on_diag, (inside - on_diag).clamp(min=0)], dim=1)
    return torch.where(total > 0, shares / total.clamp(min=torch.finfo(total.dtype).tiny), 0.0)


def angle_error_bound(sigma: torch.Tensor, split: int, method: str) -> float:
    """First-order bound (radians) on the error of the computed subspace of the first `split` singular vectors.

    ε·σ₁/gap for an SVD, ε·σ₁²/gap(σ²) for the Gram route (gap between σ_split and σ_split+1); 0 when the
    split is the whole rank (the subspace is then the whole column space) and inf on a zero gap.
    """
    r = sigma.numel()
    if split <= 0 or split >= r:
        return 0.0
    s1, a, b = float(sigma[0]), float(sigma[split - 1]), float(sigma[split])
    eps = float(torch.finfo(torch.float32).eps) if method == "svd32" else EPS64
    if method == "gram64":
        gap = a * a - b * b
        return math.inf if gap <= 0 else eps * s1 * s1 / gap
    gap = a - b
    return math.inf if gap <= 0 else eps * s1 / gap
