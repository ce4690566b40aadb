"""The HPO section of one sweep: the trial table, each knob's importance against the seed-noise floor, slices
and a contour of the top knobs, the optimisation history, the Pareto front (several objectives), and the best
trial with its upward bias spelled out. Numbers from ``verl_bench.analysis.hpo``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from verl_bench.report import figures as F
from verl_bench.report import tables as T
from verl_bench.report.sources import Sweep

TRIALS_SHOWN = 30


def swept_knobs(trials: pd.DataFrame) -> list[str]:
    """The config keys that vary between trials, the seed excepted (trials differing only in it measure the
    noise floor)."""
    return [c[len("config/"):] for c in trials.columns
            if c.startswith("config/") and c.split("/", 1)[1].split(".")[-1] != "seed"
            and trials[c].astype(str).nunique() > 1]


def sweep_section(sw: Sweep, out_dir: Path, tables: list, progress, index: int, n_boot: int) -> dict:
    from verl_bench.analysis import hpo

    name = sw.path.name or f"sweep{index}"
    tag = f"sweep_{index}_{T.slug(name)}"
    progress(f"report: sweep {name}: {len(sw.trials)} trials")
    trials = sw.trials.reset_index(drop=True)  # in start order (trial_table's)
    metric, mode = sw.metrics[0], sw.modes[0]
    knobs = swept_knobs(trials)
    tables.append(T.write_table(trials, out_dir, f"{tag}_trials", f"sweep {name}: every trial"))
    scored = trials[trials[metric].notna()]
    ranked = scored.sort_values(metric, ascending=(mode == "min"), kind="stable")
    id_col = next((c for c in ("trial_id", "trial", "trial_name") if c in trials), None)
    shown = ([id_col] if id_col else []) + [f"config/{k}" for k in knobs] + sw.metrics
    out = {"name": name, "path": str(sw.path), "metrics": sw.metrics, "modes": sw.modes, "n_trials": len(trials),
           "n_scored": len(scored), "knobs": knobs, "figures": [], "importance": [], "importance_note": "",
           "noise_floor": hpo.seed_noise_floor(trials, metric), "best": None,
           "table": {"columns": [c.removeprefix("config/") for c in shown],
                     "rows": [[T.fmt(r[c]) for c in shown] for _, r in ranked.head(TRIALS_SHOWN).iterrows()]}}
    order = knobs
    if knobs and len(scored) >= 3:
        progress(f"report: sweep {name}: importance of {len(knobs)} knob(s), {n_boot} bootstrap resamples")
        try:
            imp = hpo.knob_importance(scored, knobs, metric, n_boot=n_boot)
        except (RuntimeError, ValueError) as e:  # e.g. fANOVA on a metric with no variance: say so, go on
            out["importance_note"] = f"importance not computed: {e}"
        else:
            imp = imp.sort_values("importance", ascending=False, na_position="last")
            order = list(imp["knob"])
            _importance(imp, out, out_dir, tag, tables, name, metric)
    if order and len(scored):
        _knob_figures(scored, order, metric, out, out_dir, tag)
    if len(scored):
        out["figures"].append(F.save_figure(F.history_figure(trials, metric, mode), out_dir, f"{tag}_history",
                                            "optimisation history", f"{metric} per trial in start order and the "
                                                                    f"best so far ({mode})."))
    if len(sw.metrics) > 1:
        front = hpo.pareto_front(scored, sw.metrics, sw.modes)
        tables.append(T.write_table(front, out_dir, f"{tag}_pareto", f"sweep {name}: Pareto front"))
        out["figures"].append(F.save_figure(F.pareto_figure(scored, front, sw.metrics), out_dir, f"{tag}_pareto",
                                            "Pareto front", f"{sw.metrics[0]} ({sw.modes[0]}) against "
                                                            f"{sw.metrics[1]} ({sw.modes[1]})."))
    if len(ranked):
        best = ranked.iloc[0]
        out["best"] = {"value": T.fmt(best[metric]), "config": {k: T.fmt(best[f"config/{k}"]) for k in knobs},
                       "trial": T.fmt(best[id_col]) if id_col else ""}
    return out


def _importance(imp, out, out_dir, tag, tables, name, metric) -> None:
    tables.append(T.write_table(imp, out_dir, f"{tag}_importance", f"sweep {name}: knob importance"))
    out["importance"] = [{"knob": r.knob, "importance": T.fmt(r.importance),
                          "interval": f"[{T.fmt(r.ci_low)}, {T.fmt(r.ci_high)}]"} for r in imp.itertuples()]
    out["figures"].append(F.save_figure(F.importance_figure(imp, out["noise_floor"], metric), out_dir,
                                        f"{tag}_importance", "importance of each knob",
                                        "Bars: importance with its bootstrap interval; dashed: the seed-noise "
                                        "floor (the spread of trials that differ only in seed)."))


def _knob_figures(scored, order, metric, out, out_dir, tag) -> None:
    """Slices of the (up to) three most important knobs; a contour over the two most important numeric ones."""
    out["figures"].append(F.save_figure(F.slice_figure(scored, order[:3], metric), out_dir, f"{tag}_slices",
                                        "slices of the top knobs", f"{metric} of each trial against each of the "
                                                                   "most important knobs; colour: trial order."))
    numeric = [k for k in order if pd.api.types.is_numeric_dtype(scored[f"config/{k}"])
               and not pd.api.types.is_bool_dtype(scored[f"config/{k}"])][:2]
    if len(numeric) == 2:
        out["figures"].append(F.save_figure(F.contour_figure(scored, numeric[0], numeric[1], metric), out_dir,
                                            f"{tag}_contour", f"contour: {numeric[0]} x {numeric[1]}",
                                            f"{metric} over the two most important numeric knobs."))
