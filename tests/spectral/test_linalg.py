"""Linear algebra core against numpy/scipy references and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg as sla
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlheal.spectral import SpectralError, decompose, principal_angles, resolve_k, subspace_angles
from rlheal.spectral.linalg import angle_error_bound, block_energy, sigma_drift


def rotated_pair(n: int, thetas: list[float], seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Bases A = [e_1..e_k] and B whose i-th column is cos θ_i e_i + sin θ_i e_{k+i}: angles exactly θ."""
    k = len(thetas)
    A = np.eye(n)[:, :k]
    B = np.zeros((n, k))
    for i, t in enumerate(thetas):
        B[i, i], B[k + i, i] = math.cos(t), math.sin(t)
    # hide the coordinate structure behind a random orthogonal change of basis
    Q = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))[0]
    return Q @ A, Q @ B


def test_principal_angles_match_scipy_on_random_bases():
    rng = np.random.default_rng(0)
    for n, ka, kb in [(20, 5, 5), (30, 4, 9), (30, 9, 4), (12, 12, 3)]:
        A, B = rng.standard_normal((n, ka)), rng.standard_normal((n, kb))
        got = principal_angles(A, B)
        ref = np.sort(sla.subspace_angles(A, B))
        assert got.shape == (min(ka, kb),)
        np.testing.assert_allclose(got, ref, atol=1e-13)
        assert np.all(np.diff(got) >= 0)


def test_tiny_angles_near_1e_7_are_exact():
    small = [1e-7, 3e-7, 2e-6]
    A, B = rotated_pair(40, small)
    np.testing.assert_allclose(principal_angles(A, B), small, rtol=1e-8)
    np.testing.assert_allclose(principal_angles(A, B), np.sort(sla.subspace_angles(A, B)), rtol=1e-8)
    # mixed tiny and large angles: exact here (scipy 1.17 takes arccos for some tiny ones in this case)
    thetas = [1e-7, 3e-7, 2e-6, 0.5, 1.2]
    A, B = rotated_pair(40, thetas)
    got = principal_angles(A, B)
    np.testing.assert_allclose(got, thetas, rtol=1e-8)


def test_equal_subspaces_give_zero_angles_also_for_non_orthonormal_bases():
    rng = np.random.default_rng(2)
    A = np.linalg.qr(rng.standard_normal((25, 6)))[0]
    assert principal_angles(A, A).max() < 1e-14
    mixed = A @ rng.standard_normal((6, 6))  # same span, not orthonormal
    assert principal_angles(A, mixed).max() < 1e-13


def test_orthogonal_subspaces_give_right_angles():
    A, B = np.eye(6)[:, :2], np.eye(6)[:, 2:4]
    np.testing.assert_allclose(principal_angles(A, B), [math.pi / 2] * 2, atol=1e-15)


def test_principal_angles_reject_rank_deficient_or_mismatched_bases():
    A = np.ones((10, 2))
    with pytest.raises(SpectralError, match="full column rank"):
        principal_angles(A, np.eye(10)[:, :2])
    with pytest.raises(SpectralError, match="same number of rows"):
        principal_angles(np.eye(10)[:, :2], np.eye(9)[:, :2])


def test_principal_angles_torch_in_torch_out():
    A, B = rotated_pair(10, [1e-3, 0.2])
    out = principal_angles(torch.tensor(A), torch.tensor(B))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), [1e-3, 0.2], rtol=1e-10)


