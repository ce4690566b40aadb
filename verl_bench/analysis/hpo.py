"""A sweep's numbers for the report's HPO section: the trial table, each knob's importance with a bootstrap
interval, the seed-noise floor, the Pareto front. Everything but ``trial_table`` is a pure function.

Importance is in the metric's own units so that it can stand beside the seed-noise floor: Optuna's fANOVA
gives the share of the metric's variance over the swept space that each knob's main effect explains;
``importance`` = sqrt(share x var(metric over the trials)), the standard deviation of the metric that moving
this knob alone causes. ``seed_noise_floor`` is the standard deviation between trials that differ only in
their seed. A knob whose importance interval lies below the floor moves the metric less than re-seeding does.
(The optimiser samples good regions more often, so the trials are not a uniform design: read importances as
descriptive. The best trial's value is biased upward until it is re-run on fresh seeds.)
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from verl_bench.sweep.spec import flatten as _flat

PARAMS_FILE, RESULT_FILE = "params.json", "result.json"
RUN_METRICS = Path("run") / "metrics.jsonl"  # the training run inside a trial folder (verl_bench.sweep)
FANOVA_TREES, FANOVA_DEPTH = 8, 8  # measured: ~0.25 s per evaluation for 40 trials x 3 knobs on a busy 2-core box


# ------------------------------------------------------------------------------------------ reading
def _json_lines(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by an interrupted trial
    return rows


def _scalars(row: dict) -> dict:
    return {k: v for k, v in row.items() if isinstance(v, (int, float, str, bool)) or v is None}


def _trial_row(d: Path) -> dict | None:
    """One trial folder -> its row (None when the folder is not a trial's)."""
    params_file, result_file, run_file = d / PARAMS_FILE, d / RESULT_FILE, d / RUN_METRICS
    if not (params_file.is_file() or result_file.is_file()):
        return None
    results = _json_lines(result_file) if result_file.is_file() else []
    params = json.loads(params_file.read_text()) if params_file.is_file() else {}
    if not params and results and isinstance(results[-1].get("config"), dict):
        params = results[-1]["config"]
    metrics: dict = {}
    if results:
        metrics = _scalars(results[-1])
    elif run_file.is_file():  # no Tune report yet: the training run's own log, newest value of every key
        for r in _json_lines(run_file):
            metrics.update(_scalars(r))
    trial_id = metrics.pop("trial_id", None) or _id_from_name(d.name)
    m = re.search(re.escape(str(trial_id)) + r"_(\d+)", d.name)
    row = {"trial_id": str(trial_id), "trial_index": int(m.group(1)) if m else math.nan, "trial_dir": str(d),
           "n_reports": len(results)}
    row.update({f"config/{k}": v for k, v in _flat(params).items()})
    row.update({k: v for k, v in metrics.items() if k not in row and not k.startswith("config/")})
    return row


def _id_from_name(name: str) -> str:
    m = re.search(r"([0-9a-f]{5}_\d{5})", name)
    return m.group(1) if m else name


def trial_table(experiment_dir: str | Path) -> pd.DataFrame:
    """One row per trial folder of a Tune experiment: trial_id, trial_index (start order), trial_dir,
    n_reports, config/<dotted knob> (params.json, nested keys joined with "."), and the trial's last reported
    value of every scalar metric (result.json; before any report, its run/metrics.jsonl). Rows in start
    order. A trial that reported nothing keeps its row with no metric values."""
    root = Path(experiment_dir)
    rows = [r for d in sorted(p for p in root.iterdir() if p.is_dir()) if (r := _trial_row(d)) is not None]
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    return df.sort_values(["trial_index", "trial_dir"], kind="stable", ignore_index=True)


# ------------------------------------------------------------------------------------------ seed noise
def _is_seed(col: str) -> bool:
    return col.startswith("config/") and col.split("/", 1)[1].split(".")[-1] == "seed"


def seed_noise_floor(trials: pd.DataFrame, metric: str) -> float | None:
    """The pooled standard deviation of ``metric`` between trials whose configs differ only in the seed
    (None when no two trials do): sqrt(sum_g (n_g - 1) s_g^2 / sum_g (n_g - 1))."""
    if metric not in trials or not any(_is_seed(c) for c in trials.columns):
        return None
    knobs = [c for c in trials.columns if c.startswith("config/") and not _is_seed(c)]
    ok = trials[pd.to_numeric(trials[metric], errors="coerce").notna()]
    if ok.empty:
        return None
    keys = ok[knobs].astype(str).agg("|".join, axis=1) if knobs else pd.Series("", index=ok.index)
    ss, dof = 0.0, 0
    for _, g in ok.groupby(keys):
        v = g[metric].to_numpy(float)
        v = v[np.isfinite(v)]
        if len(v) >= 2:
            ss += ((v - v.mean()) ** 2).sum()
            dof += len(v) - 1
    return math.sqrt(ss / dof) if dof else None


# ------------------------------------------------------------------------------------------ importance
def _distribution(values: pd.Series):
    """An Optuna distribution for one knob's observed values (bounds = the observed range; a positive float
    knob spanning >= 10x is taken as log-scaled, as the sweep files' loguniform knobs are)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        return CategoricalDistribution(sorted({_plain(v) for v in values}, key=str))
    lo, hi = float(values.min()), float(values.max())
    if pd.api.types.is_integer_dtype(values):
        return IntDistribution(int(lo), int(hi))
    return FloatDistribution(lo, hi, log=lo > 0 and hi / lo >= 10)


def _plain(v):
    return v.item() if hasattr(v, "item") else (v if isinstance(v, (int, float, str, bool)) or v is None else str(v))


def _fanova_shares(params: list[dict], values: np.ndarray, dists: dict, seed: int) -> dict:
    """Unnormalised fANOVA importances (each knob's main-effect share of the variance) of one set of trials."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    study = optuna.create_study(direction="maximize")
    study.add_trials([optuna.trial.create_trial(params=p, distributions=dists, value=float(v))
                      for p, v in zip(params, values)])
    evaluator = FanovaImportanceEvaluator(n_trees=FANOVA_TREES, max_depth=FANOVA_DEPTH, seed=seed)
    return get_param_importances(study, evaluator=evaluator, normalize=False)


def knob_importance(trials: pd.DataFrame, knobs: Sequence[str], metric: str, n_boot: int = 200,
                    level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """knob, importance (metric units, see the module doc), ci_low, ci_high (percentile bootstrap over
    trials, ``n_boot`` resamples), share (fANOVA's main-effect variance share), n_trials. A knob that never
    varies gets 0. Needs >= 3 trials with a finite metric; otherwise importances are nan."""
    import optuna

    cols = [f"config/{k}" for k in knobs]
    ok = trials.dropna(subset=[*cols, metric]) if len(trials) else trials
    ok = ok[np.isfinite(pd.to_numeric(ok[metric], errors="coerce").to_numpy(float))] if len(ok) else ok
    varying = [k for k, c in zip(knobs, cols) if ok[c].astype(str).nunique() > 1] if len(ok) else []
    out = pd.DataFrame({"knob": list(knobs), "importance": 0.0, "ci_low": 0.0, "ci_high": 0.0, "share": 0.0,
                        "n_trials": len(ok)})
    if len(ok) < 3 or not varying:
        out.loc[out["knob"].isin(varying) | (len(ok) < 3), ["importance", "ci_low", "ci_high", "share"]] = math.nan
        return out
    dists = {k: _distribution(ok[f"config/{k}"]) for k in varying}
    params = [{k: _plain(r[f"config/{k}"]) for k in varying} for _, r in ok.iterrows()]
    values = ok[metric].to_numpy(float)
    rng = np.random.default_rng(seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        point = _fanova_shares(params, values, dists, seed)
        boots = []
        for b in range(n_boot):
            idx = rng.integers(0, len(ok), len(ok))
            shares = _fanova_shares([params[i] for i in idx], values[idx], dists, seed + 1 + b)
            boots.append([math.sqrt(shares.get(k, 0.0) * values[idx].var()) for k in varying])
    boots_a = np.array(boots).reshape(n_boot, len(varying))
    for j, k in enumerate(varying):
        i = out.index[out["knob"] == k][0]
        out.loc[i, "share"] = float(point[k])
        out.loc[i, "importance"] = math.sqrt(float(point[k]) * values.var())
        if n_boot:
            lo, hi = np.quantile(boots_a[:, j], [(1 - level) / 2, (1 + level) / 2])
            out.loc[i, ["ci_low", "ci_high"]] = [float(lo), float(hi)]
        else:
            out.loc[i, ["ci_low", "ci_high"]] = math.nan
    return out


# ------------------------------------------------------------------------------------------ Pareto front
def pareto_front(trials: pd.DataFrame, metrics: Sequence[str], modes: Sequence[str]) -> pd.DataFrame:
    """The trials no other trial beats on every metric (at least as good on all, better on one), sorted by the
    first metric from best; trials missing a metric are left out."""
    if len(metrics) != len(modes) or any(m not in ("max", "min") for m in modes):
        raise ValueError(f"pareto_front: one mode (max|min) per metric, got {list(modes)} for {list(metrics)}")
    scored = trials.dropna(subset=list(metrics))
    v = scored[list(metrics)].to_numpy(float) * np.array([1.0 if m == "max" else -1.0 for m in modes])
    finite = np.isfinite(v).all(axis=1)
    scored, v = scored[finite], v[finite]
    better_eq = (v[None, :, :] >= v[:, None, :]).all(-1)  # [i, j]: j is at least as good as i everywhere
    strictly = (v[None, :, :] > v[:, None, :]).any(-1)
    dominated = (better_eq & strictly).any(axis=1)
    front = scored[~dominated]
    return front.sort_values(metrics[0], ascending=modes[0] == "min", kind="stable")
