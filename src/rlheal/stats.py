"""Statistics for success rates: the Wilson interval of one rate, and paired, seed-clustered comparisons of
results on shared problems (two-way bootstrap, exact McNemar)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

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


# --- results on shared problems: paired comparisons and seeds ------------------------------------------------
# Every checkpoint of a study, in every run (seed), is scored on the same eval problems, so results form a
# (runs × problems) table per checkpoint. Two checkpoints are compared problem by problem (paired), and runs are
# combined by resampling runs and problems independently (a two-way bootstrap: a resampled problem is resampled
# in every run at once), never by pooling episodes as if each run had drawn its own problems.
BOOTSTRAP_RESAMPLES = 4000


@dataclass(frozen=True)
class Estimate:
    """A mean over runs and problems with its 95 % percentile-bootstrap interval (`low`, `high`), and for a
    paired difference in one run, the exact McNemar p-value (None otherwise)."""

    value: float
    low: float
    high: float
    runs: int
    problems: int
    p_value: float | None = None

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly on one side of 0 (a difference that is not noise at 95 %)."""
        return self.low > 0 or self.high < 0


def as_table(values: Sequence[Sequence[float]]) -> np.ndarray:
    """A (runs × problems) float table; raises ValueError when runs have different numbers of problems."""
    lengths = {len(v) for v in values}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(f"every run needs the same, non-zero number of problems; got {sorted(lengths)}")
    return np.asarray(values, dtype=float)


def bootstrap_means(table: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> np.ndarray:
    """Means of `resamples` two-way bootstrap resamples of a (runs × problems) table: runs and problems are each
    drawn with replacement, independently; a table with one run resamples problems only."""
    runs, problems = table.shape
    rng = np.random.default_rng(seed)
    run_counts = rng.multinomial(runs, np.full(runs, 1 / runs), size=resamples) if runs > 1 else np.ones((resamples, 1))
    problem_counts = rng.multinomial(problems, np.full(problems, 1 / problems), size=resamples)
    return np.einsum("br,rp,bp->b", run_counts, table, problem_counts) / (runs * problems)


def estimate(values: Sequence[Sequence[float]], *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> Estimate:
    """The mean of a (runs × problems) table with its 95 % two-way bootstrap interval."""
    table = as_table(values)
    low, high = np.quantile(bootstrap_means(table, resamples, seed), [0.025, 0.975])
    return Estimate(float(table.mean()), float(low), float(high), *table.shape)


def paired_difference(after: Sequence[Sequence[float]], before: Sequence[Sequence[float]], *,
                      resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> Estimate:
    """Mean of `after − before` over runs and problems (both tables on the same runs and problems), with its
    95 % two-way bootstrap interval; with one run of 0/1 outcomes also the exact McNemar p-value."""
    a, b = as_table(after), as_table(before)
    if a.shape != b.shape:
        raise ValueError(f"paired tables must have the same runs and problems; got {a.shape} and {b.shape}")
    found = estimate(a - b, resamples=resamples, seed=seed)
    binary = set(np.unique(a)) <= {0.0, 1.0} and set(np.unique(b)) <= {0.0, 1.0}
    if a.shape[0] == 1 and binary:
        return replace(found, p_value=mcnemar_p(int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())))
    return found


def mcnemar_p(gained: int, lost: int) -> float:
    """The exact two-sided McNemar p-value: problems solved only after (`gained`) vs only before (`lost`),
    a binomial test of `gained` out of the discordant pairs at 1/2 (1.0 when there are none)."""
    from scipy.stats import binomtest

    if gained < 0 or lost < 0:
        raise ValueError(f"counts must be >= 0, got {gained} and {lost}")
    return 1.0 if gained + lost == 0 else float(binomtest(gained, gained + lost, 0.5).pvalue)
