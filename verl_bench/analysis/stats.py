"""Accuracy intervals and paired comparisons between arms: small pure functions, no I/O.

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

The array-level core (``arm_interval``, ``paired_interval``) takes lists of (..., S, P_b) arrays, one per
benchmark, and works on a batch of leading dimensions (the coverage simulation runs 1000 studies at once).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from verl_bench.analysis import smallsample
from verl_bench.errors import UserError

AVERAGE = "average"
UNTRAINED = "base"  # the arm name of the untrained model: no training seed, so no seed variance to measure
SMALL = 50  # fewer problems than this (with one seed per arm): exact / score methods
NO_DIFFERENCE = "no difference detectable at this size"


class AnalysisError(UserError):
    """The frame cannot answer the question asked (an arm or benchmark is missing, several checkpoints)."""


@dataclass
class Estimate:
    mean: float
    ci_low: float
    ci_high: float
    se: float
    df: float
    n_seeds: int
    n_problems: int
    n_samples: int
    seed_variance_measured: bool
    method: str = ""
    seed_sd: float | None = None  # estimated SD of a whole run's shift (None: not measured)
    note: str = ""


@dataclass
class Comparison:
    arm_a: str
    arm_b: str
    model: str
    benchmark: str
    delta: float  # accuracy of a minus accuracy of b
    ci_low: float
    ci_high: float
    se: float
    df: float
    p_value: float
    p_adjusted: float | None
    mde: float
    n_seeds_a: int
    n_seeds_b: int
    n_problems: int
    n_samples: int
    method: str
    seed_variance_measured: bool
    verdict: str
    level: float = 0.95
    note: str = ""


# ------------------------------------------------------------------------------------------ array core
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


def verdict(c: Comparison) -> str:
    """"better" / "worse" when the interval excludes 0 (and, for a Holm-adjusted endpoint, the adjusted p is
    below 1 - level too); otherwise "no difference detectable at this size"."""
    if c.p_adjusted is not None and not c.p_adjusted < 1 - c.level:
        return NO_DIFFERENCE
    if c.ci_low > 0:
        return "better"
    if c.ci_high < 0:
        return "worse"
    return NO_DIFFERENCE


# ------------------------------------------------------------------------------------------ frame -> arrays
def last_step(frame: pd.DataFrame) -> pd.DataFrame:
    """Only each model x arm x seed's last evaluated checkpoint (the statistics need one per training run)."""
    if frame.empty:
        return frame
    last = frame.groupby(["model", "arm", "seed"])["step"].transform("max")
    return frame[frame["step"] == last]


def seed_problem_matrix(frame: pd.DataFrame, model: str, arm: str, benchmark: str,
                        value: str = "correct") -> tuple:
    """(y, seeds, problems, n_samples): y[s, i] the mean ``value`` of problem i in seed s, over the problems
    every seed answered. Raises AnalysisError when the cell is empty or a seed has several checkpoints."""
    rows = frame[(frame["model"] == model) & (frame["arm"] == arm) & (frame["benchmark"] == benchmark)]
    if rows.empty:
        raise AnalysisError(f"no samples for model {model!r}, arm {arm!r}, benchmark {benchmark!r}")
    steps = rows.groupby("seed")["step"].nunique()
    if (steps > 1).any():
        raise AnalysisError(f"{model}/{arm}/{benchmark}: seed {steps.index[steps > 1][0]} has several checkpoints "
                            f"(steps {sorted(rows['step'].unique())}); keep one per run, e.g. stats.last_step(frame)")
    table = rows.pivot_table(index="seed", columns="problem", values=value, aggfunc="mean").dropna(axis=1)
    counts = rows.groupby(["seed", "problem"]).size()
    return table.to_numpy(float), list(table.index), list(table.columns), int(counts.min())


# ------------------------------------------------------------------------------------------ frame level
def _benchmarks(frame: pd.DataFrame, model: str, arms: Sequence[str], benchmark: str) -> list[str]:
    if benchmark != AVERAGE:
        return [benchmark]
    sets = [set(frame.loc[(frame["model"] == model) & (frame["arm"] == a), "benchmark"]) for a in arms]
    found = sorted(set.intersection(*sets)) if sets else []
    if not found:
        raise AnalysisError(f"no benchmark evaluated for model {model!r} and arm(s) {list(arms)}")
    return found


