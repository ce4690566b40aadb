"""The study sections: verdict, the paper-layout table, the forest plot, pass@k curves, training dynamics and
the appendix of disagreements. Every number comes from ``verl_bench.analysis.stats``; this module picks the
arms to compare, calls the statistics, and hands tables and figures to the page."""

from __future__ import annotations

import pandas as pd

from verl_bench.report import figures as F
from verl_bench.report import tables as T
from verl_bench.report.sources import BASE_ARM, REFERENCE_ARM

# training-dynamics panels: (title, metric names in the order tried); the first one logged is drawn, else the
# first logged metric whose name holds a panel's keyword (DYNAMICS_KEYWORDS)
DYNAMICS_KEYWORDS = {"truncated responses (fraction)": ("trunc",),
                     "groups with all-equal rewards (VERL's bonus cannot act)": ("all_equal", "equal_reward",
                                                                                  "zero_std")}
DYNAMICS_PANELS = [
    ("reward", ["reward/mean"]),
    ("validation accuracy", ["val/accuracy"]),
    ("response length (tokens)", ["response_length", "response/length"]),
    ("truncated responses (fraction)", ["response/truncated", "truncated_frac", "response/truncated_frac",
                                        "truncation"]),
    ("entropy", ["entropy"]),
    ("KL to the reference", ["kl"]),
    ("clip fraction", ["clip_frac"]),
    ("grad norm", ["grad_norm"]),
    ("groups with all-equal rewards (VERL's bonus cannot act)", ["groups/all_equal", "groups/all_equal_frac",
                                                                  "verl/frac_all_equal", "all_equal_frac"]),
    ("ER (effective rank)", ["rank/er"]),
    ("ERV (rank velocity)", ["rank/erv"]),
    ("ERA (rank acceleration)", ["rank/era"]),
    ("β (mean)", ["verl/beta_mean"]),
    ("Φ (mean)", ["verl/phi_mean"]),
]
UNMEASURED = " Seed variance not measured (one training seed): the intervals cover problems and samples only."
APPENDIX_PER_PAIR = 8  # problems shown per model x comparison (all in the CSV, up to APPENDIX_CSV)
APPENDIX_CSV = 500
RESPONSE_CHARS = 1200  # per response on the page


def plan_study(samples: pd.DataFrame, meta: dict) -> dict:
    """Models, arms (base first), benchmarks (+ average), the reference arm and the arms compared with it."""
    present = list(dict.fromkeys(samples["arm"]))
    declared = [a for a in meta.get("arms", []) if a in present]
    arms = ([BASE_ARM] if BASE_ARM in present else []) + declared + [a for a in present
                                                                     if a not in declared and a != BASE_ARM]
    trained = [a for a in arms if a != BASE_ARM]
    compare = (meta.get("primary") or {}).get("compare")
    if compare and all(a in arms for a in compare):
        primary_a, reference = compare
    else:
        reference = REFERENCE_ARM if REFERENCE_ARM in trained else (trained[0] if trained else arms[0])
        others = [a for a in trained if a != reference]
        primary_a = others[0] if others else None
    compared = ([primary_a] if primary_a else []) + [a for a in trained if a not in (reference, primary_a)]
    benches = list(dict.fromkeys(samples["benchmark"]))
    declared_b = [b for b in meta.get("benchmarks", []) if b in benches]
    benches = declared_b + [b for b in benches if b not in declared_b]
    models = [m for m in meta.get("models", {}) if m in set(samples["model"])]
    models += [m for m in dict.fromkeys(samples["model"]) if m not in models]
    return {"models": models, "arms": arms, "trained": trained, "reference": reference, "compared": compared,
            "benchmarks": benches}


