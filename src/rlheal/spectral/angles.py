"""Principal angles between subspaces from products and small k×k symmetric eigensolves (no SVD of tall matrices).

For orthonormal bases Qa (n × ka) and Qb (n × kb), kb ≤ ka: C = QaᵀQb (ka × kb) and R = Qb − Qa C (n × kb,
the part of Qb outside span(Qa)). The eigenvectors Z of CᵀC (kb × kb) are the principal vectors in Qb's
coordinates; they diagonalise RᵀR = I − CᵀC too, so the columns of C Z and R Z have the cosines and the
sines as norms. Each angle is atan2(sine, cosine): the sine decides small angles and the cosine large ones,
as in Knyazev–Argentati, without choosing. The norms are accurate to second order in Z's error, except where
eigenvalues of CᵀC agree to working precision: several angles below ~1e-7 rad, or within ~1e-7 of π/2.
Those sines (cosines), all below TINY, are recomputed from just their columns of R Z (C Z), made orthogonal
to the other columns first (as exact principal directions are: this removes the ~ε/TINY that Z's error
mixed in), by the same eigensolve on their own scale, recursively; so tiny angles are exact to ~1e-15 rad
even next to large ones. The projection distance ‖Pa − Pb‖_F comes from ‖R‖_F (no cancellation).
"""

from __future__ import annotations

import torch

from rlheal.spectral.linalg import EPS64, SpectralError, column_norms

# Sines (cosines) below this are recomputed on their own scale; each level shrinks the scale by TINY.
TINY = 1e-3
MAX_LEVELS = 6  # TINY**6 = 1e-18: below that, values are already exact to well under 1e-16


def small_singular_values(X: torch.Tensor, level: int = 0) -> torch.Tensor:
    """Singular values (ascending) of X (n × t, nearly orthogonal columns), each accurate on its own scale.

    From the eigenvectors Z of XᵀX, as the column norms of X Z; the ones below TINY times the largest are
    recomputed from their own columns (one host sync per level that has two or more of them).
    """
    _, Z = torch.linalg.eigh(X.mT @ X)
    XZ = X @ Z
    values = column_norms(XZ)
    tiny = values < TINY * values.max()
    if level + 1 < MAX_LEVELS and int(tiny.sum()) >= 2:
        values[tiny] = small_singular_values(XZ[:, tiny], level + 1)
    return torch.sort(values).values


def _refine(theta: torch.Tensor, values: torch.Tensor, columns: torch.Tensor, counts: list[int], to_angle) -> None:
    """Replace, in place, the angles whose sine (cosine) `values` are below TINY where `counts` says two or
    more are.

    Their columns are first made orthogonal to the other columns (the other principal directions): exactly
    so in exact arithmetic, and what Z's error had mixed in (~ε/TINY) goes.
    """
    for b, count in enumerate(counts):
        if count >= 2:
            chosen = values[b] < TINY
            tiny, others = columns[b][:, chosen], columns[b][:, ~chosen] / values[b][~chosen]
            tiny = tiny - others @ (others.mT @ tiny)
            theta[b, chosen] = to_angle(small_singular_values(tiny).clamp(max=1.0))


def subspace_angles(Qa: torch.Tensor, Qb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(angles, projection distance) between span(Qa) and span(Qb) for orthonormal bases (not checked).

    Qa (..., n, ka), Qb (..., n, kb), batched over leading dimensions: angles (..., min(ka, kb)) ascending in
    radians, and ‖Pa − Pb‖_F (...) = sqrt(|ka − kb| + 2‖R‖_F²). Float64 in, float64 out, on their device; one
    host sync per call (to see whether some angles need the tiny-angle recomputation).
    """
    if Qa.shape[-1] < Qb.shape[-1]:
        Qa, Qb = Qb, Qa
    batch = Qa.shape[:-2]
    Qa, Qb = Qa.reshape(-1, *Qa.shape[-2:]), Qb.reshape(-1, *Qb.shape[-2:])
    C = Qa.mT @ Qb
    R = Qb - Qa @ C
    _, Z = torch.linalg.eigh(C.mT @ C)
    CZ, RZ = C @ Z, R @ Z
    cosines, sines = column_norms(CZ), column_norms(RZ)
    theta = torch.atan2(sines, cosines)
    sine_counts, cosine_counts = torch.stack([sines < TINY, cosines < TINY]).sum(-1).tolist()
    _refine(theta, sines, RZ, sine_counts, torch.arcsin)
    _refine(theta, cosines, CZ, cosine_counts, torch.arccos)
    extra = Qa.shape[-1] - Qb.shape[-1]
    proj = torch.sqrt(extra + 2 * (R * R).sum((-2, -1)))
    return torch.sort(theta).values.reshape(*batch, -1), proj.reshape(batch)


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

    A (n × k_A) and B (n × k_B) are any full-column-rank bases (orthonormalised by QR first); see the module
    docstring for the method. Matches `scipy.linalg.subspace_angles` (which returns them descending), and
    stays exact for tiny angles next to large ones. Numpy arrays in → numpy out; torch tensors in → a float64
    tensor on their device.
    """
    as_numpy = not isinstance(A, torch.Tensor)
    A_t = torch.as_tensor(A, dtype=torch.float64)
    B_t = torch.as_tensor(B, dtype=torch.float64, device=A_t.device)
    if A_t.ndim != 2 or B_t.ndim != 2 or A_t.shape[0] != B_t.shape[0]:
        raise SpectralError(f"bases must be 2-D with the same number of rows, got {tuple(A_t.shape)} and "
                            f"{tuple(B_t.shape)}")
    theta, _ = subspace_angles(_orthonormal_basis(A_t, "A"), _orthonormal_basis(B_t, "B"))
    return theta.cpu().numpy() if as_numpy else theta

