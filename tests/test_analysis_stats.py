"""verl_bench.analysis.stats / curves / smallsample: against scipy and hand computation, and by simulation
(the 95% interval of a paired difference covers the population difference in 92-98% of 1000 simulated
studies; the test of a zero effect rejects in 3-7%)."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import optimize as sps_optimize
from scipy import stats as sps

from verl_bench.analysis import curves, smallsample, stats
from verl_bench.analysis.stats import AnalysisError
from verl_bench.evaluate.metrics import majority_vote, pass_at_k


# ------------------------------------------------------------------------------------------ array core
def test_residual_mean_square_and_variance_terms_match_two_way_anova_by_hand():
    y = np.array([[0.2, 0.5, 0.9, 0.4], [0.3, 0.7, 1.0, 0.4], [0.1, 0.6, 0.7, 0.2]])
    S, P = y.shape
    grand = y.mean()
    ss_seed = P * sum((y[s].mean() - grand) ** 2 for s in range(S))
    ss_prob = S * sum((y[:, i].mean() - grand) ** 2 for i in range(P))
    ss_total = sum((y[s, i] - grand) ** 2 for s in range(S) for i in range(P))
    ms_res = (ss_total - ss_seed - ss_prob) / ((S - 1) * (P - 1))
    ms_seed, ms_prob = ss_seed / (S - 1), ss_prob / (P - 1)
    assert stats.residual_mean_square(y) == pytest.approx(ms_res)
    # the variance of the grand mean under y = mu + a_i + b_s + e_si, by the ANOVA moment estimators:
    # var(a)/P + var(b)/S + var(e)/(S P) = (MS_prob + MS_seed - MS_res) / (S P)
    var, df = stats.variance_terms([y.mean(0)], [1.0], [[y]])
    assert var == pytest.approx((ms_prob + ms_seed - ms_res) / (S * P))
    # Satterthwaite at the fitted components: problems (MS_prob - MS_res)/(S P) with P-1 df, runs MS_seed/(S P)
    # with S-1 df (both positive here)
    prob, runs = (ms_prob - ms_res) / (S * P), ms_seed / (S * P)
    assert prob > 0 and ms_seed > ms_res
    assert df == pytest.approx((prob + runs) ** 2 / (prob ** 2 / (P - 1) + runs ** 2 / (S - 1)))
    assert stats.seed_sd([y], [1.0]) == pytest.approx(math.sqrt((ms_seed - ms_res) / P))


def test_variance_terms_without_seed_differences():
    y = np.tile([0.2, 0.5, 0.9, 0.4], (3, 1))  # every run the same: all the variance is the problems'
    var, df = stats.variance_terms([y.mean(0)], [1.0], [[y]])
    assert var == pytest.approx(y[0].var(ddof=1) / 4) and df == pytest.approx(3)
    assert stats.seed_sd([y], [1.0]) == 0


def test_satterthwaite():
    assert stats.satterthwaite([(0.01, 10), (0.02, 3)]) == pytest.approx(0.03 ** 2 / (0.01 ** 2 / 10 + 0.02 ** 2 / 3))
    assert stats.satterthwaite([(0.01, 10), (0.0, 0)]) == pytest.approx(10)  # a zero term adds nothing
    assert np.isinf(stats.satterthwaite([(0.0, 5)]))


def test_one_seed_arm_interval_is_the_t_interval_of_problem_means():
    y = np.random.default_rng(0).binomial(4, 0.4, size=(1, 60)) / 4
    r = stats.arm_interval([y], 0.95)
    lo, hi = sps.t.interval(0.95, 59, loc=y.mean(), scale=sps.sem(y[0]))
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((lo, hi))
    assert r["df"] == pytest.approx(59) and np.isnan(r["seed_sd"])


def test_one_seed_paired_interval_is_scipys_paired_t_test():
    rng = np.random.default_rng(1)
    a, b = rng.binomial(8, 0.5, size=(1, 80)) / 8, rng.binomial(8, 0.45, size=(1, 80)) / 8
    r = stats.paired_interval([a], [b], 0.9)
    ref = sps.ttest_rel(a[0], b[0])
    ci = ref.confidence_interval(0.9)
    assert r["p_value"] == pytest.approx(ref.pvalue)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert not r["measured"]


def test_intervals_stop_at_the_range_of_a_proportion():
    """Two seeds far apart (df ~ 1, t ~ 12.7): the uncut t interval would reach below 0 and past 1; the
    accuracy interval is cut to [0, 1] and the difference's to [-1, 1], the se, df and p-value unchanged."""
    rng = np.random.default_rng(3)
    far = np.stack([rng.binomial(4, 0.9, 64) / 4, rng.binomial(4, 0.4, 64) / 4])  # 2 runs: 90% and 40%
    near = np.stack([rng.binomial(4, 0.6, 64) / 4, rng.binomial(4, 0.62, 64) / 4])
    r = stats.arm_interval([far])
    q = sps.t.ppf(0.975, r["df"])
    assert r["mean"] - q * r["se"] < 0 and r["mean"] + q * r["se"] > 1  # the uncut interval leaves [0, 1]
    assert (r["ci_low"], r["ci_high"]) == (0.0, 1.0)
    d = stats.paired_interval([near], [far])
    q = sps.t.ppf(0.975, d["df"])
    assert d["delta"] - q * d["se"] < -1 and d["delta"] + q * d["se"] > 1
    assert (d["ci_low"], d["ci_high"]) == (-1.0, 1.0)
    assert d["p_value"] == pytest.approx(2 * sps.t.sf(abs(d["delta"]) / d["se"], d["df"]))
    inside = stats.arm_interval([near])  # an interval inside the range is untouched
    q = sps.t.ppf(0.975, inside["df"])
    assert inside["ci_high"] - inside["mean"] == pytest.approx(q * inside["se"])


