"""pass@k and maj@k curves with intervals: a per-problem, per-seed value, then the accuracy machinery of
``stats`` (the same problem and seed terms as an accuracy).

pass@k per problem and seed is the unbiased estimator 1 - C(n-c, k)/C(n, k) from its n samples; maj@k is
1 when the most frequent extracted answer among the first k samples (ties: the first seen) is correct.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.special import gammaln

from verl_bench.analysis import stats
from verl_bench.answers import normalize_answer

KEYS = ["model", "arm", "benchmark", "seed", "step", "problem"]


def _curve(values: pd.DataFrame, ks: Sequence[int], level: float) -> pd.DataFrame:
    """values: KEYS + k + value rows -> one interval per model x arm x benchmark x k."""
    rows = []
    for (model, arm, bench, k), g in values.groupby(["model", "arm", "benchmark", "k"], sort=False):
        y, seeds, problems, _ = stats.seed_problem_matrix(g, model, arm, bench, value="value")
        trained = arm != stats.UNTRAINED
        r = stats.arm_interval([y], level, seeds_vary=trained)
        rows.append({"model": model, "arm": arm, "benchmark": bench, "k": int(k), "mean": float(r["mean"]),
                     "ci_low": float(r["ci_low"]), "ci_high": float(r["ci_high"]), "se": float(r["se"]),
                     "df": float(r["df"]), "n_seeds": len(seeds), "n_problems": len(problems),
                     "seed_variance_measured": len(seeds) >= 2 or not trained})
    cols = ["model", "arm", "benchmark", "k", "mean", "ci_low", "ci_high", "se", "df", "n_seeds", "n_problems",
            "seed_variance_measured"]
    return pd.DataFrame(rows, columns=cols).sort_values(["model", "arm", "benchmark", "k"], kind="stable",
                                                         ignore_index=True)


def unbiased_pass_at_k(n: np.ndarray, c: np.ndarray, k: int) -> np.ndarray:
    """Vectorised ``verl_bench.evaluate.metrics.pass_at_k``: 1 - C(n-c, k)/C(n, k) via log-gamma (0 <= c <= n,
    k <= n)."""
    n, c = np.asarray(n, float), np.asarray(c, float)
    miss = n - c
    ok = miss >= k
    safe = np.where(ok, miss, k)
    log_ratio = gammaln(safe + 1) - gammaln(safe - k + 1) - gammaln(n + 1) + gammaln(n - k + 1)
    return np.where(ok, 1.0 - np.exp(log_ratio), 1.0)


def pass_at_k_curve(frame: pd.DataFrame, ks: Sequence[int], level: float = 0.95) -> pd.DataFrame:
    counts = frame.groupby(KEYS, sort=False)["correct"].agg(["size", "sum"]).reset_index()
    parts = [counts[KEYS].assign(k=k, value=unbiased_pass_at_k(counts["size"], counts["sum"].round(), k))[
        counts["size"] >= k] for k in ks]
    values = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*KEYS, "k", "value"])
    return _curve(_drop_short(values, frame), ks, level)


def maj_at_k_values(frame: pd.DataFrame, ks: Sequence[int]) -> pd.DataFrame:
    """KEYS + k + value: 1.0 when the most frequent normalised answer among a problem's first k samples (ties:
    the answer seen first; empty answers do not vote) is correct at its first sample, as
    ``verl_bench.evaluate.metrics.majority_vote`` decides, for every problem x seed with >= k samples."""
    uniq = {a: normalize_answer(a) or None for a in frame["answer"].dropna().unique() if isinstance(a, str) and a}
    base = frame[KEYS + ["sample", "correct"]].assign(
        vote=frame["answer"].map(uniq), order=frame.groupby(KEYS, sort=False)["sample"].rank(method="first") - 1)
    size = base.groupby(KEYS, sort=False).size().rename("n").reset_index()
    parts = []
    for k in ks:
        first_k = base[base["order"] < k]
        votes = (first_k.dropna(subset=["vote"]).groupby([*KEYS, "vote"], sort=False)
                 .agg(count=("order", "size"), first=("order", "min")).reset_index())
        votes = votes.sort_values(["count", "first"], ascending=[False, True], kind="stable")
        winners = votes.drop_duplicates(KEYS)[[*KEYS, "first"]].merge(
            first_k[[*KEYS, "order", "correct"]], left_on=[*KEYS, "first"], right_on=[*KEYS, "order"])
        cell = size[size["n"] >= k].merge(winners[[*KEYS, "correct"]], on=KEYS, how="left")
        parts.append(cell[KEYS].assign(k=k, value=(cell["correct"].fillna(0.0) > 0).astype(float)))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*KEYS, "k", "value"])


def maj_at_k_curve(frame: pd.DataFrame, ks: Sequence[int], level: float = 0.95) -> pd.DataFrame:
    return _curve(_drop_short(maj_at_k_values(frame, ks), frame), ks, level)


def _drop_short(values: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    """Keep a k for a model x arm x benchmark only where every problem of every seed has >= k samples (a curve
    point over a subset of the problems would not be comparable with its neighbours)."""
    n = frame.groupby(["model", "arm", "benchmark", "seed", "step", "problem"])["sample"].size()
    fewest = n.groupby(["model", "arm", "benchmark"]).min().rename("fewest").reset_index()
    merged = values.merge(fewest, on=["model", "arm", "benchmark"])
    return merged[merged["k"] <= merged["fewest"]].drop(columns="fewest")


__all__ = ["maj_at_k_curve", "pass_at_k_curve"]
