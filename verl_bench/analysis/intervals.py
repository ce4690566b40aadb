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
for the problem term (the problems' difficulty cancels) and adds each arm's seed term. The variance is the
unbiased moment estimate, problem term + sum_arm (v1 - noise)/S, NOT clamped: when runs do not differ,
v1 - noise is negative half the time, and clamping it at 0 (the textbook positive part) biases the variance
up and makes the test conservative (measured: a zero effect rejected in 2.9% with 3 seeds per arm, 0.8%
when the floor is the sampling noise). Its df is Satterthwaite's evaluated at the fitted, non-negative
components rather than at the raw mean squares: the problem term less the runs' sampling noise (P-1 df),
and per arm (noise + max(v1 - noise, 0))/S (S-1 df); Satterthwaite at the raw mean squares treats the
nearly constant noise part as if it carried S-1 df and rejected a zero effect in 2.4%. Should the estimate
fall to <= 0 (all noise) the fitted sum replaces it. The interval is a t interval with that df.
Measured by simulation (the model of tests/test_analysis_stats.py, 150 problems x 4 samples, 20,000
studies each, ``benchmarks/interval_coverage.py``): the 95% interval covers 95.2% / 95.2%
with 3 seeds per arm and seed effects / none, 94.9% / 94.7% with 8 seeds, 94.9% with one seed, 95.1% /
96.4% with 2 seeds, 94.8% for the average of 3 benchmarks with 3 vs 5 seeds. A zero effect is rejected in
4.8% / 5.0% (3 seeds), 5.1% / 4.8% (8 seeds), 5.1% (1 seed), 4.8% / 3.5% (2 seeds). (Not a two-level
bootstrap over seeds and problems: it counts the sampling noise twice and over-covers.)

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


def satterthwaite(terms: Sequence[tuple]) -> np.ndarray:
    """Welch-Satterthwaite df of a sum of independent variance terms [(variance, df)]: (sum v)^2 / sum v^2/df.
    A zero term adds nothing (whatever its df); an all-zero sum gives inf."""
    total = sum(np.asarray(v, float) for v, _ in terms)
    denom = sum(np.divide(np.asarray(v, float) ** 2, d, out=np.zeros_like(np.asarray(v, float)),
                          where=np.asarray(v) > 0) for v, d in terms)
    return np.divide(total ** 2, denom, out=np.full_like(total, np.inf), where=denom > 0)


def variance_terms(per_problem: Sequence[np.ndarray], weights: Sequence[float],
                   runs: Sequence[Sequence[np.ndarray]]) -> tuple:
    """(variance, df) of a weighted mean over benchmarks (module doc).

    ``per_problem``: one (..., P_b) array per benchmark, the per-problem means over seeds (of one arm, or the
    paired difference of two); ``runs``: the (..., S, P_b) blocks of each trained arm with S >= 2, whose
    seed term is estimated. The variance is the unbiased moment estimate, problem term + sum_arm (v1 -
    noise) / S, floored at the sampling noise alone (sum_arm noise / S, a lower bound of the true variance);
    its df is Satterthwaite's at the fitted components: per benchmark the problem term less the runs'
    noise (>= 0, P_b - 1 df), per arm noise + max(v1 - noise, 0) over S (S - 1 df).
    """
    problem = [w ** 2 * x.var(-1, ddof=1) / x.shape[-1] for w, x in zip(weights, per_problem)]
    var = sum(problem)
    moments = [(*seed_moments(blocks, weights), blocks[0].shape[-2]) for blocks in runs]
    var = var + sum((v1 - noise) / S for v1, noise, S in moments)
    run_noise = [sum(w ** 2 * residual_mean_square(blocks[b]) / (blocks[b].shape[-1] * blocks[b].shape[-2])
                     for blocks in runs) for b, w in enumerate(weights)]
    fitted = [(np.maximum(pm - rn, 0.0), x.shape[-1] - 1) for pm, rn, x in zip(problem, run_noise, per_problem)]
    fitted += [((noise + np.maximum(v1 - noise, 0.0)) / S, S - 1) for v1, noise, S in moments]
    # the unbiased estimate can fall to <= 0 only when nearly every term is noise: then the fitted sum
    var = np.where(var > 0, var, sum(v for v, _ in fitted))
    return var, satterthwaite(fitted)


def seed_sd(blocks: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Estimated SD of one arm's whole-run shift: sqrt(max(v1 - noise, 0))."""
    v1, noise = seed_moments(blocks, weights)
    return np.sqrt(np.maximum(v1 - noise, 0.0))


def t_interval(mean, se, df, level: float = 0.95) -> tuple:
    """(low, high, two-sided p of mean = 0) of a t interval; se 0: a point, p 1 for mean 0 else 0."""
    q = sps.t.ppf(0.5 + level / 2, df)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, np.abs(mean) / np.where(se > 0, se, 1), np.where(mean == 0, 0.0, np.inf))
    p = 2 * sps.t.sf(t, df)
    return mean - q * se, mean + q * se, p


# BOUNDS: every score is a proportion (correct 0/1, pass@k in [0, 1]), so an arm's accuracy lies in [0, 1] and a
# paired difference in [-1, 1]. With 2 seeds the t interval's df can be ~1 (t = 12.7) and reach past them; it
# is cut there: the cut interval holds the true value whenever the uncut one does (same coverage), and a
# report does not show an accuracy of 65 +- 90 points. The se, df, p-value and MDE are the uncut ones.
def arm_interval(blocks: Sequence[np.ndarray], level: float = 0.95, seeds_vary: bool = True) -> dict:
    """Accuracy over blocks (one (..., S, P_b) array per benchmark, weighted 1/B): mean, se, df, ci_low,
    ci_high, seed_sd (nan when not measured). ``seeds_vary`` False: the seeds are not training runs
    (the base model), so no seed term."""
    w = [1.0 / len(blocks)] * len(blocks)
    mean = sum(wb * y.mean((-2, -1)) for wb, y in zip(w, blocks))
    runs = [blocks] if seeds_vary and blocks[0].shape[-2] >= 2 else []
    var, df = variance_terms([y.mean(-2) for y in blocks], w, runs)
    sd = seed_sd(blocks, w) if runs else np.full(np.shape(mean), np.nan)
    se = np.sqrt(var)
    lo, hi, _ = t_interval(mean, se, df, level)
    lo, hi = np.maximum(lo, 0.0), np.minimum(hi, 1.0)  # see BOUNDS
    return {"mean": mean, "se": se, "df": df, "ci_low": lo, "ci_high": hi, "seed_sd": sd}


def paired_interval(blocks_a: Sequence[np.ndarray], blocks_b: Sequence[np.ndarray], level: float = 0.95,
                    seeds_vary: tuple = (True, True)) -> dict:
    """Paired difference a - b on the same problems (block b of each arm: (..., S_arm, P_b), same problem
    order): delta, se, df, ci_low, ci_high, p_value (t test from the same se and df), measured (both arms'
    seed terms estimated, or not needed)."""
    w = [1.0 / len(blocks_a)] * len(blocks_a)
    diffs = [ya.mean(-2) - yb.mean(-2) for ya, yb in zip(blocks_a, blocks_b)]
    delta = sum(wb * d.mean(-1) for wb, d in zip(w, diffs))
    trained = [blocks for blocks, vary in zip((blocks_a, blocks_b), seeds_vary) if vary]
    measured = all(blocks[0].shape[-2] >= 2 for blocks in trained)
    var, df = variance_terms(diffs, w, [blocks for blocks in trained if blocks[0].shape[-2] >= 2])
    se = np.sqrt(var)
    lo, hi, p = t_interval(delta, se, df, level)
    lo, hi = np.maximum(lo, -1.0), np.minimum(hi, 1.0)  # see BOUNDS
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
