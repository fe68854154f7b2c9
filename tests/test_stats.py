import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import binomtest, norm

from rlheal.stats import (
    Z_95,
    as_table,
    bootstrap_means,
    estimate,
    mcnemar_p,
    paired_difference,
    wilson_interval,
)


def test_z_is_the_two_sided_95_percent_normal_quantile():
    assert Z_95 == pytest.approx(norm.ppf(0.975), rel=1e-12)


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        # Hand-computed from centre = (p + z²/2n)/(1 + z²/n), half = z/(1 + z²/n)·sqrt(p(1-p)/n + z²/4n²)
        (0, 10, 0.0, 0.277532),
        (5, 10, 0.236593, 0.763407),
        (10, 10, 0.722468, 1.0),
        (1, 1, 0.206549, 1.0),
    ],
)
def test_hand_computed_values(k, n, low, high):
    got = wilson_interval(k, n)
    assert got == pytest.approx((low, high), abs=1e-6)


@given(st.integers(1, 5000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_matches_scipy_wilson(kn):
    k, n = kn
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = wilson_interval(k, n)
    assert low == pytest.approx(ref.low, abs=1e-9)
    assert high == pytest.approx(ref.high, abs=1e-9)
    assert 0.0 <= low <= k / n <= high <= 1.0


@given(st.integers(1, 2000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wider_z_gives_a_wider_interval(kn):
    k, n = kn
    low95, high95 = wilson_interval(k, n)
    low99, high99 = wilson_interval(k, n, z=norm.ppf(0.995))
    assert low99 <= low95 and high95 <= high99


def test_no_trials_gives_nan():
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


@pytest.mark.parametrize(("k", "n", "z"), [(3, 2, Z_95), (-1, 5, Z_95), (0, -1, Z_95), (1, 2, 0.0)])
def test_invalid_input_is_rejected(k, n, z):
    with pytest.raises(ValueError):
        wilson_interval(k, n, z)


# --- paired and seed-clustered statistics -------------------------------------------------------------------


@pytest.mark.parametrize(("gained", "lost", "expected"), [
    (8, 2, 2 * (1 + 10 + 45) / 1024),  # 2·P(X ≤ 2), X ~ Bin(10, 1/2)
    (4, 0, 2 * 0.5**4),
    (0, 0, 1.0),
    (3, 3, 1.0),
])
def test_mcnemar_exact_p_by_hand(gained, lost, expected):
    assert mcnemar_p(gained, lost) == pytest.approx(expected)


def test_one_run_bootstrap_matches_exhaustive_enumeration():
    # problems [1, 0]: the 4 equally likely resamples have means 1, 1/2, 1/2, 0
    means = bootstrap_means(as_table([[1, 0]]), resamples=40_000, seed=1)
    assert np.mean(means == 1.0) == pytest.approx(0.25, abs=0.01)
    assert np.mean(means == 0.5) == pytest.approx(0.5, abs=0.01)
    found = estimate([[1, 0]])
    assert (found.value, found.low, found.high) == (0.5, 0.0, 1.0)


def test_runs_are_resampled_as_clusters():
    # run 0 solves everything, run 1 nothing: resampling runs gives means 1 (1/4), 1/2 (1/2), 0 (1/4),
    # whatever the problems; pooling the 20 episodes as if independent would give a narrow interval instead
    means = bootstrap_means(as_table([[1] * 10, [0] * 10]), resamples=40_000, seed=2)
    assert set(np.unique(means)) == {0.0, 0.5, 1.0}
    assert np.mean(means == 0.5) == pytest.approx(0.5, abs=0.01)
    found = estimate([[1] * 10, [0] * 10])
    assert (found.low, found.high) == (0.0, 1.0)


def test_identical_runs_give_the_one_run_interval_not_a_narrower_one():
    one = [[1] * 14 + [0] * 86]
    six = one * 6
    a, b = estimate(one), estimate(six)
    assert (a.value, a.low, a.high) == (b.value, b.low, b.high)
    assert (b.low, b.high) == pytest.approx((0.08, 0.21), abs=0.011)  # about Wilson's [8.5, 22.1] on 14 of 100


def test_one_run_interval_agrees_with_scipys_percentile_bootstrap():
    from scipy.stats import bootstrap

    rng = np.random.default_rng(0)
    values = (rng.random(300) < 0.3).astype(float)
    ours = estimate([values], resamples=20_000, seed=3)
    ref = bootstrap((values,), np.mean, method="percentile", n_resamples=20_000, random_state=4).confidence_interval
    assert ours.low == pytest.approx(ref.low, abs=0.008) and ours.high == pytest.approx(ref.high, abs=0.008)


def test_paired_difference_uses_the_pairs():
    before = [[1, 1, 0, 0, 1, 0, 1, 0]]
    after = [[1, 1, 1, 0, 1, 1, 1, 0]]  # 2 gained, 0 lost
    d = paired_difference(after, before)
    assert d.value == pytest.approx(2 / 8) and d.p_value == pytest.approx(0.5)
    # the bootstrap of the per-problem differences can be enumerated: 2 of 8 are +1, the rest 0
    probs = {k / 8: math.comb(8, k) * 0.25**k * 0.75 ** (8 - k) for k in range(9)}
    cdf = list(itertools.accumulate(probs.values()))
    low = next(m for m, c in zip(probs, cdf, strict=True) if c >= 0.025)
    high = next(m for m, c in zip(probs, cdf, strict=True) if c >= 0.975)
    assert (d.low, d.high) == pytest.approx((low, high))
    with pytest.raises(ValueError, match="same runs and problems"):
        paired_difference([[1, 0]], [[1, 0, 1]])
    with pytest.raises(ValueError, match="same, non-zero number of problems"):
        estimate([[1, 0], [1]])
    assert paired_difference([[1, 0]] * 2, [[0, 0]] * 2).p_value is None  # no McNemar across runs