@settings(max_examples=30, deadline=None)
@given(st.integers(3, 8), st.integers(1, 4), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_angles_are_symmetric_and_in_range(n, ka, kb, seed):
    rng = np.random.default_rng(seed)
    ka, kb = min(ka, n), min(kb, n)
    A, B = rng.standard_normal((n, ka)), rng.standard_normal((n, kb))
    ab, ba = principal_angles(A, B), principal_angles(B, A)
    np.testing.assert_allclose(ab, ba, atol=1e-12)
    assert np.all(ab >= 0) and np.all(ab <= math.pi / 2 + 1e-15)
    # scipy mixes in arccos for tiny angles when large ones are present: it is right to ~sqrt(eps) only
    np.testing.assert_allclose(ab, np.sort(sla.subspace_angles(A, B)), atol=1e-7)
    # subspaces whose dimensions add up to more than n intersect: that many angles are exactly zero
    shared = ka + kb - n
    if shared > 0:
        assert ab[:shared].max() < 1e-14


def realistic(m: int, n: int, seed: int = 0) -> np.ndarray:
    """Gaussian bulk plus a decaying low-rank part, like a trained weight matrix."""
    rng = np.random.default_rng(seed)
    low = rng.standard_normal((m, 6)) @ np.diag(np.geomspace(3, 0.3, 6)) @ rng.standard_normal((6, n))
    return rng.standard_normal((m, n)) / math.sqrt(n) + low / math.sqrt(n)


@pytest.mark.parametrize("method", ["gram64", "svd64", "svd32"])
@pytest.mark.parametrize("shape", [(24, 60), (60, 24), (30, 30)])
def test_decompose_matches_numpy_svd(method, shape):
    W = realistic(*shape)
    U, s, Vt = np.linalg.svd(W, full_matrices=False)
    dec = decompose(torch.tensor(W), method, top=5, tail=4)
    tol = 1e-4 if method == "svd32" else 1e-11
    np.testing.assert_allclose(dec.sigma.numpy(), s, rtol=tol)
    assert dec.U.shape == (shape[0], 9) and dec.V.shape == (shape[1], 9)
    Ut, Vt_ = dec.top_vectors(5)
    Ul, Vl = dec.tail_vectors(4)
    assert principal_angles(Ut.numpy(), U[:, :5]).max() < tol * 10
    assert principal_angles(Vt_.numpy(), Vt[:5].T).max() < tol * 10
    assert principal_angles(Ul.numpy(), U[:, -4:]).max() < tol * 10
    assert principal_angles(Vl.numpy(), Vt[-4:].T).max() < tol * 10
    # each stored pair is a singular triplet: W v = σ u
    idx = torch.tensor([0, 1, 27 if min(shape) > 27 else min(shape) - 1])
    u, v = dec.vectors(idx)
    np.testing.assert_allclose(W @ v.numpy(), u.numpy() * dec.sigma[idx].numpy(), atol=tol * 10)


def test_decompose_keeps_everything_when_top_and_tail_cover_the_rank():
    dec = decompose(torch.tensor(realistic(8, 20)), top=5, tail=5)
    assert dec.complete and dec.U.shape == (8, 8) and dec.V.shape == (20, 8)


def test_gram_falls_back_to_svd_on_rank_deficient_matrices():
    rng = np.random.default_rng(3)
    W = rng.standard_normal((10, 3)) @ rng.standard_normal((3, 20))
    dec = decompose(torch.tensor(W), "gram64")
    assert dec.method == "svd64(fallback)"
    np.testing.assert_allclose(dec.sigma.numpy(), np.linalg.svd(W, compute_uv=False), atol=1e-12)


def test_resolve_k():
    assert resolve_k(0.2, 100) == 20
    assert resolve_k(0.001, 100) == 1  # at least one direction
    assert resolve_k(1.0, 100) == 100  # the float 1.0 is the whole rank
    assert resolve_k(1, 100) == 1  # the int 1 is one direction
    assert resolve_k(7, 100) == 7
    assert resolve_k(0.125, 4) == 0 + 1 and resolve_k(0.375, 4) == 2  # round half to even: 1.5 -> 2
    with pytest.warns(UserWarning, match="layers.0.q.*exceeds the rank 16"):
        assert resolve_k(768, 16, "layers.0.q") == 16
    for bad in (0, -3, 1.5, math.nan, -0.2, "0.2", True):
        with pytest.raises(SpectralError):
            resolve_k(bad, 16)
    assert resolve_k(0, 16, allow_zero=True) == 0


def test_sigma_drift_by_hand():
    drift = sigma_drift(torch.tensor([4.0, 2.0, 0.0]), torch.tensor([5.0, 1.0, 1.0]))
    np.testing.assert_allclose(drift[:2].numpy(), [0.25, -0.5])
    assert math.isnan(float(drift[2]))


def test_block_energy_by_hand_for_nested_blocks():
    rng = np.random.default_rng(4)
    U = np.linalg.qr(rng.standard_normal((7, 7)))[0]
    V = np.linalg.qr(rng.standard_normal((5, 5)))[0]
    C = np.zeros((7, 5))
    C[0, 0], C[1, 1], C[0, 1], C[4, 3] = 3.0, 1.0, 2.0, 5.0  # top-1: diag 3; top-2: diag 3,1, off 2; top-5: +5 off
    delta = U @ C @ V.T
    shares = block_energy(torch.tensor(delta), torch.tensor(U), torch.tensor(V), [2, 1, 5])
    total = 9 + 1 + 4 + 25
    np.testing.assert_allclose(shares.numpy(), np.array([[10, 4], [9, 0], [10, 29]]) / total, atol=1e-14)
    zero = block_energy(torch.zeros(7, 5, dtype=torch.float64), torch.tensor(U), torch.tensor(V), [2])
    assert zero.tolist() == [[0.0, 0.0]]


@pytest.mark.parametrize("kb", [3, 2])
def test_projection_distance_matches_the_projectors(kb):
    A, B = rotated_pair(12, [1e-6, 0.3, 1.0])
    _, proj = subspace_angles(torch.tensor(A), torch.tensor(B[:, :kb]))
    direct = np.linalg.norm(A @ A.T - B[:, :kb] @ B[:, :kb].T)
    assert float(proj) == pytest.approx(direct, rel=1e-12)


# (known angles, what makes them hard)
KNOWN_ANGLES = [
    ([0.0, 3e-11, 1e-10, 1e-9, 1.1e-9, 2e-8, 1e-6, 1e-3, 0.3, 1.0, 1.5], "tiny cluster beside large angles"),
    ([0.2, math.pi / 2 - 1e-9, math.pi / 2 - 2e-9, math.pi / 2 - 5e-10, math.pi / 2, 1.2], "cluster at π/2"),
    ([1e-12, 2e-12, 5e-12, 1e-11, 3e-11], "all tiny"),
    ([9.99e-4, 1e-3, 1.001e-3, 5e-4, 1e-12, 2e-12, 0.7], "around the recomputation threshold"),
]


@pytest.mark.parametrize("thetas,why", KNOWN_ANGLES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_known_angles_are_exact_to_1e_12_rad(thetas, why, seed):
    A, B = rotated_pair(60, thetas, seed)
    np.testing.assert_allclose(principal_angles(A, B), np.sort(thetas), rtol=0, atol=1e-12, err_msg=why)


@pytest.mark.parametrize("seed", range(6))
def test_tiny_angles_beside_angles_just_above_the_recomputation_threshold(seed):
    # without projecting the other principal directions out, ~ε/1e-3 ≈ 2e-13 rad leaks into the tiny ones
    thetas = [2.3e-14, 2e-12, 9.7e-12, 1.1e-7, 3.6e-4, 1.07e-3, 1.2e-3, 1.5e-3, 8.7e-3, 0.064, 1.5707963]
    A, B = rotated_pair(30, thetas, seed)
    np.testing.assert_allclose(principal_angles(A, B), np.sort(thetas), rtol=0, atol=1e-14)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-14, math.log10(math.pi / 2)), min_size=1, max_size=12), st.integers(0, 2**31 - 1))
