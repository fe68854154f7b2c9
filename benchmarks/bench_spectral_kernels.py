"""The kernel timings and principal-angle accuracy behind docs/BENCHMARKS.md ("Spectral", CPU).

  python benchmarks/bench_spectral_kernels.py kernels --threads 1   # best-of-5 CPU ms per matrix
  python benchmarks/bench_spectral_kernels.py angles --draws 1500   # worst errors on planted angles

kernels: at the CPU benchmark's shapes (Llama, hidden 768), the naive way's float32 SVD against our float64
decomposition (`decompose`, gram64, top/tail 0.2) and its parts: the Gram product, `eigh` (float64 and
float32), `eigvalsh`, the long side's product; and the parts of a partial float64 eigensolver that would
compute only the top and tail 20 % of the eigenvectors (LAPACK through scipy: tridiagonal reduction `dsytrd`,
all eigenvalues by `dsterf`, the chosen eigenvectors of the tridiagonal by MRRR `dstemr`, their back-transform
by `dormqr`).
angles: random sets of planted angles between 1e-14 and π/2 (every third set with a cluster of tiny angles,
every fifth with angles within 1e-7 of π/2), hidden behind a random rotation: the worst error of
`principal_angles`, of square roots of the eigenvalues of RᵀR and CᵀC, and of `scipy.linalg.subspace_angles`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import scipy.linalg as sla
import scipy.linalg.lapack as lapack
import torch

sys.path.insert(0, str(Path(__file__).parent))
from spectral_checkpoints import LLAMA_768, layer_shapes, reference_matrix  # noqa: E402

from rlheal.spectral import decompose, principal_angles, resolve_k  # noqa: E402


def _cpu_ms(fn, repeats: int = 5) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return round(1000 * best, 1)


def _partial_eigh(G: np.ndarray, k: int) -> dict[str, float]:
    """CPU ms of each part of a float64 eigensolver that keeps only the k largest and k smallest eigenvectors."""
    r = G.shape[0]
    c, d, e, tau, _ = lapack.dsytrd(G, lower=1)
    top_tail = lambda: np.concatenate([  # noqa: E731
        sla.eigh_tridiagonal(d, e, select="i", select_range=(r - k, r - 1))[1],
        sla.eigh_tridiagonal(d, e, select="i", select_range=(0, k - 1))[1]], axis=1)
    Z = top_tail()
    parts = {"sytrd": _cpu_ms(lambda: lapack.dsytrd(G, lower=1)),
             "sterf": _cpu_ms(lambda: lapack.dsterf(d.copy(), e.copy())),
             "stemr_top_tail": _cpu_ms(top_tail),
             "ormqr": _cpu_ms(lambda: lapack.dormqr("L", "N", c[1:, : r - 1], tau[: r - 1], Z[1:], 64 * Z.shape[1]))}
    return {**parts, "total": round(sum(parts.values()), 1)}


def kernels() -> dict:
    out = {}
    shapes = {mod: shape for mod, shape in layer_shapes(LLAMA_768["hidden"], LLAMA_768["intermediate"], LLAMA_768["kv"])}
    for mod in ("q", "k", "gate", "down"):
        m, n = shapes[mod]
        W = reference_matrix(m, n, 0, "cpu").double()
        A = W if m <= n else W.mT
        G = A @ A.mT
        _, Q = torch.linalg.eigh(G)
        k = resolve_k(0.2, min(m, n))
        out[f"{mod} {m}x{n}"] = {
            "svd32": _cpu_ms(lambda: torch.linalg.svd(W.float(), full_matrices=False)),  # noqa: B023
            "decompose_gram64": _cpu_ms(lambda: decompose(W, "gram64", top=k, tail=k)),  # noqa: B023
            "gram_product": _cpu_ms(lambda: A @ A.mT),  # noqa: B023
            "eigh64": _cpu_ms(lambda: torch.linalg.eigh(G)),  # noqa: B023
            "eigvalsh64": _cpu_ms(lambda: torch.linalg.eigvalsh(G)),  # noqa: B023
            "eigh32": _cpu_ms(lambda: torch.linalg.eigh(G.float())),  # noqa: B023
            "long_side_product": _cpu_ms(lambda: A.mT @ Q),  # noqa: B023
            "partial_eigh64": _partial_eigh(G.numpy(), k),
        }
    return out


def _planted(thetas: list[float], seed: int) -> tuple[np.ndarray, np.ndarray]:
    k, n = len(thetas), 2 * len(thetas) + 5
    A, B = np.eye(n)[:, :k], np.zeros((n, k))
    for i, t in enumerate(thetas):
        B[i, i], B[k + i, i] = math.cos(t), math.sin(t)
    Q = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))[0]
    return Q @ A, Q @ B


def _eigenvalue_roots(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Sines and cosines as square roots of the eigenvalues of RᵀR and CᵀC, chosen per angle."""
    C = A.T @ B
    R = B - A @ C
    sines = np.sqrt(np.clip(np.linalg.eigvalsh(R.T @ R), 0, 1))
    cosines = np.sqrt(np.clip(np.linalg.eigvalsh(C.T @ C), 0, 1))[::-1]
    return np.sort(np.where(sines < cosines, np.arcsin(sines), np.arccos(cosines)))


def angles(draws: int) -> dict:
    rng = np.random.default_rng(11)
    worst = {"principal_angles": 0.0, "eigenvalue_roots": 0.0, "scipy_subspace_angles": 0.0}
    for draw in range(draws):
        k = int(rng.integers(1, 40))
        thetas = list(10 ** rng.uniform(-14, math.log10(math.pi / 2), k))
        if draw % 3 == 0:
            thetas[: k // 2] = list(10 ** rng.uniform(-12, -8, k // 2))
        if draw % 5 == 0 and k // 3:
            thetas[-(k // 3):] = [math.pi / 2 - x for x in 10 ** rng.uniform(-12, -7, k // 3)]
        A, B = _planted(thetas, draw)
        want = np.sort(thetas)
        for name, got in (("principal_angles", principal_angles(A, B)), ("eigenvalue_roots", _eigenvalue_roots(A, B)),
                          ("scipy_subspace_angles", np.sort(sla.subspace_angles(A, B)))):
            worst[name] = max(worst[name], float(np.abs(got - want).max()))
    return {"draws": draws, "worst_abs_error_rad": {k: float(f"{v:.2g}") for k, v in worst.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["kernels", "angles"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--draws", type=int, default=1500)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps(kernels() if args.what == "kernels" else angles(args.draws), indent=1))


if __name__ == "__main__":
    main()