def test_paired_interval_with_seeds_by_hand():
    a = np.array([[0.25, 0.75, 0.25, 0.5], [0.75, 1.0, 0.75, 1.0]])  # run 2 is better on every problem
    b = np.array([[0.25, 0.75, 0.25, 0.5], [0.5, 0.5, 0.0, 0.5], [0.25, 1.0, 0.25, 0.25]])
    d = a.mean(0) - b.mean(0)
    P = 4
    var = d.var(ddof=1) / P  # the problem term of the paired differences ...
    problem_fit, runs = var, []
    for y in (a, b):
        S = y.shape[0]
        v1 = y.mean(1).var(ddof=1)  # variance of the run means: sigma2_shift + noise
        resid = y - y.mean(1, keepdims=True) - y.mean(0, keepdims=True) + y.mean()
        noise = (resid ** 2).sum() / ((S - 1) * (P - 1)) / P
        var += (v1 - noise) / S  # ... plus each arm's run-shift variance over S (unbiased, not clamped)
        problem_fit -= noise / S  # the problem term less the runs' sampling noise, which the run term holds
        runs.append(((noise + max(v1 - noise, 0)) / S, S - 1))
    fitted = [(max(problem_fit, 0), P - 1), *runs]
    df = sum(v for v, _ in fitted) ** 2 / sum(v ** 2 / k for v, k in fitted if v > 0)
    assert var > d.var(ddof=1) / P  # the runs differ: wider than the problems alone
    r = stats.paired_interval([a], [b])
    assert r["delta"] == pytest.approx(d.mean()) and r["se"] == pytest.approx(math.sqrt(var))
    assert r["df"] == pytest.approx(df)
    q = sps.t.ppf(0.975, df)
    assert r["ci_high"] == pytest.approx(min(d.mean() + q * math.sqrt(var), 1.0))  # cut at the range of a
    assert r["ci_low"] == pytest.approx(max(d.mean() - q * math.sqrt(var), -1.0))  # difference of proportions
    assert r["p_value"] == pytest.approx(2 * sps.t.sf(abs(d.mean()) / math.sqrt(var), df))
    assert r["measured"]


def test_min_detectable_difference_and_holm():
    assert stats.min_detectable_difference(0.01, 20) == pytest.approx(
        (sps.t.ppf(0.975, 20) + sps.t.ppf(0.8, 20)) * 0.01)
    assert stats.min_detectable_difference(1.0, 1e9) == pytest.approx(1.959964 + 0.841621, rel=1e-5)
    # hand: sorted 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1 -> max(0.06, 0.04)
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, None, 0.4]) == [pytest.approx(0.8), None, pytest.approx(0.8)]
    assert stats.holm([0.9, 0.8]) == [1.0, 1.0]


