"""Exact and score methods for small benchmarks (< 50 problems) with one training seed per arm.

``wilson``: the Wilson score interval of a proportion. ``sign_flip_p``: the exact two-sided sign-flip permutation p-value of a mean paired difference (under "no
difference" each problem's difference is as likely to have either sign); with 0/1 outcomes it is the exact
sign (McNemar) test on the discordant problems.

(Newcombe's hybrid score interval for paired proportions was tried for the paired difference and dropped:
with 30 problems, one sample each and arms that agree on most problems it covered 91-93% where the paired
t interval covered 93-95%.)
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
from scipy import stats as sps

MAX_GRID = 2_000_000  # largest sum of scaled |differences| enumerated exactly; beyond it: Monte Carlo


def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of k successes in n trials."""
    if n <= 0:
        return math.nan, math.nan
    z = sps.norm.ppf(0.5 + level / 2)
    p = k / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def _scale(d: np.ndarray) -> int | None:
    """The smallest K with d * K integral (d are means over a few samples), or None when it is too fine."""
    k = 1
    for x in np.unique(np.abs(d)):
        k = math.lcm(k, Fraction(float(x)).limit_denominator(1000).denominator)
        if k * np.abs(d).sum() > MAX_GRID:
            return None
    return k


def sign_flip_p(d, n_draws: int = 200_000, seed: int = 0) -> float:
    """Two-sided p of P(|sum eps_i d_i| >= |sum d_i|) over independent random signs eps_i: exact (the
    distribution of the signed sum, by convolution on the grid the differences live on), or from
    ``n_draws`` random sign vectors when the grid is too fine."""
    d = np.asarray(d, float)
    d = d[d != 0]
    if len(d) == 0:
        return 1.0
    k = _scale(d)
    if k is None:
        rng = np.random.default_rng(seed)
        signs = rng.choice((-1.0, 1.0), size=(n_draws, len(d)))
        return float((np.abs(signs @ d) >= abs(d.sum()) - 1e-12).mean())
    ints = np.rint(np.abs(d) * k).astype(int)
    total = int(ints.sum())
    dist = np.zeros(2 * total + 1)
    dist[total] = 1.0  # index total = a signed sum of 0
    for v in ints:
        dist = 0.5 * (np.roll(dist, v) + np.roll(dist, -v))  # no wrap: |sum| never exceeds total
    observed = abs(int(np.rint(d.sum() * k)))
    sums = np.arange(-total, total + 1)
    return float(min(1.0, dist[np.abs(sums) >= observed].sum()))
