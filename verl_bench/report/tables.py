"""The report's tables: reshaping what ``verl_bench.analysis.stats`` returns into the page's layouts, and one
writer (CSV + parquet). Every number shown comes from the statistics functions; this module only arranges,
formats and selects (the appendix picks problems whose per-arm solve rates differ)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

ALPHA = 0.05  # significance level after Holm's correction


@dataclass
class SavedTable:
    name: str
    title: str
    csv: str  # paths relative to the report folder
    parquet: str


def write_table(df: pd.DataFrame, out_dir: Path, name: str, title: str) -> SavedTable:
    tab_dir = out_dir / "tables"
    tab_dir.mkdir(parents=True, exist_ok=True)
    df = df.reset_index(drop=True)
    df.to_csv(tab_dir / f"{name}.csv", index=False)
    # parquet needs one type per column: mixed object columns (a knob that is a number in one trial and a
    # string in another) are written as strings
    fixed = df.copy()
    for col in fixed.columns:
        if fixed[col].dtype == object and fixed[col].map(type).nunique() > 1:
            fixed[col] = fixed[col].map(lambda v: None if missing(v) else str(v))
    fixed.to_parquet(tab_dir / f"{name}.parquet", index=False)
    return SavedTable(name, title, f"tables/{name}.csv", f"tables/{name}.parquet")


# ------------------------------------------------------------------------------------------ formatting
def missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def pct(x, signed: bool = False) -> str:
    if missing(x):
        return "–"
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def interval(mean, lo, hi, signed: bool = False) -> str:
    """``41.2 ± 3.1`` (points) when the interval is symmetric at the shown precision, else ``41.2 [38.0, 44.9]``."""
    if missing(mean):
        return "–"
    if missing(lo) or missing(hi):
        return pct(mean, signed)
    up, down = round(100 * (hi - mean), 1), round(100 * (mean - lo), 1)
    if abs(up - down) <= 0.1:
        return f"{pct(mean, signed)} ± {max(up, down):.1f}"
    return f"{pct(mean, signed)} [{pct(lo, signed)}, {pct(hi, signed)}]"


def fmt(v) -> str:
    """A table cell: 4 significant digits for floats, "–" for a missing value."""
    if missing(v):
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def slug(s: str) -> str:
    """A file-name-safe form of a model or sweep name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(s))