def _comparison(lo, hi, p_adjusted=None):
    return stats.Comparison("a", "b", "m", "x", (lo + hi) / 2, lo, hi, 0.1, 10, 0.01, p_adjusted, 0.1, 3, 3, 50,
                            4, "", True, "")


def test_verdict():
    assert stats.verdict(_comparison(0.01, 0.05)) == "better"
    assert stats.verdict(_comparison(-0.05, -0.01)) == "worse"
    assert stats.verdict(_comparison(-0.01, 0.05)) == stats.NO_DIFFERENCE
    assert stats.verdict(_comparison(0.01, 0.05, p_adjusted=0.2)) == stats.NO_DIFFERENCE  # not after Holm
    assert stats.verdict(_comparison(0.01, 0.05, p_adjusted=0.01)) == "better"


# ------------------------------------------------------------------------------------------ small samples
def test_wilson_matches_scipy():
    for k, n in [(0, 10), (3, 10), (17, 40), (40, 40)]:
        ci = sps.binomtest(k, n).proportion_ci(0.95, method="wilson")
        assert smallsample.wilson(k, n) == pytest.approx((ci.low, ci.high))


def test_sign_flip_on_binary_pairs_is_the_exact_sign_test():
    a = np.array([1] * 9 + [0] * 3 + [1] * 10 + [0] * 8)
    b = np.array([0] * 9 + [1] * 3 + [1] * 10 + [0] * 8)  # 9 problems only a solves, 3 only b
    assert smallsample.sign_flip_p(a - b) == pytest.approx(sps.binomtest(9, 12, 0.5).pvalue)


def test_sign_flip_matches_brute_force_enumeration():
    d = np.array([0.25, -0.5, 0.75, 0.25, 0.5, 0.0, 1.0, -0.25, 0.5, 0.75, 0.125])
    total = abs(d.sum())
    flips = [abs(np.dot(s, d)) >= total - 1e-9 for s in itertools.product((-1, 1), repeat=len(d))]
    assert smallsample.sign_flip_p(d) == pytest.approx(np.mean(flips))


# ------------------------------------------------------------------------------------------ frames
def _frame(arms, seeds, problems, samples, rng, benchmarks=("b1",), step=5):
    rows = []
    for arm, p_arm in arms.items():
        for seed in seeds.get(arm, seeds.get("*")):
            for bench in benchmarks:
                for i in range(problems):
                    for s in range(samples):
                        ok = float(rng.random() < p_arm)
                        rows.append({"model": "m", "arm": arm, "seed": seed, "trial": "", "step": step,
                                     "benchmark": bench, "problem": f"q{i}", "sample": s, "correct": ok,
                                     "answer": "7" if ok else str(rng.integers(3)), "gold": "7"})
    return pd.DataFrame(rows)


def test_one_seed_per_arm_is_flagged_as_seed_variance_not_measured():
    rng = np.random.default_rng(2)
    f = _frame({"grpo": 0.6, "verl": 0.5}, {"*": [1]}, 80, 4, rng)
    c = stats.paired_difference(f, "m", "b1", "grpo", "verl")
    assert not c.seed_variance_measured and "not measured" in c.note and "seeds" not in c.method
    assert c.df == pytest.approx(79)
    e = stats.arm_accuracy(f, "m", "grpo", "b1")
    assert not e.seed_variance_measured and e.seed_sd is None
    # the untrained base model has no training seed: a 3-seed arm against it has its seed term measured
    f2 = pd.concat([_frame({"grpo": 0.6}, {"*": [1, 2, 3]}, 80, 4, rng), _frame({"base": 0.4}, {"*": [0]}, 80, 4, rng)])
    c2 = stats.paired_difference(f2, "m", "b1", "grpo", "base")
    assert c2.seed_variance_measured and "seeds" in c2.method and c2.n_seeds_a == 3 and c2.n_seeds_b == 1


def test_one_seed_with_real_seed_effects_still_says_not_measured():
    # runs that differ a lot (seed shifts of +-15 points): with one run per arm nothing can tell, so the report
    # must say the seed variance was not measured rather than print a narrow interval as if it were
    rng = np.random.default_rng(3)
    f = pd.concat([_frame({"grpo": 0.65}, {"*": [7]}, 100, 4, rng), _frame({"verl": 0.35}, {"*": [8]}, 100, 4, rng)])
    comps = stats.comparisons(f, "grpo", "verl")
    assert [c.seed_variance_measured for c in comps] == [False]