def test_planted_angles_over_fourteen_decades_are_exact(log_thetas, seed):
    thetas = [10.0**x for x in log_thetas]
    A, B = rotated_pair(2 * len(thetas) + 3, thetas, seed)
    np.testing.assert_allclose(principal_angles(A, B), np.sort(thetas), rtol=0, atol=1e-12)


def test_batched_subspace_angles_equal_one_at_a_time():
    pairs = [rotated_pair(30, [1e-9, 2e-9, 0.4, 1.3], seed) for seed in range(3)]
    Qa = torch.stack([torch.tensor(A) for A, _ in pairs])
    Qb = torch.stack([torch.tensor(B) for _, B in pairs])
    theta, proj = subspace_angles(Qa, Qb)
    assert theta.shape == (3, 4) and proj.shape == (3,)
    for i, (A, B) in enumerate(pairs):
        one, one_proj = subspace_angles(torch.tensor(A), torch.tensor(B))
        torch.testing.assert_close(theta[i], one, rtol=0, atol=1e-15)
        assert float(proj[i]) == pytest.approx(float(one_proj), rel=1e-14)


def test_angle_error_bound():
    sigma = torch.tensor([4.0, 2.0, 1.0])
    assert angle_error_bound(sigma, 1, "svd64") == pytest.approx(2.220446e-16 * 4 / 2, rel=1e-5)
    assert angle_error_bound(sigma, 1, "gram64") == pytest.approx(2.220446e-16 * 16 / 12, rel=1e-5)
    assert angle_error_bound(sigma, 3, "svd64") == 0.0
    assert angle_error_bound(torch.tensor([2.0, 2.0]), 1, "svd64") == math.inf
