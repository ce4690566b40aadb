"""Orchestration: sources -> statistics (``verl_bench.analysis``) -> tables, figures -> one static page.

``render_report`` takes the frames directly (tests, notebooks); ``build_report`` reads study and sweep folders.
Each section is a small function returning the dict its template block reads.
"""

from __future__ import annotations

import datetime as _dt
import shutil
from pathlib import Path

import pandas as pd

from verl_bench.report.page import render_page
from verl_bench.report.sources import (
    BASE_ARM,
    ReportError,
    Sweep,
    git_commit,
    load_sources,
    provenance,
    study_record,
    sweep_objectives,
    versions,
)
from verl_bench.report.study_section import study_sections
from verl_bench.report.sweep_section import sweep_section


def build_report(sources: list[Path], out_dir: Path, *, title: str | None = None, metrics: list[str] | None = None,
                 modes: list[str] | None = None, n_boot: int = 200, progress=print) -> Path:
    """Report on study folders and/or Tune sweep folders; returns ``out_dir/index.html``. ``n_boot``: bootstrap
    resamples of each sweep knob's importance interval."""
    if not sources:
        raise ReportError("report: give at least one study or sweep folder")
    src = load_sources([Path(p) for p in sources], metrics, modes, progress)
    return render_report(src.samples, src.dynamics, Path(out_dir), src.meta, sweeps=src.sweeps, title=title,
                         n_boot=n_boot, progress=progress)


def render_report(samples: pd.DataFrame | None, dynamics: pd.DataFrame | None, out_dir: Path, meta: dict,
                  trials: pd.DataFrame | None = None, *, sweeps: list[Sweep] | None = None,
                  title: str | None = None, n_boot: int = 200, progress=print) -> Path:
    """Write ``out_dir/index.html`` with ``figures/`` and ``tables/`` beside it from the tidy frames (the
    CONTRACT's columns), the study's ``meta`` and, for sweeps, Tune trial tables (``trials``: one sweep's
    ``hpo.trial_table``; ``sweeps``: several, with their objectives)."""
    out_dir = Path(out_dir)
    for sub in ("figures", "tables"):  # a rebuilt report holds no stale files of an earlier one
        shutil.rmtree(out_dir / sub, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    sweeps = list(sweeps or [])
    if trials is not None:
        m, md = sweep_objectives(trials, None, None)
        sweeps.append(Sweep(Path(meta.get("source", "sweep")), trials, m, md))
    if (samples is None or samples.empty) and not sweeps:
        raise ReportError("report: nothing to report (no study samples and no sweep trials)")

    ctx = {"title": title or f"verl-bench report: {meta.get('name', out_dir.name)}", "tables": [], "notes": []}
    study = None
    if samples is not None and len(samples):
        study = study_sections(samples, dynamics, out_dir, meta, ctx, progress)
    ctx["study"] = study
    ctx["sweeps"] = [sweep_section(sw, out_dir, ctx["tables"], progress, i, n_boot) for i, sw in enumerate(sweeps)]
    ctx["header"] = _header(meta, samples, study, out_dir)
    progress("report: writing the page")
    path = out_dir / "index.html"
    path.write_text(render_page(ctx), encoding="utf-8")
    progress(f"report: {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return path


# ------------------------------------------------------------------------------------------ header
def _header(meta: dict, samples: pd.DataFrame | None, study: dict | None, out_dir: Path) -> dict:
    record = study_record(meta)
    benchmarks = sorted(samples["benchmark"].unique()) if samples is not None else []
    h = {"name": meta.get("name", ""), "source": meta.get("source", ""), "generated": _dt.datetime.now(
        _dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "versions": versions(), "commit": git_commit(out_dir),
        "recorded": record, "provenance": provenance(benchmarks),
        "protocol": meta.get("protocol") or {},
        "models": meta.get("models") or {}, "steps": meta.get("steps"), "compared": None, "primary": None}
    if samples is not None and study is not None:
        plan = study["plan"]
        trained = samples[samples["arm"] != BASE_ARM]
        h["compared"] = {
            "models": plan["models"], "arms": plan["arms"], "reference": plan["reference"],
            "compared": plan["compared"], "benchmarks": plan["benchmarks"],
            "seeds": sorted(trained["seed"].unique().tolist()) if len(trained) else [],
            "problems": {b: int(g["problem"].nunique()) for b, g in samples.groupby("benchmark", sort=False)},
            "samples": int(samples.groupby(["model", "arm", "seed", "benchmark", "problem"])["sample"].nunique().max()),
        }
        h["primary"] = study["primary"]
    return h