def test_frame_level_functions_agree_with_the_array_core():
    rng = np.random.default_rng(4)
    f = _frame({"grpo": 0.6, "verl": 0.5}, {"*": [1, 2, 3]}, 60, 4, rng, benchmarks=("b1", "b2"))
    f = f[~((f["benchmark"] == "b2") & (f["problem"].isin(["q0", "q1"])))]  # b2 has 58 problems
    y, seeds, _, n = stats.seed_problem_matrix(f, "m", "grpo", "b1")
    assert y.shape == (3, 60) and seeds == [1, 2, 3] and n == 4
    e = stats.arm_accuracy(f, "m", "grpo", "b1")
    r = stats.arm_interval([y])
    assert e.mean == pytest.approx(float(r["mean"])) and e.ci_low == pytest.approx(float(r["ci_low"]))
    avg = stats.arm_accuracy(f, "m", "grpo", "average")
    b1, b2 = (f[(f["arm"] == "grpo") & (f["benchmark"] == b)]["correct"].mean() for b in ("b1", "b2"))
    assert avg.mean == pytest.approx((b1 + b2) / 2) and avg.n_problems == 118  # unweighted over benchmarks
    comps = stats.comparisons(f, "grpo", "verl")
    assert [c.benchmark for c in comps] == ["b1", "b2", "average"]
    assert [c.p_adjusted for c in comps[:2]] == pytest.approx(stats.holm([c.p_value for c in comps[:2]]))
    assert comps[2].p_adjusted == comps[2].p_value  # the primary endpoint
    assert all(c.mde > 0 and c.verdict for c in comps)
    table = stats.accuracy_table(f, primary="average")
    assert list(table.columns.get_level_values(0).unique()) == ["average", "b1", "b2"]
    assert table.loc[("m", "grpo"), ("b1", "mean")] == pytest.approx(e.mean)


def test_pairing_uses_shared_problems_only_and_says_so():
    rng = np.random.default_rng(6)
    f = _frame({"grpo": 0.6, "verl": 0.5}, {"*": [1, 2]}, 60, 2, rng)
    f = f[~((f["arm"] == "verl") & (f["problem"] == "q3"))]
    c = stats.paired_difference(f, "m", "b1", "grpo", "verl")
    assert c.n_problems == 59 and "59 shared problems" in c.note


def test_several_checkpoints_per_seed_are_refused_and_last_step_keeps_one():
    rng = np.random.default_rng(7)
    f = pd.concat([_frame({"grpo": 0.6}, {"*": [1]}, 10, 1, rng, step=5),
                   _frame({"grpo": 0.6}, {"*": [1]}, 10, 1, rng, step=10)])
    with pytest.raises(AnalysisError, match="several checkpoints"):
        stats.arm_accuracy(f, "m", "grpo", "b1")
    assert set(stats.last_step(f)["step"]) == {10}
    with pytest.raises(AnalysisError, match="no samples"):
        stats.arm_accuracy(f, "m", "nope", "b1")


def test_small_benchmark_one_seed_uses_exact_and_score_methods():
    rng = np.random.default_rng(8)
    f = _frame({"grpo": 0.7, "verl": 0.4}, {"*": [1]}, 30, 1, rng)
    c = stats.paired_difference(f, "m", "b1", "grpo", "verl")
    a = f[f["arm"] == "grpo"].sort_values("problem")["correct"].to_numpy()
    b = f[f["arm"] == "verl"].sort_values("problem")["correct"].to_numpy()
    assert "exact sign-flip" in c.method
    assert c.p_value == pytest.approx(sps.binomtest(int(((a == 1) & (b == 0)).sum()),
                                                    int((a != b).sum()), 0.5).pvalue)
    ci = sps.ttest_rel(a, b).confidence_interval(0.95)
    assert (c.ci_low, c.ci_high) == pytest.approx((ci.low, ci.high))
    e = stats.arm_accuracy(f, "m", "grpo", "b1")
    assert "Wilson" in e.method and (e.ci_low, e.ci_high) == pytest.approx(smallsample.wilson(int(a.sum()), 30))


