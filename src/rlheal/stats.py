"""Small statistics for success rates: the Wilson score interval of a binomial proportion."""

from __future__ import annotations

import math

Z_95 = 1.959963984540054  # the 97.5 % quantile of the standard normal: a two-sided 95 % interval


def wilson_interval(k: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval (low, high) for `k` successes in `n` trials.

    Unlike the normal ("Wald") interval it stays inside [0, 1] and is not degenerate at k = 0 or k = n.
    n = 0 carries no information: the result is (nan, nan) rather than an error, so an empty evaluation
    can still be stored and shown. Raises ValueError for k outside 0..n, negative n or z <= 0.
    """
    if n < 0 or not 0 <= k <= max(n, 0):
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if z <= 0:
        raise ValueError(f"z must be positive, got {z}")
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # The exact ends at k = 0 and k = n are 0 and 1; rounding must not push them outside [0, 1].
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return (low, high)
