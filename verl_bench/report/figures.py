"""The report's figures: pure functions from tables to matplotlib Figures, and one writer (PNG + SVG).

Matplotlib's object API only (no pyplot state): each function builds a ``Figure`` from the numbers the
statistics module computed; nothing here estimates anything. ``save_figure`` writes the PNG and the SVG under
``figures/`` and returns the SVG as a data URI for the page (text stays text: ``svg.fonttype: none``).
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

ARM_COLOURS = {"base": "#7f7f7f", "grpo": "#1f77b4", "verl": "#d95f02"}
OTHER_COLOURS = ["#1b9e77", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#17becf"]
SVG_STYLE = {"svg.fonttype": "none", "svg.hashsalt": "verl-bench", "font.size": 9}


def arm_colour(arm: str, arms: list[str]) -> str:
    if arm in ARM_COLOURS:
        return ARM_COLOURS[arm]
    others = [a for a in arms if a not in ARM_COLOURS]
    return OTHER_COLOURS[others.index(arm) % len(OTHER_COLOURS)] if arm in others else "#333333"


@dataclass
class SavedFigure:
    name: str  # file stem under figures/
    title: str
    caption: str
    png: str  # paths relative to the report folder
    svg: str
    uri: str  # the SVG as a data: URI, for the self-contained page


def save_figure(fig: Figure, out_dir: Path, name: str, title: str, caption: str = "") -> SavedFigure:
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    with rc_context(SVG_STYLE):
        fig.savefig(fig_dir / f"{name}.png", dpi=110, metadata={"Software": None})
        buf = io.BytesIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
    svg = buf.getvalue()
    (fig_dir / f"{name}.svg").write_bytes(svg)
    uri = "data:image/svg+xml;base64," + base64.b64encode(svg).decode("ascii")
    return SavedFigure(name, title, caption, f"figures/{name}.png", f"figures/{name}.svg", uri)


def _grid(n: int, ncols: int = 4, w: float = 3.2, h: float = 2.4):
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    with rc_context(SVG_STYLE):
        fig = Figure(figsize=(w * ncols, h * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


# ------------------------------------------------------------------------------------------ comparisons
def forest_figure(comp: pd.DataFrame, benchmarks: list[str]) -> Figure:
    """Δ (arm_a − arm_b) with its interval per benchmark, one panel per model x comparison; filled markers:
    significant after Holm's correction. ``comp``: model, arm_a, arm_b, benchmark, delta, ci_low, ci_high,
    significant."""
    panels = list(comp.groupby(["model", "arm_a", "arm_b"], sort=False))
    fig, axes = _grid(len(panels), ncols=2, w=4.6, h=0.35 * len(benchmarks) + 1.2)
    for ax, ((model, a, b), g) in zip(axes, panels):
        g = g.set_index("benchmark").reindex(benchmarks).dropna(subset=["delta"])
        y = np.arange(len(g))[::-1]
        pts = 100 * g["delta"].to_numpy(float)
        lo, hi = 100 * g["ci_low"].to_numpy(float), 100 * g["ci_high"].to_numpy(float)
        ax.axvline(0, color="#999999", lw=0.8)
        ax.errorbar(pts, y, xerr=[pts - lo, hi - pts], fmt="none", ecolor="#333333", elinewidth=1, capsize=2)
        sig = g["significant"].to_numpy(bool)
        ax.scatter(pts[sig], y[sig], color="#d95f02", zorder=3, s=22, label="significant (Holm)")
        ax.scatter(pts[~sig], y[~sig], facecolor="white", edgecolor="#333333", zorder=3, s=22, label="not significant")
        ax.set_yticks(y, [f"{bm}" for bm in g.index])
        ax.set_xlabel(f"Δ accuracy, points ({a} − {b})")
        ax.set_title(model)
    if panels:
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=7,
                   frameon=False)
    return fig


def pass_at_k_figure(curves: pd.DataFrame, arms: list[str], model: str) -> Figure:
    """pass@k against k (log2 axis) per benchmark for one model, a line and interval band per arm."""
    curves = curves[curves["model"] == model]
    benches = list(dict.fromkeys(curves["benchmark"]))
    fig, axes = _grid(len(benches))
    for ax, bench in zip(axes, benches):
        for arm in [a for a in arms if a in set(curves["arm"])]:
            g = curves[(curves["benchmark"] == bench) & (curves["arm"] == arm)].sort_values("k")
            c = arm_colour(arm, arms)
            ax.plot(g["k"], 100 * g["mean"], marker="o", ms=3, color=c, label=arm)
            if g["ci_low"].notna().any():
                ax.fill_between(g["k"], 100 * g["ci_low"], 100 * g["ci_high"], color=c, alpha=0.18, lw=0)
        ax.set_xscale("log", base=2)
        ks = sorted(curves["k"].unique())
        ax.set_xticks(ks, [str(int(k)) for k in ks])
        ax.minorticks_off()
        ax.set_title(bench)
        ax.set_xlabel("k")
        ax.set_ylabel("pass@k, %")
    if benches:
        axes[0].legend(fontsize=7, frameon=False)
    fig.suptitle(model)
    return fig


# ------------------------------------------------------------------------------------------ dynamics
def dynamics_figure(bands: pd.DataFrame, panels: list[tuple[str, str]], arms: list[str], model: str) -> Figure:
    """One panel per (title, metric): the mean over seeds per step and a band from the lowest to the highest
    seed. ``bands``: arm, metric, step, mean, low, high, n_seeds."""
    fig, axes = _grid(len(panels))
    for ax, (title, metric) in zip(axes, panels):
        g_metric = bands[bands["metric"] == metric]
        for arm in [a for a in arms if a in set(g_metric["arm"])]:
            g = g_metric[g_metric["arm"] == arm].sort_values("step")
            c = arm_colour(arm, arms)
            ax.plot(g["step"], g["mean"], color=c, lw=1.2, label=arm, marker="o" if len(g) < 12 else None, ms=3)
            if (g["n_seeds"] > 1).any():
                ax.fill_between(g["step"], g["low"], g["high"], color=c, alpha=0.2, lw=0)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if panels:
        axes[0].legend(fontsize=7, frameon=False)
    fig.suptitle(model)
    return fig


# ------------------------------------------------------------------------------------------ sweeps
def importance_figure(imp: pd.DataFrame, noise_floor: float | None, metric: str) -> Figure:
    """Each knob's importance with its bootstrap interval; the dashed line: the seed-noise floor."""
    imp = imp.sort_values("importance")
    with rc_context(SVG_STYLE):
        fig = Figure(figsize=(5.5, 0.4 * len(imp) + 1.2), layout="constrained")
        ax = fig.subplots()
    y = np.arange(len(imp))
    v = imp["importance"].to_numpy(float)
    lo, hi = imp["ci_low"].to_numpy(float), imp["ci_high"].to_numpy(float)
    ax.barh(y, v, color="#1f77b4", alpha=0.75)
    ok = np.isfinite(lo) & np.isfinite(hi)
    ax.errorbar(v[ok], y[ok], xerr=[np.maximum(v[ok] - lo[ok], 0), np.maximum(hi[ok] - v[ok], 0)], fmt="none",
                ecolor="#333333", capsize=2)
    if noise_floor is not None and math.isfinite(noise_floor):
        ax.axvline(noise_floor, color="#d95f02", ls="--", lw=1, label="seed-noise floor")
        ax.legend(fontsize=7, frameon=False, loc="lower right")
    ax.set_yticks(y, list(imp["knob"]))
    ax.set_xlabel(f"importance for {metric}")
    return fig