def test_vectorised_pass_at_k_matches_the_per_problem_estimator():
    n = np.array([1, 4, 8, 8, 16, 16, 64])
    c = np.array([0, 2, 0, 8, 3, 15, 10])
    for k in (1, 2, 4, 8):
        ok = k <= n
        got = curves.unbiased_pass_at_k(n[ok], c[ok], k)
        assert got == pytest.approx([pass_at_k(int(a), int(b), k) for a, b in zip(n[ok], c[ok])], abs=1e-12)


def test_pass_and_maj_at_k_curves():
    rng = np.random.default_rng(9)
    f = _frame({"grpo": 0.3}, {"*": [1, 2]}, 40, 8, rng)
    curve = stats.pass_at_k_curve(f, [1, 2, 4, 8, 16])
    assert list(curve["k"]) == [1, 2, 4, 8]  # k beyond the 8 samples is left out
    assert curve["mean"].iloc[0] == pytest.approx(f["correct"].mean())  # pass@1 = accuracy
    c = f.groupby(["seed", "problem"])["correct"].sum()
    assert curve["mean"].iloc[2] == pytest.approx(np.mean([pass_at_k(8, int(x), 4) for x in c]))
    assert (curve["mean"].diff().dropna() >= 0).all() and (curve["ci_low"] <= curve["mean"]).all()
    # maj@k by hand: one problem, answers 3, 7, 7, 3, 3 with 7 correct
    g = pd.DataFrame({"model": "m", "arm": "base", "seed": 0, "trial": "", "step": 0, "benchmark": "b",
                      "problem": ["p"] * 5 + ["q"] * 5, "sample": list(range(5)) * 2,
                      "correct": [0, 1, 1, 0, 0] + [1, 1, 1, 1, 1], "answer": ["3", "7", "7", "3", "3"] + ["7"] * 5,
                      "gold": "7"})
    maj = stats.maj_at_k_curve(g, [1, 3, 5]).set_index("k")["mean"]
    # k=1: p votes 3 (wrong), q right -> 0.5; k=3: p votes 7 -> 1.0; k=5: p votes 3 (3 of 5) -> 0.5
    assert maj.to_dict() == {1: 0.5, 3: 1.0, 5: 0.5}


def test_maj_at_k_values_match_majority_vote_per_problem():
    rng = np.random.default_rng(10)
    rows = []
    for seed, i in itertools.product((1, 2), range(40)):
        gold = str(rng.integers(3))
        for s in rng.permutation(6):  # rows in any order: sampling order is the sample index
            ans = rng.choice(["0", "1", "2", "", None, "\\frac{1}{2}", "0.5"])
            rows.append({"model": "m", "arm": "a", "benchmark": "b", "seed": seed, "step": 1, "problem": f"q{i}",
                         "sample": int(s), "answer": ans, "correct": float(ans == gold)})
    f = pd.DataFrame(rows)
    got = curves.maj_at_k_values(f, [1, 3, 6]).set_index(["seed", "problem", "k"])["value"]
    for (seed, problem), g in f.sort_values("sample").groupby(["seed", "problem"]):
        for k in (1, 3, 6):
            w = majority_vote([a if isinstance(a, str) else None for a in g["answer"].iloc[:k]])
            expected = float(w is not None and g["correct"].iloc[w] > 0)
            assert got[(seed, problem, k)] == expected, (seed, problem, k)


# ------------------------------------------------------------------------------------------ simulation
def expected_accuracy(mean_logit: float, sd_logit: float) -> float:
    """E[expit(X)], X ~ N(mean, sd^2), by Gauss-Hermite quadrature."""
    x, w = np.polynomial.hermite_e.hermegauss(120)
    return float((w / w.sum() / (1 + np.exp(-(mean_logit + sd_logit * x)))).sum())


# the study model: problem difficulty theta_i ~ N(MU, TAU^2) (logit), arm a adds delta_i ~ N(DELTA, SD_D^2) per
# problem, each training run shifts every problem by b_s ~ N(0, seed_sd^2), a run x problem term
# eta ~ N(0, SD_ETA^2), and SAMPLES graded samples per problem
MU, TAU, SD_D, SD_ETA, PROBLEMS, SAMPLES, DELTA, SEED_SD = -0.3, 1.2, 0.3, 0.3, 150, 4, 0.3, 0.15


