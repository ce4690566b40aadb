"""The interval arithmetic of accuracies and paired differences, on arrays: small pure functions.

The model behind every interval. For one model x arm x benchmark, ``y[s, i]`` is the mean ``correct`` of
problem i in training run (seed) s::

    y[s, i] = mu + a_i + b_s + e_si

``a_i`` the problem's difficulty (the same in every run), ``b_s`` the whole run's shift (training-seed noise,
variance sigma2_shift), ``e_si`` the run x problem interaction plus sampling noise. The accuracy is the mean
of y, with variance var(a)/P + sigma2_shift/S + var(e)/(S P):

* the problem term: var_i of the per-problem means over seeds, / P (it holds var(a)/P + var(e)/(S P));
* the seed term: sigma2_shift / S, sigma2_shift by moments: v1 = var_s of the seed means estimates
  sigma2_shift + var(e)/P and the two-way residual mean square estimates var(e); subtract.

A paired difference of two arms on the same problems takes the per-problem difference of the arms' means
for the problem term (the problems' difficulty cancels) and adds the arms' seed terms. The seed variance is
estimated for the two arms together, sum_arm (v1 - noise)/S, clamped at 0 once (clamping each arm's
estimate would add the positive part of two noise terms: too wide when runs do not differ). The interval is
a t interval with Welch-Satterthwaite degrees of freedom: P-1 for the problem term; for the seed term the
Satterthwaite df of the moment estimator, df(sum_arm v1/S) * (seed term / sum_arm v1/S)^2, the df of the
seed means' mean squares (S-1 each) shrunk by the share of them that is seed variance rather than noise.
Measured by simulation (the model of tests/test_analysis_stats.py, 150 problems x 4 samples, 20,000
studies each): the 95% interval covers 95.6% / 96.9% with 3 seeds per arm and seed effects / none, 95.4% /
96.1% with 8 seeds, 94.6% with one seed and no seed effect; 93% with 2 seeds and seed effects; 94.7% for
the average of 3 benchmarks with 3 vs 5 seeds. A zero effect is rejected in 4.4% / 2.9% (3 seeds), 4.8% /
3.6% (8 seeds), 5.0% (1 seed): conservative when the runs do not differ, the price of estimating the seed
variance from a few runs. Clamping each arm's estimate with S-1 df (the textbook shortcut) rejected a zero
effect in 7% with 3 seeds and moderate seed effects. (Not a two-level bootstrap over seeds and problems:
it counts the sampling noise twice and over-covers.)

With one seed per (trained) arm the seed term cannot be estimated: the interval covers problems and samples
only and ``seed_variance_measured`` is False. The untrained base model (arm "base") has no training seed.
With < 50 problems and one seed per arm the p-value of a difference is an exact sign-flip permutation test
(the exact sign test when there is one sample per problem), and one arm's accuracy from one sample per
problem gets a Wilson score interval (``verl_bench.analysis.smallsample``).

The "average" benchmark is the unweighted mean over benchmarks of per-benchmark accuracies (each problem of
benchmark b weighs 1/(B P_b)), computed per seed, with the same terms (problem term sum_b var(d_b)/(B^2 P_b)).

``arm_interval`` and ``paired_interval`` take lists of (..., S, P_b) arrays, one per benchmark, and work on
a batch of leading dimensions (the coverage simulation runs 1000 studies at once). ``stats`` builds the
arrays from the tidy frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats as sps


def residual_mean_square(y: np.ndarray) -> np.ndarray:
    """Two-way (seed x problem) residual mean square of (..., S, P): estimates var(e); needs S, P >= 2."""
    S, P = y.shape[-2:]
    r = y - y.mean(-1, keepdims=True) - y.mean(-2, keepdims=True) + y.mean((-2, -1), keepdims=True)
    return (r ** 2).sum((-2, -1)) / ((S - 1) * (P - 1))


def seed_moments(blocks: Sequence[np.ndarray], weights: Sequence[float]) -> tuple:
    """(v1, noise) of one arm's (..., S, P_b) blocks sharing the seed axis: v1 = var_s(sum_b w_b mean_i
    y_b[s, i]) estimates sigma2_shift + noise, noise = sum_b w_b^2 MS_res_b / P_b. Needs S >= 2."""
    seed_means = sum(w * y.mean(-1) for w, y in zip(weights, blocks))
    noise = sum(w ** 2 * residual_mean_square(y) / y.shape[-1] for w, y in zip(weights, blocks))
    return seed_means.var(-1, ddof=1), noise


def seed_term(arms: Sequence[Sequence[np.ndarray]], weights: Sequence[float]) -> tuple:
    """(variance, df) of the seed term over arms (each a list of (..., S_arm, P_b) blocks, S_arm >= 2):
    max(sum_arm (v1 - noise)/S, 0) with the Satterthwaite df of that moment estimator (module doc)."""
    raw, ms, dof = 0.0, [], []
    for blocks in arms:
        S = blocks[0].shape[-2]
        v1, noise = seed_moments(blocks, weights)
        raw = raw + (v1 - noise) / S
        ms.append(v1 / S)
        dof.append(S - 1)
    var = np.maximum(raw, 0.0)
    total = sum(ms)
    df_ms = np.divide(total ** 2, sum(m ** 2 / k for m, k in zip(ms, dof)), out=np.zeros_like(total),
                      where=total > 0)
    share = np.divide(var, total, out=np.zeros_like(var), where=total > 0)
    return var, df_ms * share ** 2


def seed_sd(blocks: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Estimated SD of one arm's whole-run shift: sqrt(max(v1 - noise, 0))."""
    v1, noise = seed_moments(blocks, weights)
    return np.sqrt(np.maximum(v1 - noise, 0.0))


