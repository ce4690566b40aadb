"""Time the report's statistics on a synthetic study frame and a synthetic sweep (no I/O, no Ray).

    python benchmarks/analysis_speed.py                       # 3 arms (base + 2 x 3 seeds), 4 benchmarks
    python benchmarks/analysis_speed.py --samples 16 --trials 60

Prints each step's seconds and appends one JSON line to benchmarks/results/analysis_speed.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from verl_bench.analysis import hpo, stats

RESULTS = Path(__file__).resolve().parent / "results" / "analysis_speed.jsonl"
BENCHMARKS = {"math500": 500, "minerva": 272, "amc23": 40, "aime24": 30}


def study_frame(samples: int, seeds: int, rng) -> pd.DataFrame:
    parts = []
    for arm, skill, runs in (("base", -0.5, [0]), ("grpo", 0.0, range(1, seeds + 1)),
                             ("verl", 0.1, range(1, seeds + 1))):
        for seed in runs:
            for bench, problems in BENCHMARKS.items():
                theta = np.random.default_rng(len(bench)).normal(-0.3, 1.2, problems)
                p = 1 / (1 + np.exp(-(theta + skill + rng.normal(0, 0.1))))
                correct = rng.random((problems, samples)) < p[:, None]
                answers = np.where(correct, "7", rng.integers(0, 4, (problems, samples)).astype(str))
                parts.append(pd.DataFrame({
                    "model": "m", "arm": arm, "seed": seed, "trial": "", "step": 10, "benchmark": bench,
                    "problem": np.repeat([f"q{i}" for i in range(problems)], samples),
                    "sample": np.tile(np.arange(samples), problems), "correct": correct.ravel().astype(float),
                    "answer": answers.ravel(), "gold": "7"}))
    return pd.concat(parts, ignore_index=True)


def timed(fn, *args, **kw) -> float:
    t = time.perf_counter()
    fn(*args, **kw)
    return round(time.perf_counter() - t, 3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    frame = study_frame(args.samples, args.seeds, rng)
    ks = [k for k in (1, 2, 4, 8, 16, 32) if k <= args.samples]
    out = {"rows": len(frame), "samples": args.samples, "seeds": args.seeds, "benchmarks": len(BENCHMARKS)}
    out["accuracy_table_s"] = timed(stats.accuracy_table, frame)
    out["comparisons_s"] = timed(stats.comparisons, frame, "verl", "grpo")
    out["pass_at_k_curve_s"] = timed(stats.pass_at_k_curve, frame, ks)
    out["maj_at_k_curve_s"] = timed(stats.maj_at_k_curve, frame, ks)
    a, b = rng.uniform(0, 1, args.trials), rng.uniform(0, 1, args.trials)
    trials = pd.DataFrame({"config/a": a, "config/b": b, "config/mode": rng.choice(["x", "y"], args.trials),
                           "m": 0.3 * a + rng.normal(0, 0.01, args.trials)})
    hpo.knob_importance(trials, ["a"], "m", n_boot=1)  # imports (sklearn) outside the timing
    out["knob_importance_s"] = timed(hpo.knob_importance, trials, ["a", "b", "mode"], "m", n_boot=args.n_boot)
    out.update(trials=args.trials, n_boot=args.n_boot, cpus=os.cpu_count(), host=platform.node(),
               when=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    print(json.dumps(out))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with args.results.open("a") as f:
        f.write(json.dumps(out) + "\n")
    print(f"appended to {args.results}")


if __name__ == "__main__":
    main()