def simulate(rng, studies, seeds, seed_sd, delta, problems=PROBLEMS, shifts=None):
    """(studies, seeds, problems) per-problem accuracies of arms a and b, and the population difference.
    ``shifts``: the runs' (a, b) shifts, (studies, seeds_arm, 1) each, when several benchmarks share runs."""
    theta = rng.normal(MU, TAU, (studies, 1, problems))
    arm_effect = rng.normal(delta, SD_D, (studies, 1, problems))
    if shifts is None:
        shifts = [rng.normal(0, seed_sd, (studies, seeds, 1)) for _ in "ab"]

    def arm(effect, shift):
        logit = theta + effect + shift + rng.normal(0, SD_ETA, (studies, shift.shape[1], problems))
        return rng.binomial(SAMPLES, 1 / (1 + np.exp(-logit))) / SAMPLES

    ya, yb = arm(arm_effect, shifts[0]), arm(0.0, shifts[1])
    spread = TAU ** 2 + seed_sd ** 2 + SD_ETA ** 2
    truth = expected_accuracy(MU + delta, math.sqrt(spread + SD_D ** 2)) - expected_accuracy(MU, math.sqrt(spread))
    return ya, yb, truth


def zero_effect_shift(seed_sd):
    """The mean logit effect at which arm a, which differs from b problem by problem (SD_D), is exactly as
    accurate as b over the population: a zero population difference."""
    spread = TAU ** 2 + seed_sd ** 2 + SD_ETA ** 2
    target = expected_accuracy(MU, math.sqrt(spread))
    return sps_optimize.brentq(lambda c: expected_accuracy(MU + c, math.sqrt(spread + SD_D ** 2)) - target, -1, 1)


def test_population_difference_matches_monte_carlo():
    rng = np.random.default_rng(11)
    n = 2_000_000
    x = rng.normal(MU, TAU, n) + rng.normal(0, SEED_SD, n) + rng.normal(0, SD_ETA, n)
    mc = np.mean(1 / (1 + np.exp(-(x + rng.normal(DELTA, SD_D, n))))) - np.mean(1 / (1 + np.exp(-x)))
    _, _, truth = simulate(rng, 1, 1, SEED_SD, DELTA)
    assert truth == pytest.approx(mc, abs=1.5e-3)


SCENARIOS = [(3, SEED_SD), (3, 0.0), (8, SEED_SD), (8, 0.0), (1, 0.0)]


@pytest.mark.parametrize("seeds,seed_sd", SCENARIOS)
def test_interval_coverage_and_false_positive_rate_by_simulation(seeds, seed_sd):
    rng = np.random.default_rng(1000 + 10 * seeds + int(100 * seed_sd))
    ya, yb, truth = simulate(rng, 1000, seeds, seed_sd, DELTA)
    r = stats.paired_interval([ya], [yb])
    coverage = np.mean((r["ci_low"] <= truth) & (truth <= r["ci_high"]))
    assert 0.92 <= coverage <= 0.98, f"coverage {coverage:.3f} of {truth:.4f}"
    assert r["measured"] == (seeds > 1)
    za, zb, zero = simulate(rng, 1000, seeds, seed_sd, zero_effect_shift(seed_sd))
    assert zero == pytest.approx(0, abs=1e-9)
    rejected = np.mean(stats.paired_interval([za], [zb])["p_value"] < 0.05)
    assert 0.03 <= rejected <= 0.07, f"rejection rate {rejected:.3f}"


def test_average_over_benchmarks_with_unequal_seeds_covers():
    """The "average" endpoint: 3 benchmarks of 150, 60 and 30 problems evaluated by the same runs (a run's
    shift moves all its benchmarks), 3 runs of arm a against 5 of arm b, 1000 studies."""
    rng = np.random.default_rng(77)
    shifts = [rng.normal(0, SEED_SD, (1000, s, 1)) for s in (3, 5)]
    blocks = [simulate(rng, 1000, None, SEED_SD, DELTA, problems=p, shifts=shifts) for p in (150, 60, 30)]
    r = stats.paired_interval([b[0] for b in blocks], [b[1] for b in blocks])
    truth = np.mean([b[2] for b in blocks])  # the same population on each benchmark
    coverage = np.mean((r["ci_low"] <= truth) & (truth <= r["ci_high"]))
    assert 0.92 <= coverage <= 0.98, f"coverage {coverage:.3f}"
    assert r["measured"] and np.median(r["df"]) < 20  # the seed term, with its few runs, sets the df
