"""The arithmetic of turn-level PPO against hand-computed values and independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlheal.train.rl_math import (
    adaptive_kl_coef,
    advantage_stats,
    clipped_surrogate,
    clipped_value_loss,
    explained_variance,
    gather_completion,
    kl_to_reference,
    minibatch_indices,
    normalize_advantages,
    shuffled,
    turn_gae,
)


def t(xs, dtype=torch.float32):
    return torch.tensor(xs, dtype=dtype)


def reference_gae(episodes, gamma, lam):
    """A_t = Σ_l (γλ)^l δ_{t+l} within one episode (direct sums, float64), for a list of (rewards, values)."""
    out = []
    for rewards, values in episodes:
        n = len(rewards)
        nxt = list(values[1:]) + [0.0]
        deltas = [rewards[i] + gamma * nxt[i] - values[i] for i in range(n)]
        out.extend(sum((gamma * lam) ** (j - i) * deltas[j] for j in range(i, n)) for i in range(n))
    return np.array(out)


def test_gae_hand_computed_two_attempts():
    # δ1 = 5 - 2 = 3 → A1 = 3; δ0 = -1 + 0.9·2 - 0.5 = 0.3 → A0 = 0.3 + 0.9·0.95·3 = 2.865
    adv, ret = turn_gae(t([-1.0, 5.0]), t([0.5, 2.0]), t([0, 1], torch.bool), gamma=0.9, lam=0.95)
    assert adv.tolist() == pytest.approx([2.865, 3.0])
    assert ret.tolist() == pytest.approx([3.365, 5.0])


def test_gae_does_not_leak_across_packed_episodes():
    # The second episode has a large value and reward; a naive GAE without the done mask would pull the
    # first episode's last advantage towards it (δ = 5 + 0.9·10 - 2 instead of 5 - 2).
    rewards, values = t([-1.0, 5.0, 7.0]), t([0.5, 2.0, 10.0])
    dones = t([0, 1, 1], torch.bool)
    adv, _ = turn_gae(rewards, values, dones, gamma=0.9, lam=0.95)
    assert adv.tolist() == pytest.approx([2.865, 3.0, -3.0])
    naive, _ = turn_gae(rewards, values, t([0, 0, 1], torch.bool), gamma=0.9, lam=0.95)
    assert naive[1].item() != pytest.approx(3.0)  # the test would catch a leak


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.tuples(st.floats(-5, 5), st.floats(-5, 5)), min_size=1, max_size=5), min_size=1, max_size=5),
    st.floats(0.0, 1.0),
    st.floats(0.0, 1.0),
)
def test_gae_matches_direct_sums_per_episode(episodes, gamma, lam):
    eps = [([r for r, _ in e], [v for _, v in e]) for e in episodes]
    rewards = t([r for rs, _ in eps for r in rs])
    values = t([v for _, vs in eps for v in vs])
    dones = t([i == len(rs) - 1 for rs, _ in eps for i in range(len(rs))], torch.bool)
    adv, ret = turn_gae(rewards, values, dones, gamma, lam)
    np.testing.assert_allclose(adv.numpy(), reference_gae(eps, gamma, lam), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ret.numpy(), adv.numpy() + values.numpy(), rtol=1e-6, atol=1e-6)


def test_gae_rejects_a_cut_episode_and_bad_shapes():
    with pytest.raises(ValueError, match="whole episodes"):
        turn_gae(t([1.0, 2.0]), t([0.0, 0.0]), t([1, 0], torch.bool), 0.9, 0.95)
    with pytest.raises(ValueError, match="equal length"):
        turn_gae(t([1.0]), t([0.0, 0.0]), t([1, 1], torch.bool), 0.9, 0.95)


def test_clipped_surrogate_hand_computed():
    # ρ = [1.5, 0.5, 1.05], A = [1, 1, -2], ε = 0.2: min terms [1.2, 0.5, -2.1] → loss = -(-0.4/3)
    logp_new = torch.log(t([1.5, 0.5, 1.05]))
    loss, clip_frac = clipped_surrogate(logp_new, torch.zeros(3), t([1.0, 1.0, -2.0]), clip=0.2)
    assert loss.item() == pytest.approx(0.4 / 3, rel=1e-5)
    assert clip_frac.item() == pytest.approx(2 / 3)


def test_clipped_surrogate_gradient_is_zero_where_clipped():
    logp_new = torch.log(t([1.5, 0.9])).requires_grad_()
    loss, _ = clipped_surrogate(logp_new, torch.zeros(2), t([1.0, 1.0]), clip=0.2)
    loss.backward()
    assert logp_new.grad[0].item() == 0.0  # ratio 1.5 > 1.2 with A > 0: clipped, no gradient
    assert logp_new.grad[1].item() == pytest.approx(-0.9 / 2)  # d/dlogp of -ρA/2 = -ρ/2


def test_clipped_value_loss_hand_computed():
    # unclipped errors [1, 1]; clipped values [0.2, 2.7] → errors [3.24, 0.49]; max [3.24, 1] → ½·2.12
    loss = clipped_value_loss(t([1.0, 3.0]), t([0.0, 2.5]), t([2.0, 2.0]), clip=0.2)
    assert loss.item() == pytest.approx(1.06)
    assert clipped_value_loss(t([1.0, 3.0]), t([0.0, 2.5]), t([2.0, 2.0]), clip=None).item() == pytest.approx(0.5)


def test_normalize_advantages_handles_no_signal():
    normed, signal = normalize_advantages(t([3.0, 3.0, 3.0]))
    assert not signal and normed.tolist() == [0.0, 0.0, 0.0]
    normed, signal = normalize_advantages(t([4.0]))
    assert not signal and normed.tolist() == [0.0]
    normed, signal = normalize_advantages(t([1.0, 3.0]))
    assert signal and normed.tolist() == pytest.approx([-1.0, 1.0], abs=1e-6)


def test_gather_completion_matches_a_direct_loop():
    torch.manual_seed(0)
    vocab, width = 7, 9
    logits = torch.randn(3, width, vocab, dtype=torch.bfloat16)
    input_ids = torch.randint(0, vocab, (3, width))
    prompt_lens, completion_lens = torch.tensor([2, 4, 1]), torch.tensor([3, 5, 1])
    logps, entropy, mask = gather_completion(logits, input_ids, prompt_lens, completion_lens)
    assert logps.dtype == torch.float32 and logps.shape == (3, 5)
    for b in range(3):
        full = torch.log_softmax(logits[b].double(), dim=-1)
        p, c = int(prompt_lens[b]), int(completion_lens[b])
        expected = [full[p + i - 1, input_ids[b, p + i]].item() for i in range(c)]
        ent = [-(full[p + i - 1].exp() * full[p + i - 1]).sum().item() for i in range(c)]
        assert logps[b, :c].tolist() == pytest.approx(expected, abs=1e-5)
        assert entropy[b, :c].tolist() == pytest.approx(ent, abs=1e-5)
        assert logps[b, c:].abs().sum().item() == 0 and mask[b].sum().item() == c


def test_kl_to_reference_is_zero_for_equal_policies_and_matches_k3():
    logps = t([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]])
    mask = t([[1, 1, 0], [1, 0, 0]], torch.bool)
    assert kl_to_reference(logps, logps, mask).tolist() == [0.0, 0.0]
    ref = t([[-1.5, -1.0, 9.0], [-0.5, 9.0, 9.0]])
    d = [-0.5, 1.0]
    expected = sum(math.exp(x) - x - 1 for x in d)
    assert kl_to_reference(logps, ref, mask).tolist() == pytest.approx([expected, 0.0])


def test_advantage_stats_match_scipy_and_numpy():
    rng = np.random.default_rng(0)
    a = rng.gamma(2.0, size=200) - 1.0
    stats = advantage_stats(torch.tensor(a))
    assert stats["mean"] == pytest.approx(a.mean())
    assert stats["std"] == pytest.approx(a.std())
    assert stats["skew"] == pytest.approx(scipy.stats.skew(a), rel=1e-6)
    counts, edges = np.histogram(a, bins=20)
    assert stats["hist"]["counts"] == counts.tolist() and stats["hist"]["edges"] == pytest.approx(edges.tolist())
    assert sum(stats["hist"]["counts"]) == 200


def test_advantage_stats_of_constant_and_empty_batches_are_finite_or_flagged():
    flat = advantage_stats([0.0, 0.0, 0.0])
    assert (flat["mean"], flat["std"], flat["skew"]) == (0.0, 0.0, 0.0) and sum(flat["hist"]["counts"]) == 3
    empty = advantage_stats([])
    assert math.isnan(empty["mean"]) and empty["hist"]["counts"] == []


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30), st.integers(1, 12))
def test_minibatch_indices_cover_every_step(n_steps, n_minibatches):
    parts = minibatch_indices(n_steps, n_minibatches, torch.Generator().manual_seed(0))
    assert len(parts) == n_minibatches and all(len(p) > 0 for p in parts)
    seen = torch.cat(parts).tolist()
    assert set(seen) == set(range(n_steps))
    if n_steps >= n_minibatches:
        assert sorted(seen) == list(range(n_steps))  # a partition: each step exactly once


def test_explained_variance_against_numpy_and_edge_cases():
    rng = np.random.default_rng(1)
    returns = rng.normal(size=50)
    values = returns + rng.normal(scale=0.5, size=50)
    expected = 1 - np.var(returns - values) / np.var(returns)
    assert explained_variance(torch.tensor(values), torch.tensor(returns)) == pytest.approx(expected, rel=1e-12)
    assert explained_variance(t([1.0, 2.0, 3.0]), t([1.0, 2.0, 3.0])) == pytest.approx(1.0)
    assert explained_variance(t([2.0, 2.0, 2.0]), t([1.0, 2.0, 3.0])) == pytest.approx(0.0)  # the mean only
    # every attempt right (+5), told apart only by a KL penalty of ~1e-7: undefined, not -1e12
    nearly_flat = t([5.0, 5.0 - 1e-7, 5.0 - 3e-7])
    assert math.isnan(explained_variance(t([0.0, 0.0, 0.0]), nearly_flat))
    assert math.isnan(explained_variance(t([]), t([])))


@pytest.mark.parametrize(("kl", "expected"), [
    (3.0, 0.1 * (1 + 0.2 * 100 / 10_000)),  # above the target: the error is clipped at +0.2
    (2.2, 0.1 * (1 + 0.1 * 100 / 10_000)),  # 10 % above: the coefficient grows by 0.1 * 100 / 10000
    (1.0, 0.1 * (1 - 0.2 * 100 / 10_000)),  # below: clipped at -0.2
    (2.0, 0.1),
])
def test_adaptive_kl_coefficient_by_hand(kl, expected):
    assert adaptive_kl_coef(0.1, kl, target=2.0, horizon=10_000, n_steps=100) == pytest.approx(expected, rel=1e-12)


def test_adaptive_kl_refuses_a_zero_target():
    with pytest.raises(ValueError, match="target and horizon"):
        adaptive_kl_coef(0.1, 1.0, target=0.0, horizon=10, n_steps=1)


def test_shuffled_rewards_are_a_seeded_permutation():
    rewards = t([5.0, -1.0, -3.0, 5.0, -2.0, 5.0])
    a = shuffled(rewards, torch.Generator().manual_seed(3))
    assert sorted(a.tolist()) == sorted(rewards.tolist()) and not torch.equal(a, rewards)
    assert torch.equal(a, shuffled(rewards, torch.Generator().manual_seed(3)))
