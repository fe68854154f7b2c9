"""The arithmetic of turn-level PPO, as pure functions of tensors (no models, no I/O).

A batch of steps is flat: steps of one episode are consecutive and `dones[t]` is True at the last step of
each episode (solved or out of attempts). Every function here treats an episode end as terminal, so no value,
reward or advantage crosses from one episode into the next, however episodes are packed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

HISTOGRAM_BINS = 20
MIN_RETURN_VARIANCE = 1e-8  # returns that vary less than this leave the explained variance undefined


def turn_gae(
    rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and returns over packed episodes.

    `rewards`, `values`, `dones` are 1-D of equal length (one entry per attempt). With
    δ_t = r_t + γ V_{t+1} (1 - done_t) - V_t and A_t = δ_t + γλ (1 - done_t) A_{t+1}, the value after an
    episode's last step is 0 (bootstrap 0 at the end). Returns (advantages, returns = advantages + values),
    in float32 whatever the input dtype. The last step of the batch must end an episode.
    """
    if not rewards.shape == values.shape == dones.shape or rewards.dim() != 1:
        raise ValueError(f"rewards, values and dones must be 1-D of equal length, got shapes "
                         f"{tuple(rewards.shape)}, {tuple(values.shape)}, {tuple(dones.shape)}")
    if len(dones) and not bool(dones[-1]):
        raise ValueError("the last step of the batch does not end an episode: pass whole episodes only")
    rewards, values = rewards.float(), values.float()
    not_done = 1.0 - dones.float()
    advantages = torch.zeros_like(rewards)
    running = torch.zeros((), dtype=torch.float32, device=rewards.device)
    for t in range(len(rewards) - 1, -1, -1):
        next_value = values[t + 1] if t + 1 < len(values) else torch.zeros_like(running)
        delta = rewards[t] + gamma * next_value * not_done[t] - values[t]
        running = delta + gamma * lam * not_done[t] * running
        advantages[t] = running
    return advantages, advantages + values


def normalize_advantages(
    advantages: torch.Tensor, population: torch.Tensor | None = None, eps: float = 1e-8
) -> tuple[torch.Tensor, bool]:
    """(A - mean) / std, and whether the batch carries a learning signal.

    The mean and (population) std are those of `population` (default: `advantages` itself; a distributed run
    passes the advantages gathered from every process). Fewer than two values or zero spread give zeros and
    False (never NaN).
    """
    population = advantages if population is None else population
    if population.numel() < 2:
        return torch.zeros_like(advantages), False
    std = population.float().std(unbiased=False)
    if not torch.isfinite(std) or float(std) <= eps:
        return torch.zeros_like(advantages), False
    return (advantages - population.float().mean()) / (std + eps), True