def _arm_blocks(frame, model, arm, benches) -> tuple:
    """One (S, P_b) array per benchmark over the seeds present in every benchmark; problems, samples."""
    mats = [seed_problem_matrix(frame, model, arm, b) for b in benches]
    seeds = sorted(set.intersection(*(set(m[1]) for m in mats)))
    blocks = [pd.DataFrame(y, index=s).loc[seeds].to_numpy() for y, s, _, _ in mats]
    return blocks, seeds, [m[2] for m in mats], min(m[3] for m in mats)


def arm_accuracy(frame: pd.DataFrame, model: str, arm: str, benchmark: str, level: float = 0.95) -> Estimate:
    """Accuracy of one arm on a benchmark (or "average") with its interval over problems, samples and seeds."""
    benches = _benchmarks(frame, model, [arm], benchmark)
    blocks, seeds, problems, n = _arm_blocks(frame, model, arm, benches)
    S, P = len(seeds), sum(len(p) for p in problems)
    trained = arm != UNTRAINED
    r = arm_interval(blocks, level, seeds_vary=trained)
    measured = S >= 2 or not trained
    est = Estimate(float(r["mean"]), float(r["ci_low"]), float(r["ci_high"]), float(r["se"]), float(r["df"]),
                   S, P, n, measured, method="t, variance components (problems, samples" +
                   (", seeds)" if trained and S >= 2 else ")"),
                   seed_sd=float(r["seed_sd"]) if trained and S >= 2 else None)
    binary = bool(np.isin(blocks[0], (0.0, 1.0)).all()) and n == 1
    if len(blocks) == 1 and S == 1 and P < SMALL and binary:
        k = round(blocks[0].sum())
        est.ci_low, est.ci_high = smallsample.wilson(k, P, level)
        est.method = f"Wilson score interval ({P} < {SMALL} problems, one sample each)"
    if not measured:
        est.note = "one training seed: seed variance not measured"
    return est


def paired_difference(frame: pd.DataFrame, model: str, benchmark: str, arm_a: str, arm_b: str,
                      level: float = 0.95, power: float = 0.8) -> Comparison:
    """a - b on the problems both arms answered (per benchmark), with its interval, p-value and MDE."""
    benches = _benchmarks(frame, model, [arm_a, arm_b], benchmark)
    blocks_a, seeds_a, probs_a, n_a = _arm_blocks(frame, model, arm_a, benches)
    blocks_b, seeds_b, probs_b, n_b = _arm_blocks(frame, model, arm_b, benches)
    pa, pb, dropped = [], [], 0
    for i, (qa, qb) in enumerate(zip(probs_a, probs_b)):
        shared = sorted(set(qa) & set(qb))
        if len(shared) < 2:
            raise AnalysisError(f"{model}/{benches[i]}: arms {arm_a!r} and {arm_b!r} share {len(shared)} problem(s)")
        dropped += len(set(qa) | set(qb)) - len(shared)
        pa.append(blocks_a[i][:, [qa.index(p) for p in shared]])
        pb.append(blocks_b[i][:, [qb.index(p) for p in shared]])
    vary = (arm_a != UNTRAINED, arm_b != UNTRAINED)
    r = paired_interval(pa, pb, level, seeds_vary=vary)
    P, Sa, Sb = sum(x.shape[1] for x in pa), len(seeds_a), len(seeds_b)
    parts = ["problems", "samples"] + (["seeds"] if any(vary) and r["measured"] else [])
    method = f"paired t, variance components ({', '.join(parts)}), Welch-Satterthwaite df"
    lo, hi, p, se, df = float(r["ci_low"]), float(r["ci_high"]), float(r["p_value"]), float(r["se"]), float(r["df"])
    if len(pa) == 1 and Sa == 1 and Sb == 1 and P < SMALL:
        d = pa[0][0] - pb[0][0]
        p = smallsample.sign_flip_p(d)
        method = (f"exact sign-flip permutation p ({P} < {SMALL} problems, one seed per arm); "
                  f"paired t interval, {P - 1} df")
    notes = []
    if dropped:
        notes.append(f"paired on the {P} shared problems ({dropped} answered by one arm only left out)")
    if not r["measured"]:
        notes.append("one training seed in an arm: seed variance not measured")
    c = Comparison(arm_a, arm_b, model, benchmark, float(r["delta"]), lo, hi, se, df, p, None,
                   min_detectable_difference(se, df, level, power), Sa, Sb, P, min(n_a, n_b), method,
                   bool(r["measured"]), "", level, "; ".join(notes))
    c.verdict = verdict(c)
    return c


