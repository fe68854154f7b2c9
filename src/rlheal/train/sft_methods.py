"""SFT variants that decide how the weights may move (`SFTConfig.method`), for the question whether controlling
the rotation of singular vectors keeps OOD ability:

- `full`: every weight trains (plain SFT).
- `lora`: low-rank adapters (peft) on the chosen matrices; checkpoints are saved merged, as plain HF models.
- `rotation_penalty`: full SFT plus `penalty_weight` × Σ_W rotation(W − W₀), where rotation(ΔW) is the energy of
  ΔW that turns the base's top-k singular subspaces: ‖(I − UₖUₖᵀ) ΔW Vₖ‖² + ‖Uₖᵀ ΔW (I − VₖVₖᵀ)‖² (the cross
  blocks of ΔW in W₀'s singular basis; zero for any change of the singular values or inside the top-k block).
  Uₖ, Vₖ and W₀ are computed once, on the model's device.
- `sigma_only`: only singular values train: each chosen matrix becomes U₀ diag(s) V₀ᵀ with the base's singular
  vectors frozen and s trainable; every other weight is frozen.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

METHODS: tuple[str, ...] = ("full", "lora", "rotation_penalty", "sigma_only")
PROJECTIONS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj", "up": "up_proj",
               "down": "down_proj"}


def rotation_energy(delta: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """‖(I − UUᵀ) Δ V‖² + ‖Uᵀ Δ (I − VVᵀ)‖² for orthonormal columns U (m×k) and V (n×k): the part of Δ that
    rotates span(U) and span(V) (to first order, sin² of the principal angles times the singular values²)."""
    left = delta @ v
    right = u.T @ delta
    return (left - u @ (u.T @ left)).square().sum() + (right - (right @ v) @ v.T).square().sum()


def chosen_linears(model: nn.Module, modules: list[str]) -> dict[str, nn.Linear]:
    """The decoder projections of `modules` (q, k, v, o, gate, up, down) by their module name."""
    suffixes = tuple(f".{PROJECTIONS[m]}" for m in modules)
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, nn.Linear) and name.endswith(suffixes)}


def top_k(rank: int, k: float) -> int:
    """A fraction of the rank (k ≤ 1) or a count (k > 1), at least 1 and at most the rank."""
    return max(1, min(rank, round(k * rank) if k <= 1 else int(k)))


class RotationPenalty:
    """`weight` × Σ rotation_energy(W − W₀, Uₖ, Vₖ) over the chosen matrices, with W₀'s top-k singular vectors
    computed once (float64 SVD, kept in the weights' dtype on their device)."""

    def __init__(self, model: nn.Module, modules: list[str], k: float, weight: float) -> None:
        self.weight = weight
        self.terms: list[tuple[nn.Linear, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for linear in chosen_linears(model, modules).values():
            w0 = linear.weight.detach()
            u, _, vh = torch.linalg.svd(w0.double(), full_matrices=False)
            rank = top_k(min(w0.shape), k)
            self.terms.append((linear, w0.clone(), u[:, :rank].to(w0.dtype), vh[:rank].T.to(w0.dtype)))

    def __call__(self) -> torch.Tensor:
        total = sum(rotation_energy(linear.weight - w0, u, v) for linear, w0, u, v in self.terms)
        return self.weight * total


class SigmaOnly(nn.Module):
    """A weight parametrized as U diag(s) Vᵀ with U, V frozen: `right_inverse` maps a weight to its s."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        u, _, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
        self.register_buffer("u", u.to(weight.dtype))
        self.register_buffer("vh", vh.to(weight.dtype))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return (self.u * s) @ self.vh

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.einsum("mk,mn,kn->k", self.u, weight, self.vh)


def prepare(model: nn.Module, cfg: Any) -> tuple[nn.Module, RotationPenalty | None]:
    """The model to train under `cfg.method` (an SFTConfig), and the penalty to add to the loss (or None)."""
    modules = list(cfg.method_modules)
    if cfg.method == "lora":
        from peft import LoraConfig, get_peft_model

        targets = sorted({PROJECTIONS[m] for m in modules})
        return get_peft_model(model, LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                                target_modules=targets)), None
    if cfg.method == "sigma_only":
        from torch.nn.utils import parametrize

        model.requires_grad_(False)
        for linear in chosen_linears(model, modules).values():
            parametrize.register_parametrization(linear, "weight", SigmaOnly(linear.weight), unsafe=True)
            linear.parametrizations.weight.original.requires_grad_(True)
        return model, None
    if cfg.method == "rotation_penalty":
        return model, RotationPenalty(model, modules, cfg.penalty_k, cfg.penalty_weight)
    return model, None


def plain_weights(model: nn.Module, method: str) -> tuple[nn.Module, dict[str, torch.Tensor] | None]:
    """What to save as a plain Hugging Face model: (model, state dict or None for the model's own). LoRA is merged
    on a copy; σ-only matrices are multiplied out into a state dict of the ordinary names (the parametrized model
    keeps training: its generated classes are shared with any copy, so none is removed)."""
    if method == "lora":
        return copy.deepcopy(model).merge_and_unload(), None
    if method == "sigma_only":
        from torch.nn.utils import parametrize

        state = {k: v for k, v in model.state_dict().items() if ".parametrizations." not in k}
        for name, module in model.named_modules():
            if parametrize.is_parametrized(module, "weight"):
                state[f"{name}.weight"] = module.weight.detach().clone()
        return model, state
    return model, None