def p_text(p) -> str:
    if missing(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


# ------------------------------------------------------------------------------------------ layouts
def comparison_frame(comparisons: list) -> pd.DataFrame:
    """The statistics module's Comparison objects as rows, plus ``significant`` (Holm-adjusted p < ALPHA)."""
    df = pd.DataFrame([asdict(c) for c in comparisons])
    if df.empty:
        return df
    p = df["p_adjusted"].where(df["p_adjusted"].notna(), df["p_value"])
    df["significant"] = (p < ALPHA).fillna(False).astype(bool)
    return df


def accuracy_long(table: pd.DataFrame) -> pd.DataFrame:
    """``accuracy_table``'s result as rows model, arm, benchmark, mean, ci_low, ci_high (it may come wide:
    index model x arm, columns (benchmark, statistic))."""
    if {"model", "arm", "benchmark", "mean"} <= set(table.columns):
        return table.reset_index(drop=True)
    wide = table.copy()
    if not isinstance(wide.columns, pd.MultiIndex):
        raise TypeError(f"accuracy_table: unexpected columns {list(wide.columns)[:6]}")
    long = wide.stack(level=0, future_stack=True).reset_index()
    first = [c for c in long.columns if c not in ("mean", "ci_low", "ci_high")]
    return long.rename(columns=dict(zip(first[-1:], ["benchmark"])))


def paper_table(acc: pd.DataFrame, comp: pd.DataFrame, models: list[str], arms: list[str],
                benchmarks: list[str]) -> dict:
    """Rows model x arm and a Δ row per comparison; columns the benchmarks and their average. Returns
    ``{"columns": [...], "rows": [{"model", "label", "kind": "arm"|"delta", "cells": [...]}, ...]}``."""
    cols = [b for b in benchmarks if b in set(acc["benchmark"])]
    cell = acc.set_index(["model", "arm", "benchmark"])
    rows = []
    for model in models:
        for arm in arms:
            if (model, arm) not in cell.index.droplevel(2):
                continue
            cells = []
            for b in cols:
                r = cell.loc[(model, arm, b)] if (model, arm, b) in cell.index else None
                cells.append(_cell("–" if r is None else interval(r["mean"], r["ci_low"], r["ci_high"])))
            rows.append({"model": model, "label": arm, "kind": "arm", "cells": cells})
        if comp.empty:
            continue
        for (a, b_arm), g in comp[comp["model"] == model].groupby(["arm_a", "arm_b"], sort=False):
            by_bench = g.set_index("benchmark")
            cells = []
            for b in cols:
                if b not in by_bench.index:
                    cells.append(_cell("–"))
                    continue
                r = by_bench.loc[b]
                cells.append(_cell(interval(r["delta"], r["ci_low"], r["ci_high"], signed=True)
                                   + ("*" if r["significant"] else ""),
                                   f"p = {p_text(r['p_value'])}, Holm-adjusted p = {p_text(r['p_adjusted'])}",
                                   bool(r["significant"])))
            rows.append({"model": model, "label": f"Δ {a} − {b_arm}", "kind": "delta", "cells": cells})
    return {"columns": cols, "rows": rows}


def _cell(text: str, title: str = "", significant: bool = False) -> dict:
    return {"text": text, "title": title, "significant": significant}


def verdict_rows(comp: pd.DataFrame, benchmark: str) -> list[dict]:
    """One line per model x comparison on the primary benchmark, with the verdict the statistics module gave."""
    rows = []
    for r in comp[comp["benchmark"] == benchmark].itertuples(index=False):
        rows.append({
            "model": r.model, "arm_a": r.arm_a, "arm_b": r.arm_b,
            "delta": interval(r.delta, r.ci_low, r.ci_high, signed=True),
            "p": p_text(r.p_value), "p_adjusted": p_text(r.p_adjusted), "mde": pct(r.mde),
            "seeds": f"{r.n_seeds_a} / {r.n_seeds_b}", "problems": r.n_problems, "samples": r.n_samples,
            "verdict": r.verdict, "seed_variance_measured": bool(r.seed_variance_measured), "method": r.method,
        })
    return rows


def dynamics_bands(dyn: pd.DataFrame) -> pd.DataFrame:
    """Per model x arm x metric x step: the mean over seeds and the lowest and highest seed (a descriptive
    band, not an interval)."""
    d = dyn.dropna(subset=["value"])
    g = d.groupby(["model", "arm", "metric", "step"])["value"]
    out = g.agg(mean="mean", low="min", high="max", n_seeds="count").reset_index()
    return out


def disagreements(samples: pd.DataFrame, model: str, arm_a: str, arm_b: str, limit: int,
                  min_gap: float = 0.5) -> pd.DataFrame:
    """Problems whose solve rate (over seeds and samples) differs by at least ``min_gap`` between two arms,
    largest gap first, with one response of each arm: a correct one from the arm that solves it more often
    and a wrong one from the other."""
    s = samples[(samples["model"] == model) & samples["arm"].isin([arm_a, arm_b])]
    rate = s.groupby(["benchmark", "problem", "arm"])["correct"].mean().unstack("arm")
    if arm_a not in rate or arm_b not in rate:
        return pd.DataFrame()
    rate = rate.dropna(subset=[arm_a, arm_b])
    rate["gap"] = rate[arm_a] - rate[arm_b]
    rate = rate[rate["gap"].abs() >= min_gap]
    rate = rate.reindex(rate["gap"].abs().sort_values(ascending=False, kind="stable").index).head(limit)
    keyed = s.set_index(["benchmark", "problem"]).sort_index()
    rows = []
    for (bench, problem), r in rate.iterrows():
        ex = keyed.loc[(bench, problem)]
        winner, loser = (arm_a, arm_b) if r["gap"] > 0 else (arm_b, arm_a)
        w, lo_ = _pick(ex, winner, 1.0), _pick(ex, loser, 0.0)
        rows.append({"model": model, "benchmark": bench, "problem": problem, "gold": w.get("gold", ""),
                     f"solve_rate_{arm_a}": r[arm_a], f"solve_rate_{arm_b}": r[arm_b],
                     "winner": winner, "winner_answer": w.get("answer", ""), "winner_response": w.get("response", ""),
                     "loser": loser, "loser_answer": lo_.get("answer", ""), "loser_response": lo_.get("response", "")})
    return pd.DataFrame(rows)


def _pick(rows: pd.DataFrame, arm: str, correct: float) -> pd.Series:
    """The first (by seed, sample) response of ``arm`` graded ``correct``, else its first response."""
    e = rows[rows["arm"] == arm].sort_values(["seed", "sample"])
    hit = e[e["correct"] == correct]
    return (hit if len(hit) else e).iloc[0]
