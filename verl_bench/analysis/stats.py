"""Accuracy per arm and paired differences between arms from the tidy per-sample frame: the frame -> the
(seed x problem) arrays of ``verl_bench.analysis.intervals`` (the statistical model and its measured
coverage are described there) -> plain dataclasses and tables, with the method written beside each number.

One seed per arm, small benchmarks and the "average" endpoint: see ``intervals``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from verl_bench.analysis import smallsample
from verl_bench.analysis.intervals import (  # noqa: F401 (the array core, re-exported)
    arm_interval,
    holm,
    min_detectable_difference,
    paired_interval,
    residual_mean_square,
    satterthwaite,
    seed_moments,
    seed_sd,
    t_interval,
    variance_terms,
)
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