def slice_figure(trials: pd.DataFrame, knobs: list[str], metric: str) -> Figure:
    """The metric against each knob's value, one point per trial (colour: trial order)."""
    fig, axes = _grid(len(knobs), ncols=3)
    order = np.arange(len(trials))
    for ax, knob in zip(axes, knobs):
        x = trials[f"config/{knob}"]
        numeric = pd.api.types.is_numeric_dtype(x) and not pd.api.types.is_bool_dtype(x)
        if numeric:
            xs = x.to_numpy(float)
            if (xs > 0).all() and xs.max() / max(xs.min(), 1e-300) > 50:
                ax.set_xscale("log")
        else:
            cats = sorted(map(str, x.unique()))
            xs = np.array([cats.index(str(v)) for v in x], float)
            ax.set_xticks(range(len(cats)), cats, rotation=30)
        ax.scatter(xs, trials[metric], c=order, cmap="viridis", s=16)
        ax.set_xlabel(knob)
        ax.set_ylabel(metric)
    return fig


def contour_figure(trials: pd.DataFrame, knob_x: str, knob_y: str, metric: str) -> Figure:
    """The metric over two numeric knobs: a triangulated contour of the trials (when at least 4 points span a
    plane) under the trials themselves."""
    with rc_context(SVG_STYLE):
        fig = Figure(figsize=(5.0, 3.8), layout="constrained")
        ax = fig.subplots()
    x = trials[f"config/{knob_x}"].to_numpy(float)
    y = trials[f"config/{knob_y}"].to_numpy(float)
    z = trials[metric].to_numpy(float)
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(z)
    x, y, z = x[ok], y[ok], z[ok]
    mappable = None
    if len(x) >= 4 and np.ptp(x) > 0 and np.ptp(y) > 0:
        try:
            mappable = ax.tricontourf(x, y, z, levels=12, cmap="viridis", alpha=0.85)
        except (ValueError, RuntimeError):  # collinear points: no triangulation, the scatter alone
            mappable = None
    sc = ax.scatter(x, y, c=z, cmap="viridis", edgecolor="white", s=28, zorder=3)
    fig.colorbar(mappable or sc, ax=ax, label=metric)
    ax.set_xlabel(knob_x)
    ax.set_ylabel(knob_y)
    return fig


def history_figure(trials: pd.DataFrame, metric: str, mode: str) -> Figure:
    """Each trial's metric in the order the trials started, and the best so far."""
    with rc_context(SVG_STYLE):
        fig = Figure(figsize=(6.0, 3.0), layout="constrained")
        ax = fig.subplots()
    v = trials[metric].to_numpy(float)
    n = np.arange(1, len(v) + 1)
    ax.scatter(n, v, s=16, color="#1f77b4", label="trial")
    filled = np.where(np.isfinite(v), v, -np.inf if mode == "max" else np.inf)
    best = np.maximum.accumulate(filled) if mode == "max" else np.minimum.accumulate(filled)
    ax.step(n, np.where(np.isfinite(best), best, np.nan), where="post", color="#d95f02", label="best so far")
    ax.set_xlabel("trial (in start order)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric)
    ax.legend(fontsize=7, frameon=False)
    return fig


def pareto_figure(trials: pd.DataFrame, front: pd.DataFrame, metrics: list[str]) -> Figure:
    """The first two objectives of every trial, the non-dominated ones joined."""
    with rc_context(SVG_STYLE):
        fig = Figure(figsize=(5.0, 3.6), layout="constrained")
        ax = fig.subplots()
    mx, my = metrics[0], metrics[1]
    ax.scatter(trials[mx], trials[my], s=16, color="#9e9e9e", label="trial")
    f = front.sort_values(mx)
    ax.plot(f[mx], f[my], marker="o", ms=5, color="#d95f02", label="Pareto front")
    ax.set_xlabel(mx)
    ax.set_ylabel(my)
    ax.legend(fontsize=7, frameon=False)
    return fig
