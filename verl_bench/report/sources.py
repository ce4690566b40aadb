"""What a report is built from: study folders and Tune sweep folders, told apart by the files they hold, and
the header's facts (study file, versions, git commit, data provenance)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pandas as pd
import yaml

from verl_bench.errors import UserError

REFERENCE_ARM = "grpo"  # compared against when the study names no comparison
BASE_ARM = "base"
VERSION_PACKAGES = ("torch", "transformers", "ray", "lm_eval", "math-verify", "verl-bench")


class ReportError(UserError):
    """A report source that is neither a study nor a sweep folder, or holds nothing to report."""


@dataclass
class Sweep:
    path: Path
    trials: pd.DataFrame  # verl_bench.analysis.hpo.trial_table
    metrics: list[str]
    modes: list[str]


@dataclass
class Sources:
    samples: pd.DataFrame | None = None
    dynamics: pd.DataFrame | None = None
    meta: dict = field(default_factory=dict)
    sweeps: list[Sweep] = field(default_factory=list)


def source_kind(path: Path) -> str:
    """``study`` (study.yaml or trials.json) or ``sweep`` (Tune's experiment_state*.json)."""
    if not path.is_dir():
        raise ReportError(f"{path}: not a folder (expected a study folder or a Tune sweep folder)")
    if (path / "study.yaml").is_file() or (path / "trials.json").is_file():
        return "study"
    if any(path.glob("experiment_state*.json")):
        return "sweep"
    raise ReportError(f"{path}: neither a study folder (study.yaml, trials.json) nor a Tune sweep folder "
                      "(experiment_state*.json)")


def study_meta(study_dir: Path) -> dict:
    """The study file's facts the report shows: models, arms, seeds, benchmarks, primary endpoint, protocol."""
    f = study_dir / "study.yaml"
    raw = yaml.safe_load(f.read_text()) if f.is_file() else {}
    if not isinstance(raw, dict):
        raise ReportError(f"{f}: expected a mapping (the study file)")
    models = raw.get("models") or {}
    evaluation = raw.get("evaluation") or {}
    primary = raw.get("primary") or {}
    return {
        "name": raw.get("name", study_dir.name),
        "source": str(study_dir),
        "models": {k: (v.get("model") if isinstance(v, dict) else v) for k, v in models.items()}
        if isinstance(models, dict) else {m: m for m in models},
        "arms": list(raw.get("arms") or []),
        "seeds": list(raw.get("seeds") or []),
        "benchmarks": list(evaluation.get("benchmarks") or []),
        "protocol": {k: v for k, v in evaluation.items() if k not in ("benchmarks", "resources")},
        "primary": {"benchmark": primary.get("benchmark", "average"), "metric": primary.get("metric", "accuracy"),
                    "compare": list(primary["compare"]) if primary.get("compare") else None},
        "steps": (raw.get("budget") or {}).get("steps"),
    }


def sweep_objectives(trials: pd.DataFrame, metrics: list[str] | None, modes: list[str] | None):
    """The sweep's metric(s) and mode(s): given, else the trial table's ``attrs``, else val/accuracy (max)."""
    metrics = metrics or trials.attrs.get("metrics") or ([trials.attrs["metric"]] if "metric" in trials.attrs else None)
    modes = modes or trials.attrs.get("modes") or ([trials.attrs["mode"]] if "mode" in trials.attrs else None)
    if not metrics:
        metrics = ["val/accuracy"] if "val/accuracy" in trials else [
            c for c in trials.columns if not c.startswith("config/") and pd.api.types.is_numeric_dtype(trials[c])][:1]
    modes = list(modes or ["max"] * len(metrics))
    if len(modes) == 1 and len(metrics) > 1:
        modes = modes * len(metrics)
    if any(m not in ("max", "min") for m in modes) or len(modes) != len(metrics):
        raise ReportError(f"sweep modes {modes}: expected max or min, one per metric {metrics}")
    missing = [m for m in metrics if m not in trials]
    if missing:
        raise ReportError(f"sweep metric {missing[0]!r} is in no trial's results; columns: "
                          f"{[c for c in trials.columns if not c.startswith('config/')][:12]}")
    return list(metrics), modes


def tune_objective(experiment_dir: Path) -> tuple[str | None, str | None]:
    """The metric and mode Tune was given (its newest experiment_state*.json keeps them in runner_data); a
    multi-objective sweep gives Tune none (they go to the Optuna searcher): then (None, None)."""
    states = sorted(experiment_dir.glob("experiment_state*.json"), key=lambda p: p.stat().st_mtime)
    try:
        runner = json.loads(states[-1].read_text()).get("runner_data") or {}
    except (IndexError, OSError, ValueError, AttributeError):
        return None, None
    metric, mode = runner.get("_metric"), runner.get("_mode")
    if not isinstance(metric, str) or metric.startswith("_"):  # Tune's placeholder "_metric" when unset
        return None, None
    return metric, mode if mode in ("max", "min") else None


def load_sources(paths: list[Path], metrics: list[str] | None = None, modes: list[str] | None = None,
                 progress=print) -> Sources:
    """Read every source (all checked before anything is loaded): studies' frames concatenated, sweeps'
    trial tables kept apart. The meta comes from the first study."""
    kinds = [(Path(p), source_kind(Path(p))) for p in paths]
    out = Sources()
    samples, dynamics = [], []
    for path, kind in kinds:
        if kind == "study":
            from verl_bench.analysis.frame import dynamics_frame, samples_frame

            progress(f"report: reading study {path}")
            meta = study_meta(path)
            out.meta = out.meta or meta
            frame = samples_frame(path)
            if frame.empty:
                raise ReportError(f"{path}: the study has no evaluated samples yet (its evaluation writes them)")
            samples.append(frame)
            dynamics.append(dynamics_frame(path))
        else:
            from verl_bench.analysis.hpo import trial_table

            progress(f"report: reading sweep {path}")
            trials = trial_table(path)
            if trials.empty:
                raise ReportError(f"{path}: the sweep has no trial results yet")
            tune_metric, tune_mode = tune_objective(path)
            m, md = sweep_objectives(trials, metrics or ([tune_metric] if tune_metric else None),
                                     modes or ([tune_mode] if tune_metric and tune_mode else None))
            out.sweeps.append(Sweep(path, trials, m, md))
            out.meta = out.meta or {"name": path.name, "source": str(path)}
    if samples:
        _check_disjoint(samples, [p for p, k in kinds if k == "study"])
        out.samples = pd.concat(samples, ignore_index=True)
        out.dynamics = pd.concat(dynamics, ignore_index=True)
    return out


def _check_disjoint(frames: list[pd.DataFrame], paths: list[Path]) -> None:
    """Studies reported together must not both hold a model x arm x seed (their runs would be mixed up)."""
    seen: dict = {}
    for frame, path in zip(frames, paths):
        for cell in frame[["model", "arm", "seed"]].drop_duplicates().itertuples(index=False):
            if tuple(cell) in seen:
                raise ReportError(f"{seen[tuple(cell)]} and {path} both hold model {cell.model!r}, arm {cell.arm!r}, "
                                  f"seed {cell.seed}: report them separately")
            seen[tuple(cell)] = path


# ------------------------------------------------------------------------------------------ header facts
def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in VERSION_PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def git_commit(report_dir: str | Path | None = None, repo: Path | None = None) -> str:
    """The commit of the verl-bench checkout that builds the report (+ "with uncommitted changes" when it has
    local changes; those of ``report_dir``, the report being written, do not count: e.g. reports/demo/)."""
    repo = (repo or Path(__file__).parents[2]).resolve()
    report = Path(report_dir).resolve() if report_dir is not None else None
    exclude = [f":(exclude){report.relative_to(repo)}"] if report and report.is_relative_to(repo) else []
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no", "--", ".",
                                *exclude], check=False, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return sha + (" (with uncommitted changes)" if dirty else "")