def problem_term(per_problem: Sequence[np.ndarray], weights: Sequence[float]) -> list[tuple]:
    """[(variance, df)] per benchmark: w_b^2 var_i(x_b) / P_b with P_b - 1 df, x_b of shape (..., P_b)."""
    return [(w ** 2 * x.var(-1, ddof=1) / x.shape[-1], x.shape[-1] - 1) for w, x in zip(weights, per_problem)]


def combine(terms: Sequence[tuple]) -> tuple:
    """(se, df) of a sum of independent variance terms [(variance, df)], Welch-Satterthwaite df. A zero
    term adds nothing (whatever its df); an all-zero sum gives se 0 and df inf."""
    var = sum(np.asarray(v, float) for v, _ in terms)
    denom = sum(np.divide(np.asarray(v, float) ** 2, d, out=np.zeros_like(np.asarray(v, float)),
                          where=np.asarray(v) > 0) for v, d in terms)
    df = np.divide(var ** 2, denom, out=np.full_like(var, np.inf), where=denom > 0)
    return np.sqrt(var), df


def t_interval(mean, se, df, level: float = 0.95) -> tuple:
    """(low, high, two-sided p of mean = 0) of a t interval; se 0: a point, p 1 for mean 0 else 0."""
    q = sps.t.ppf(0.5 + level / 2, df)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, np.abs(mean) / np.where(se > 0, se, 1), np.where(mean == 0, 0.0, np.inf))
    p = 2 * sps.t.sf(t, df)
    return mean - q * se, mean + q * se, p


def arm_interval(blocks: Sequence[np.ndarray], level: float = 0.95, seeds_vary: bool = True) -> dict:
    """Accuracy over blocks (one (..., S, P_b) array per benchmark, weighted 1/B): mean, se, df, ci_low,
    ci_high, seed_sd (nan when not measured). ``seeds_vary`` False: the seeds are not training runs
    (the base model), so no seed term."""
    w = [1.0 / len(blocks)] * len(blocks)
    mean = sum(wb * y.mean((-2, -1)) for wb, y in zip(w, blocks))
    terms = problem_term([y.mean(-2) for y in blocks], w)
    sd = np.full(np.shape(mean), np.nan)
    if seeds_vary and blocks[0].shape[-2] >= 2:
        terms.append(seed_term([blocks], w))
        sd = seed_sd(blocks, w)
    se, df = combine(terms)
    lo, hi, _ = t_interval(mean, se, df, level)
    return {"mean": mean, "se": se, "df": df, "ci_low": lo, "ci_high": hi, "seed_sd": sd}


def paired_interval(blocks_a: Sequence[np.ndarray], blocks_b: Sequence[np.ndarray], level: float = 0.95,
                    seeds_vary: tuple = (True, True)) -> dict:
    """Paired difference a - b on the same problems (block b of each arm: (..., S_arm, P_b), same problem
    order): delta, se, df, ci_low, ci_high, p_value (t test from the same se and df), measured (both arms'
    seed terms estimated, or not needed)."""
    w = [1.0 / len(blocks_a)] * len(blocks_a)
    diffs = [ya.mean(-2) - yb.mean(-2) for ya, yb in zip(blocks_a, blocks_b)]
    delta = sum(wb * d.mean(-1) for wb, d in zip(w, diffs))
    terms = problem_term(diffs, w)
    trained = [blocks for blocks, vary in zip((blocks_a, blocks_b), seeds_vary) if vary]
    measured = all(blocks[0].shape[-2] >= 2 for blocks in trained)
    runs = [blocks for blocks in trained if blocks[0].shape[-2] >= 2]
    if runs:
        terms.append(seed_term(runs, w))
    se, df = combine(terms)
    lo, hi, p = t_interval(delta, se, df, level)
    return {"delta": delta, "se": se, "df": df, "ci_low": lo, "ci_high": hi, "p_value": p, "measured": measured}


def min_detectable_difference(se: float, df: float, level: float = 0.95, power: float = 0.8) -> float:
    """The true difference a two-sided test at 1 - ``level`` detects with probability ``power``:
    (t_{(1+level)/2, df} + t_{power, df}) * se."""
    return float((sps.t.ppf(0.5 + level / 2, df) + sps.t.ppf(power, df)) * se)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values, in the input order (None / nan entries stay None and do not count)."""
    idx = [i for i, p in enumerate(p_values) if p is not None and not np.isnan(p)]
    out: list[float | None] = [None] * len(p_values)
    m, running = len(idx), 0.0
    for rank, i in enumerate(sorted(idx, key=lambda j: p_values[j])):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        out[i] = running
    return out
