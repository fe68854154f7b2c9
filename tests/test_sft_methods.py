"""SFT methods that control how weights move: the rotation energy by hand and against principal angles, the
σ-only parametrization, and SFT runs with each method saving plain checkpoints that behave as promised."""

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rlheal.spectral.angles import principal_angles
from rlheal.store import Store
from rlheal.train.sft import SFTConfig, run_sft, step_folder
from rlheal.train.sft_methods import RotationPenalty, SigmaOnly, rotation_energy, top_k


def orthonormal(n: int, seed: int) -> torch.Tensor:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return torch.from_numpy(q)


def base_matrix(n=8, seed=0):
    u, v = orthonormal(n, seed), orthonormal(n, seed + 1)
    s = torch.tensor([8.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.5, 1.0], dtype=torch.float64)[:n]
    return u, s, v


@pytest.mark.parametrize("theta", [1e-3, 0.1, 0.5, 1.2])
def test_turning_a_top_vector_costs_sigma_squared_sine_squared(theta):
    u, s, v = base_matrix()
    w0 = (u * s) @ v.T
    turned = u.clone()
    turned[:, 0] = math.cos(theta) * u[:, 0] + math.sin(theta) * u[:, 5]  # u1 toward a tail vector
    w = (turned * s) @ v.T
    k = 2
    energy = rotation_energy(w - w0, u[:, :k], v[:, :k])
    assert float(energy) == pytest.approx(float(s[0]) ** 2 * math.sin(theta) ** 2, rel=1e-9)  # by hand: s1² sin²θ
    # and the spectral room's principal angle between the top-2 left subspaces is θ
    assert float(principal_angles(u[:, :k], turned[:, :k]).max()) == pytest.approx(theta, rel=1e-6)


def test_rescaling_and_moves_inside_the_top_block_cost_nothing():
    u, s, v = base_matrix()
    k = 3
    rescaled = (u * (s * torch.linspace(0.5, 2.0, 8, dtype=torch.float64))) @ v.T - (u * s) @ v.T
    inside = u[:, :k] @ torch.randn(k, k, dtype=torch.float64) @ v[:, :k].T
    assert float(rotation_energy(rescaled, u[:, :k], v[:, :k])) == pytest.approx(0.0, abs=1e-20)
    assert float(rotation_energy(inside, u[:, :k], v[:, :k])) == pytest.approx(0.0, abs=1e-20)
    general = torch.randn(8, 8, dtype=torch.float64)
    assert float(rotation_energy(general, u[:, :k], v[:, :k])) > 0


def test_top_k_is_a_fraction_or_a_count():
    assert (top_k(128, 0.2), top_k(128, 16), top_k(4, 0.01), top_k(4, 99)) == (26, 16, 1, 4)


def test_sigma_only_keeps_the_singular_vectors():
    u, s, v = base_matrix()
    w = (u * s) @ v.T
    p = SigmaOnly(w)
    assert torch.allclose(p.right_inverse(w), s, atol=1e-10) and torch.allclose(p(p.right_inverse(w)), w, atol=1e-10)
    doubled = p(2 * p.right_inverse(w))
    assert torch.allclose(doubled, 2 * w, atol=1e-10)


def test_the_penalty_is_zero_at_the_base_and_has_gradients(make_tiny_checkpoint, tmp_path):
    from rlheal.models.checkpoint import load_model

    model, _ = load_model(make_tiny_checkpoint(tmp_path / "base"))
    penalty = RotationPenalty(model, ["q", "v"], k=0.25, weight=2.0)
    assert len(penalty.terms) == 2 * model.config.num_hidden_layers
    assert float(penalty().detach()) == 0.0
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    value = penalty()
    value.backward()
    assert float(value) > 0 and model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert model.model.layers[0].mlp.up_proj.weight.grad is None  # not a chosen matrix


def tiny(start, **changes) -> SFTConfig:
    settings = dict(model=str(start), tasks=["det"], n_train=24, steps=6, batch_size=4, lr=1e-2, warmup_steps=0,
                    schedule=[0, 6], loss_eval_n=3, max_length=256)
    return SFTConfig(**{**settings, **changes})


def mean_top_angle(base: dict, trained: dict, k: float = 0.25) -> float:
    angles = []
    for name, w0 in base.items():
        if name.endswith(("q_proj.weight", "v_proj.weight")):
            u0 = torch.linalg.svd(w0.double(), full_matrices=False)[0]
            u1 = torch.linalg.svd(trained[name].double(), full_matrices=False)[0]
            rank = top_k(min(w0.shape), k)
            angles.append(float(principal_angles(u0[:, :rank], u1[:, :rank]).mean()))
    return sum(angles) / len(angles)


@pytest.mark.slow
def test_each_method_trains_and_saves_plain_checkpoints(make_tiny_checkpoint, tmp_path):
    from rlheal.models.checkpoint import load_model

    start = make_tiny_checkpoint(tmp_path / "base")
    base = load_file(start / "model.safetensors")
    trained = {}
    for method, extra in (("full", {}), ("lora", {"lora_rank": 2}), ("sigma_only", {}),
                          ("rotation_penalty", {"penalty_weight": 100.0, "penalty_k": 0.25})):
        out = tmp_path / method
        with Store(out) as store:
            run_sft(tiny(start, method=method, method_modules=["q", "v"], **extra), out, store, progress=False)
        load_model(step_folder(out, 6))  # a plain HF model every stage can read
        trained[method] = load_file(step_folder(out, 6) / "model.safetensors")
        assert set(trained[method]) == set(base)  # no adapter or parametrization keys
    chosen = [n for n in base if n.endswith(("q_proj.weight", "v_proj.weight"))]
    others = [n for n in base if n not in chosen]
    for method in ("lora", "sigma_only"):  # only the chosen matrices move
        assert all(torch.equal(trained[method][n], base[n]) for n in others), method
        assert any(not torch.equal(trained[method][n], base[n]) for n in chosen), method
    for name in chosen:  # σ-only: the trained matrix is diagonal in the base's singular basis (its vectors stay)
        u0, _, vh0 = torch.linalg.svd(base[name].double(), full_matrices=False)
        inner = u0.T @ trained["sigma_only"][name].double() @ vh0.T
        assert (inner - torch.diag(torch.diagonal(inner))).norm() < 1e-5 * inner.norm()
    assert mean_top_angle(base, trained["rotation_penalty"]) < mean_top_angle(base, trained["full"])


def test_method_settings_stay_out_of_the_default_hash():
    plain, lora = SFTConfig(), SFTConfig(method="lora")
    assert "method" not in plain.model_dump() and "lora_rank" not in plain.model_dump()
    assert lora.model_dump()["method"] == "lora" and lora.model_dump()["lora_rank"] == 8
    with pytest.raises(ValueError, match="method_modules"):
        SFTConfig(method_modules=["qq"])
