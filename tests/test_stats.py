import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import binomtest, norm

from rlheal.stats import Z_95, wilson_interval


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