def accuracy_table(frame: pd.DataFrame, primary: str | None = None, level: float = 0.95) -> pd.DataFrame:
    """Index (model, arm); columns (benchmark, mean|ci_low|ci_high), benchmarks sorted then "average" (when
    there are several); ``primary`` (a benchmark or "average") comes first."""
    out = {}
    for (model, arm), g in frame.groupby(["model", "arm"], sort=False):
        benches = sorted(g["benchmark"].unique())
        row = {}
        for b in benches + ([AVERAGE] if len(benches) > 1 else []):
            e = arm_accuracy(g, model, arm, b, level)
            row.update({(b, "mean"): e.mean, (b, "ci_low"): e.ci_low, (b, "ci_high"): e.ci_high})
        out[(model, arm)] = row
    table = pd.DataFrame.from_dict(out, orient="index")
    if table.empty:
        return table
    table.index.names = ["model", "arm"]
    names = list(dict.fromkeys(b for b, _ in table.columns))
    names = sorted(n for n in names if n != AVERAGE) + ([AVERAGE] if AVERAGE in names else [])
    if primary in names:
        names = [primary] + [n for n in names if n != primary]
    table = table[[(b, s) for b in names for s in ("mean", "ci_low", "ci_high")]]
    table.columns = pd.MultiIndex.from_tuples(table.columns, names=["benchmark", "statistic"])
    return table


def comparisons(frame: pd.DataFrame, arm_a: str, arm_b: str, benchmarks: Sequence[str] | None = None,
                average: bool = True, level: float = 0.95, power: float = 0.8) -> list[Comparison]:
    """a - b for every model holding both arms, on every benchmark (+ "average" when ``average`` and there
    are several). The per-benchmark comparisons are the secondary endpoints: their p-values are Holm-adjusted
    within each model. The average is the primary endpoint (a family of one: p_adjusted = p_value)."""
    out = []
    for model in dict.fromkeys(frame["model"]):
        arms = set(frame.loc[frame["model"] == model, "arm"])
        if not {arm_a, arm_b} <= arms:
            continue
        benches = list(benchmarks) if benchmarks is not None else _benchmarks(frame, model, [arm_a, arm_b], AVERAGE)
        sub = frame[(frame["model"] == model) & frame["benchmark"].isin(benches)]
        per = [paired_difference(sub, model, b, arm_a, arm_b, level, power) for b in benches]
        for c, p in zip(per, holm([c.p_value for c in per])):
            c.p_adjusted = p
            c.verdict = verdict(c)
        out += per
        if average and len(benches) > 1:
            c = paired_difference(sub, model, AVERAGE, arm_a, arm_b, level, power)
            c.p_adjusted = c.p_value
            c.verdict = verdict(c)
            out.append(c)
    return out


def pass_at_k_curve(frame: pd.DataFrame, ks: Sequence[int], level: float = 0.95) -> pd.DataFrame:
    """model, arm, benchmark, k, mean, ci_low, ci_high (+ se, df, n_seeds, n_problems, seed_variance_measured):
    the unbiased pass@k per problem and seed, then the accuracy interval machinery."""
    from verl_bench.analysis.curves import pass_at_k_curve as curve

    return curve(frame, ks, level)


def maj_at_k_curve(frame: pd.DataFrame, ks: Sequence[int], level: float = 0.95) -> pd.DataFrame:
    """As ``pass_at_k_curve`` for maj@k: the majority answer of the first k samples is correct (0/1)."""
    from verl_bench.analysis.curves import maj_at_k_curve as curve

    return curve(frame, ks, level)