def study_sections(samples, dynamics, out_dir, meta, ctx, progress) -> dict:
    from verl_bench.analysis import stats

    samples = stats.last_step(samples)  # one checkpoint per training run: the statistics compare runs
    plan = plan_study(samples, meta)
    primary = dict(meta.get("primary") or {})
    primary.setdefault("benchmark", "average")
    primary.setdefault("metric", "accuracy")
    primary_bench = primary["benchmark"] or "average"
    columns = plan["benchmarks"] + (["average"] if len(plan["benchmarks"]) > 1 else [])

    progress(f"report: accuracy of {len(plan['models'])} model(s) x {len(plan['arms'])} arm(s) on "
             f"{len(plan['benchmarks'])} benchmark(s)")
    acc = T.accuracy_long(stats.accuracy_table(samples))
    ctx["tables"].append(T.write_table(acc, out_dir, "accuracy", "accuracy per model x arm x benchmark"))

    comps = []
    for arm in plan["compared"]:
        progress(f"report: comparing {arm} with {plan['reference']}")
        comps += stats.comparisons(samples, arm, plan["reference"], benchmarks=plan["benchmarks"],
                                   average=len(plan["benchmarks"]) > 1)
    comp = T.comparison_frame(comps)
    if not comp.empty:
        ctx["tables"].append(T.write_table(comp, out_dir, "comparisons",
                                           "every comparison (Δ, interval, p, Holm-adjusted p, MDE, verdict)"))
    if primary_bench not in columns:
        primary_bench = columns[-1]
    verdicts = T.verdict_rows(comp, primary_bench) if not comp.empty else []
    unmeasured = not comp.empty and not comp["seed_variance_measured"].all()
    if unmeasured:
        ctx["notes"].append("Seed variance was not measured: at least one arm has a single training seed, so the "
                            "intervals cover problems and samples only, not the spread between training runs. "
                            "Run at least 3 seeds per arm before reading a difference as a property of the method.")

    section = {"plan": plan, "primary": {**primary, "benchmark": primary_bench}, "verdicts": verdicts,
               "seed_variance_measured": not unmeasured,
               "paper": T.paper_table(acc, comp, plan["models"], plan["arms"], columns),
               "figures": {}, "dynamics": [], "dynamics_missing": [], "appendix": []}
    paper = section["paper"]
    ctx["tables"].append(T.write_table(
        pd.DataFrame([[r["model"], r["label"], *[c["text"] for c in r["cells"]]] for r in paper["rows"]],
                     columns=["model", "row", *paper["columns"]]), out_dir, "paper_table",
        "the paper-layout table as shown (points; * significant after Holm)"))
    if verdicts:
        ctx["tables"].append(T.write_table(pd.DataFrame(verdicts), out_dir, "verdict",
                                           f"the verdict on the primary endpoint ({primary_bench})"))
    if not comp.empty:
        progress("report: forest plot")
        section["figures"]["forest"] = F.save_figure(
            F.forest_figure(comp, columns), out_dir, "forest",
            "Δ per benchmark", "Δ accuracy (points) with its interval per benchmark and model; filled: significant "
                               f"after Holm's correction at {T.ALPHA}." + (UNMEASURED if unmeasured else ""))
    section["passk"] = _passk(samples, plan, out_dir, ctx, progress, stats)
    if dynamics is not None and len(dynamics):
        _dynamics(dynamics, plan, out_dir, ctx, section, progress)
    section["appendix"] = _appendix(samples, plan, out_dir, ctx, progress)
    return section


def _passk(samples, plan, out_dir, ctx, progress, stats) -> dict:
    n = int(samples.groupby(["model", "arm", "seed", "benchmark", "problem"])["sample"].nunique().min())
    if n < 2:
        return {"n": n, "figures": []}
    ks = [k for k in (2 ** i for i in range(12)) if k <= n]
    progress(f"report: pass@k for k in {ks}")
    curves = stats.pass_at_k_curve(samples, ks)
    measured = curves["seed_variance_measured"].all() if "seed_variance_measured" in curves else True
    ctx["tables"].append(T.write_table(curves, out_dir, "pass_at_k", "pass@k per model x arm x benchmark"))
    figs = [F.save_figure(F.pass_at_k_figure(curves, plan["arms"], m), out_dir, f"pass_at_k_{T.slug(m)}",
                          f"pass@k: {m}", f"pass@k (unbiased estimator from {n} samples per problem) with its "
                                          "interval, the untrained base model included."
                          + ("" if measured else UNMEASURED))
            for m in plan["models"] if m in set(curves["model"])]
    return {"n": n, "figures": figs}


def _dynamics(dynamics, plan, out_dir, ctx, section, progress):
    progress("report: training dynamics")
    bands = T.dynamics_bands(dynamics)
    ctx["tables"].append(T.write_table(bands, out_dir, "dynamics", "training dynamics: mean, lowest and highest "
                                                                   "seed per step"))
    logged = set(bands["metric"])
    panels = []
    for title, names in DYNAMICS_PANELS:
        found = next((n for n in names if n in logged), None) or next(
            (n for n in sorted(logged) for kw in DYNAMICS_KEYWORDS.get(title, ()) if kw in n), None)
        (panels.append((title, found)) if found else section["dynamics_missing"].append(title))
    n_seeds = int(bands["n_seeds"].max()) if len(bands) else 0
    for m in plan["models"]:
        b = bands[bands["model"] == m]
        if b.empty or not panels:
            continue
        section["dynamics"].append(F.save_figure(
            F.dynamics_figure(b, panels, plan["arms"], m), out_dir, f"dynamics_{T.slug(m)}", f"training dynamics: {m}",
            "Line: the mean over seeds per step; band: the lowest to the highest seed." if n_seeds > 1 else
            "One seed per arm: no band (seed variance not measured)."))


def _appendix(samples, plan, out_dir, ctx, progress) -> list[dict]:
    progress("report: problems where the arms disagree")
    blocks, full = [], []
    for m in plan["models"]:
        for a in plan["compared"]:
            d = T.disagreements(samples, m, a, plan["reference"], APPENDIX_CSV)
            if d.empty:
                continue
            full.append(d.assign(arm_a=a, arm_b=plan["reference"]))
            shown = d.head(APPENDIX_PER_PAIR).to_dict("records")
            for r in shown:
                for k in ("winner_response", "loser_response"):
                    text = str(r.get(k, ""))
                    r[k] = text if len(text) <= RESPONSE_CHARS else text[:RESPONSE_CHARS] + " […]"
                r["rate_a"], r["rate_b"] = T.pct(r[f"solve_rate_{a}"]), T.pct(r[f"solve_rate_{plan['reference']}"])
            blocks.append({"model": m, "arm_a": a, "arm_b": plan["reference"], "count": len(d), "rows": shown})
    if full:
        ctx["tables"].append(T.write_table(pd.concat(full, ignore_index=True), out_dir, "disagreements",
                                           "problems where the arms disagree, with responses"))
    return blocks
