"""Tidy frames of a study folder: every graded sample, and every logged training metric.

``samples_frame(study_dir)``: one row per model x arm x seed x checkpoint x benchmark x problem x sample,
read from lm-eval's per-sample JSONL files (the aggregates are never used: every number in a report is
computed from these rows). Which files belong to which model/arm/seed comes from the study's
``trials.json``; each trial's config joins as ``config/<dotted.key>`` columns. The frame is cached as
``samples.parquet`` and rebuilt when a samples file is newer than it.

``dynamics_frame(study_dir)``: model, arm, seed, trial, step, metric, value from each trial's metrics.jsonl.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

TRIALS_FILE = "trials.json"
RESOLVED_FILE = "study_resolved.json"
SAMPLES_FILE = "samples.parquet"
COLUMNS = ["model", "arm", "seed", "trial", "step", "benchmark", "problem", "sample", "correct", "response",
           "answer", "gold"]


def read_samples(path: str | Path, benchmark: str) -> pd.DataFrame:
    """One lm-eval samples JSONL (written by ``verl_bench.evaluate``) as rows: benchmark, problem, sample,
    correct, response, answer, gold. Files from before per-sample grades were logged are graded again with
    the training reward's checker."""
    rows = []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        doc = rec["doc"]
        responses = _responses(rec)
        grades = rec.get("grades")
        if grades is None or len(grades) != len(responses):
            grades = _grade(responses, doc["gold"])
        for i, (text, g) in enumerate(zip(responses, grades)):
            rows.append({"benchmark": benchmark, "problem": str(doc.get("id", rec["doc_id"])), "sample": i,
                         "correct": float(g["correct"]), "response": text, "answer": g.get("answer"),
                         "gold": str(doc["gold"])})
    return pd.DataFrame(rows, columns=["benchmark", "problem", "sample", "correct", "response", "answer", "gold"])


def _responses(rec: dict) -> list[str]:
    """The n responses of one problem: lm-eval logs [[r1, ..., rn]] with the take_first_k filter."""
    out = rec.get("filtered_resps") or rec.get("resps") or []
    while out and isinstance(out[0], list) and len(out) == 1:
        out = out[0]
    return [r[0] if isinstance(r, list) else r for r in out]


def _grade(responses: list[str], gold: str) -> list[dict]:
    from verl_bench.reward import grade_batch

    return [{"correct": float(g.correct), "answer": g.answer} for g in grade_batch(responses, [gold] * len(responses))]


def samples_frame(study_dir: str | Path, rebuild: bool = False) -> pd.DataFrame:
    """Every graded sample of a study (see the module doc); reads ``samples.parquet`` when it is current."""
    from verl_bench.evaluate.run import _flat, samples_file

    study_dir = Path(study_dir)
    entries = json.loads((study_dir / TRIALS_FILE).read_text())
    resolved = json.loads((study_dir / RESOLVED_FILE).read_text())
    benchmarks = resolved["evaluation"]["benchmarks"]
    files = []  # (entry, benchmark, samples file)
    for e in entries:
        if e.get("error") or not e.get("eval_dir"):
            continue
        for b in benchmarks:
            f = samples_file(study_dir / e["eval_dir"], b)
            if f is not None:
                files.append((e, b, f))
    cache = study_dir / SAMPLES_FILE
    if (not rebuild and cache.is_file()
            and all(f.stat().st_mtime <= cache.stat().st_mtime for _, _, f in files)
            and (study_dir / TRIALS_FILE).stat().st_mtime <= cache.stat().st_mtime):
        return pd.read_parquet(cache)
    parts = []
    for e, b, f in files:
        df = read_samples(f, b)
        for k in ("model", "arm", "trial"):
            df[k] = str(e[k] or "")
        df["seed"] = int(e["seed"])
        df["step"] = int(e["step"] or 0)
        cfg = resolved["trials"].get(f"{e['model']}/{e['arm']}/{e['seed']}")
        if cfg is not None:
            for key, v in _flat(cfg).items():
                df[f"config/{key}"] = v if not isinstance(v, (list, tuple)) else json.dumps(v)
        parts.append(df)
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)
    frame = frame[COLUMNS + sorted(c for c in frame.columns if c not in COLUMNS)]
    frame = frame.astype({"seed": "int64", "step": "int64", "sample": "int64", "correct": "float64"})
    tmp = cache.with_suffix(".parquet.tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(cache)
    return pd.read_parquet(cache)  # the same frame a later call gets from the cache (missing values and all)


def dynamics_frame(study_dir: str | Path) -> pd.DataFrame:
    """Every metric every trial logged per training step: model, arm, seed, trial, step, metric, value."""
    study_dir = Path(study_dir)
    rows = []
    for e in json.loads((study_dir / TRIALS_FILE).read_text()):
        metrics = study_dir / e["run_dir"] / "metrics.jsonl" if e.get("run_dir") else None
        if metrics is None or not metrics.is_file():
            continue
        for line in metrics.read_text().splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    rows.append({"model": e["model"], "arm": e["arm"], "seed": int(e["seed"]), "trial": e["trial"],
                                 "step": int(rec["step"]), "metric": k, "value": float(v)})
    return pd.DataFrame(rows, columns=["model", "arm", "seed", "trial", "step", "metric", "value"])

