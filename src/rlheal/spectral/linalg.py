"""Pure tensor functions of the spectral room: decompositions, principal angles, σ drift, ΔW block energy.

Conventions: W = U Σ Vᵀ with σ descending; r = min(m, n) is the rank of the thin SVD; "top-k" are the
singular directions of the k largest σ, "tail-k" those of the k smallest of the r. The null space of a
short-wide (or tall-thin) matrix is never part of a tail: only the r thin singular vectors count.
Everything here takes and returns torch tensors and runs on whatever device they live on.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

EPS64 = float(torch.finfo(torch.float64).eps)
METHODS = ("gram64", "svd64", "svd32")
# Below this σ_min/σ_max the Gram route loses more than ~1e-8 relative accuracy in σ_min's vectors:
# such matrices are decomposed with the full float64 SVD instead.
GRAM_MIN_RCOND = 1e-6


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


def _keep(U: torch.Tensor, V: torch.Tensor, sigma: torch.Tensor, top: int | None, tail: int,
          method: str) -> Decomposition:
    r = sigma.numel()
    top = r if top is None else top
    if top + tail >= r:
        return Decomposition(sigma, U.contiguous(), V.contiguous(), r, 0, method)
    cols = torch.cat([torch.arange(top), torch.arange(r - tail, r)]).to(U.device)
    return Decomposition(sigma, U[:, cols].contiguous(), V[:, cols].contiguous(), top, tail, method)


def _svd(W: torch.Tensor, dtype: torch.dtype, top: int | None, tail: int, method: str) -> Decomposition:
    U, S, Vh = torch.linalg.svd(W.to(dtype), full_matrices=False)
    return _keep(U, Vh.mT, S, top, tail, method)


def _gram(W: torch.Tensor, top: int | None, tail: int) -> Decomposition | None:
    """SVD from the float64 eigendecomposition of the short side's Gram matrix; None if W is too ill-conditioned.

    Short-side vectors Q come from eigh(W Wᵀ) (or WᵀW); the long side P = Wᵀ Q gives σ_i = ‖P_i‖ (accurate
    to second order in Q's error, unlike sqrt of the eigenvalues) and the long-side vectors P_i / σ_i.
    """
    W = W.to(torch.float64)
    wide = W.shape[0] <= W.shape[1]
    A = W if wide else W.mT  # A is short-wide: (r × long)
    _, Q = torch.linalg.eigh(A @ A.mT)
    P = A.mT @ Q
    sigma = torch.linalg.vector_norm(P, dim=0)
    sigma, order = torch.sort(sigma, descending=True)
    if sigma[0] == 0 or sigma[-1] < GRAM_MIN_RCOND * sigma[0]:
        return None
    Q, P = Q[:, order], P[:, order] / sigma
    U, V = (Q, P) if wide else (P, Q)
    return _keep(U, V, sigma, top, tail, "gram64")


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


def _orthonormal_basis(A: torch.Tensor, name: str) -> torch.Tensor:
    """An orthonormal basis of span(A) by Householder QR; A must have full column rank."""
    if A.ndim != 2 or A.shape[1] == 0 or A.shape[1] > A.shape[0]:
        raise SpectralError(f"{name} must be an n × k basis with 1 ≤ k ≤ n, got shape {tuple(A.shape)}")
    Q, R = torch.linalg.qr(A)
    diag = R.diagonal().abs()
    scale = float(torch.linalg.matrix_norm(A))
    if not bool(torch.isfinite(diag).all()) or float(diag.min()) <= 10 * A.shape[0] * EPS64 * scale:
        raise SpectralError(f"{name} is not of full column rank (or not finite): principal angles need "
                            "linearly independent basis vectors")
    return Q


def principal_angles(A, B):
    """Principal angles (radians, ascending) between span(A) and span(B), min(k_A, k_B) of them.

    A (n × k_A) and B (n × k_B) are orthonormal or any full-column-rank bases (orthonormalised by QR).
    Knyazev–Argentati sine/cosine method: angles below π/4 from the singular values of the residual
    (B − A AᵀB), accurate for tiny angles; larger ones from arccos of the singular values of AᵀB. Matches
    `scipy.linalg.subspace_angles` (which returns them descending). Accepts numpy arrays (returns numpy) or
    torch tensors (returns a float64 tensor on their device).
    """
    as_numpy = not isinstance(A, torch.Tensor)
    A_t = torch.as_tensor(A, dtype=torch.float64)
    B_t = torch.as_tensor(B, dtype=torch.float64, device=A_t.device)
    if A_t.ndim != 2 or B_t.ndim != 2 or A_t.shape[0] != B_t.shape[0]:
        raise SpectralError(f"bases must be 2-D with the same number of rows, got {tuple(A_t.shape)} and "
                            f"{tuple(B_t.shape)}")
    theta = angles_between_orthonormal(_orthonormal_basis(A_t, "A"), _orthonormal_basis(B_t, "B"))
    return theta.cpu().numpy() if as_numpy else theta


def angles_between_orthonormal(Qa: torch.Tensor, Qb: torch.Tensor) -> torch.Tensor:
    """`principal_angles` for bases already orthonormal (not checked): ascending radians, float64."""
    if Qa.shape[1] < Qb.shape[1]:
        Qa, Qb = Qb, Qa
    cross = Qa.mT @ Qb
    cosines = torch.linalg.svdvals(cross).clamp(-1.0, 1.0)  # descending -> angles ascending
    sines = torch.linalg.svdvals(Qb - Qa @ cross).clamp(-1.0, 1.0).flip(0)  # ascending
    small = cosines**2 >= 0.5
    theta = torch.where(small, torch.arcsin(sines), torch.arccos(cosines))
    return torch.sort(theta).values


def projection_distance(theta: torch.Tensor) -> float:
    """‖P_A − P_B‖_F = sqrt(2 Σ sin²θ_i) for equal-dimension subspaces with principal angles θ (stable for tiny θ)."""
    return math.sqrt(2.0) * float(torch.linalg.vector_norm(torch.sin(theta)))


def sigma_drift(sigma_ref: torch.Tensor, sigma_target: torch.Tensor) -> torch.Tensor:
    """(σ_t,i − σ_b,i) / σ_b,i per index; NaN where σ_b,i is zero (no relative drift is defined there)."""
    if sigma_ref.shape != sigma_target.shape:
        raise SpectralError(f"σ vectors differ in length: {sigma_ref.numel()} vs {sigma_target.numel()}")
    ref = sigma_ref.to(torch.float64)
    out = (sigma_target.to(torch.float64) - ref) / ref
    return torch.where(ref > 0, out, torch.full_like(out, math.nan))


def block_energy(delta: torch.Tensor, U_k: torch.Tensor, V_k: torch.Tensor) -> tuple[float, float]:
    """Shares of ‖ΔW‖_F² inside the block C = U_kᵀ ΔW V_k: (‖diag C‖², ‖C‖_F² − ‖diag C‖²) / ‖ΔW‖_F².

    The diagonal share is rescaling of the reference directions, the off-diagonal share rotation among them.
    A zero ΔW gives (0, 0).
    """
    total = float(torch.linalg.matrix_norm(delta) ** 2)
    if total == 0.0:
        return 0.0, 0.0
    C = U_k.mT @ delta @ V_k
    diag = float((C.diagonal() ** 2).sum())
    return diag / total, max(float((C**2).sum()) - diag, 0.0) / total


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