def provenance(benchmarks=(), n_lines: int = 4) -> dict:
    """Where the benchmarks' problems came from: the data root (VERL_BENCH_DATA) and the first lines of its
    PROVENANCE.md; when every benchmark is a generated set (procedural arithmetic), its generator's arguments
    instead (no file was read)."""
    from verl_bench.data import DATASETS

    specs = [DATASETS.get(b) for b in benchmarks]
    if specs and all(s is not None and s.generator for s in specs):
        lines = []
        for s in specs:
            args = ", ".join(f"{k} {v}" for k, v in s.generator.items())
            lines.append(f"{s.name}: {s.notes or 'procedural arithmetic word problems'} ({args})")
        return {"root": "no data files: generated by verl_bench.arithmetic", "lines": lines}
    root = os.environ.get("VERL_BENCH_DATA", "")
    lines: list[str] = []
    if root:
        f = Path(root) / "PROVENANCE.md"
        if f.is_file():
            # the title and the prose under it, up to the first table or the next heading
            for i, ln in enumerate(f.read_text(errors="replace").splitlines()):
                if i and ln.lstrip().startswith(("|", "#")):
                    break
                if ln.strip():
                    lines.append(ln)
            lines = lines[:n_lines]
    return {"root": root or "(VERL_BENCH_DATA not set)", "lines": lines}


def study_record(meta: dict) -> dict:
    """What the study recorded about itself when it ran (versions, commit), if it wrote such a file."""
    src = meta.get("source")
    f = Path(src) / "study_resolved.json" if src else None
    if not f or not f.is_file():
        return {}
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError):
        return {}
    return {k: data[k] for k in ("versions", "git_commit", "created") if isinstance(data, dict) and k in data}