def clipped_surrogate(
    logp_new: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped policy loss -mean(min(ρA, clip(ρ, 1-ε, 1+ε)A)) with ρ = exp(logp_new - logp_old).

    Returns (loss, clip fraction: the share of steps where |ρ - 1| > ε).
    """
    ratio = torch.exp(logp_new - logp_old)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * advantages
    loss = -torch.min(unclipped, clipped).mean()
    clip_frac = ((ratio - 1.0).abs() > clip).float().mean()
    return loss, clip_frac


def clipped_value_loss(
    values_new: torch.Tensor, values_old: torch.Tensor, returns: torch.Tensor, clip: float | None
) -> torch.Tensor:
    """½ mean(max((V - R)², (V_old + clip(V - V_old, -ε, ε) - R)²)); with `clip=None`, ½ mean((V - R)²)."""
    unclipped = (values_new - returns) ** 2
    if clip is None:
        return 0.5 * unclipped.mean()
    clipped_values = values_old + torch.clamp(values_new - values_old, -clip, clip)
    return 0.5 * torch.max(unclipped, (clipped_values - returns) ** 2).mean()


def gather_completion(
    logits: torch.Tensor, input_ids: torch.Tensor, prompt_lens: torch.Tensor, completion_lens: torch.Tensor,
    rows: torch.Tensor | None = None, temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token log-probabilities and entropies of completions under softmax(logits / temperature), in float32.

    Completion s lies in row `rows[s]` (default: row s) of `input_ids` (B, T): `completion_lens[s]` tokens from
    position `prompt_lens[s]`; `logits` (B, T, V) are the model's outputs on the rows. Several completions may
    share a row (the attempts of one episode's chat). Returns (token_logps, token_entropy, mask), each (S, L)
    with L the longest completion; padding positions are 0 in all three.
    """
    if rows is None:
        rows = torch.arange(len(prompt_lens), device=logits.device)
    width = int(completion_lens.max()) if completion_lens.numel() else 0
    offsets = torch.arange(width, device=logits.device)
    mask = offsets[None, :] < completion_lens[:, None]
    targets_pos = (prompt_lens[:, None] + offsets[None, :]).clamp(max=input_ids.shape[1] - 1)
    logits_pos = (targets_pos - 1).clamp(min=0)
    picked = logits[rows[:, None], logits_pos].float() / temperature
    log_probs = torch.log_softmax(picked, dim=-1)
    targets = input_ids[rows[:, None], targets_pos]
    token_logps = torch.gather(log_probs, 2, targets[..., None]).squeeze(-1) * mask
    token_entropy = -(log_probs.exp() * log_probs).sum(-1) * mask
    return token_logps, token_entropy, mask


def kl_to_reference(token_logps: torch.Tensor, ref_token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence KL(π‖π_ref) estimate: the sum over completion tokens of the k3 estimator
    exp(d) - d - 1 with d = log π_ref - log π (non-negative, unbiased under samples from π)."""
    d = (ref_token_logps - token_logps) * mask
    return ((torch.exp(d) - d - 1.0) * mask).sum(-1)


def advantage_stats(advantages: Any, bins: int = HISTOGRAM_BINS) -> dict[str, Any]:
    """Moments and histogram of a batch of advantages: mean, std (population), skewness (Fisher-Pearson,
    biased: scipy.stats.skew's default), and {"edges", "counts"} over `bins` equal bins from min to max.

    An empty batch gives NaN moments and an empty histogram; zero spread gives skewness 0.
    """
    a = np.asarray(advantages.detach().cpu() if isinstance(advantages, torch.Tensor) else advantages, dtype=np.float64)
    if a.size == 0:
        return {"mean": math.nan, "std": math.nan, "skew": math.nan, "hist": {"edges": [], "counts": []}}
    mean = float(a.mean())
    std = float(a.std())
    skew = float(((a - mean) ** 3).mean() / std**3) if std > 0 else 0.0
    counts, edges = np.histogram(a, bins=bins)
    return {"mean": mean, "std": std, "skew": skew,
            "hist": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}}


def minibatch_indices(n_steps: int, n_minibatches: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A random split of range(n_steps) into exactly `n_minibatches` non-empty, near-equal parts (PPO splits its
    episodes so).

    When there are fewer items than minibatches, permutations are repeated (so every process of a
    distributed run takes the same number of optimiser steps even with fewer items of its own).
    """
    if n_steps < 1 or n_minibatches < 1:
        raise ValueError(f"need at least one step and one minibatch, got {n_steps} steps, {n_minibatches} minibatches")
    repeats = math.ceil(n_minibatches / n_steps)
    order = torch.cat([torch.randperm(n_steps, generator=generator) for _ in range(repeats)])
    return list(torch.tensor_split(order, n_minibatches))


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> float:
    """1 − Var(returns − values) / Var(returns) (population variances): 1 when the critic predicts every return,
    0 when it does no better than the mean, negative when worse; NaN when the returns do not vary (variance
    below `MIN_RETURN_VARIANCE`, e.g. every attempt right and only a tiny KL penalty telling them apart)."""
    returns, values = returns.double(), values.double()
    spread = float(returns.var(unbiased=False)) if returns.numel() else 0.0
    if spread < MIN_RETURN_VARIANCE:
        return math.nan
    return 1.0 - float((returns - values).var(unbiased=False)) / spread


def adaptive_kl_coef(coef: float, kl: float, target: float, horizon: int, n_steps: int) -> float:
    """The KL penalty coefficient after one update (Ziegler et al. 2019, as TRL's AdaptiveKLController):
    coef · (1 + clip(kl / target − 1, −0.2, 0.2) · n_steps / horizon). It rises while the measured KL is above
    the target and falls while it is below."""
    if target <= 0 or horizon <= 0:
        raise ValueError(f"target and horizon must be > 0, got {target} and {horizon}")
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return coef * (1.0 + error * n_steps / horizon)


def shuffled(rewards: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The rewards in a random order (the control arm: the same rewards, no longer tied to the answers)."""
    return rewards[torch.randperm(len(rewards), generator=generator).to(rewards.device)]
