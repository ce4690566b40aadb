"""Coverage of the report's 95% intervals and the false-positive rate of its test, by simulation.

    .venv/bin/python benchmarks/interval_coverage.py [--studies 20000]

The study model of tests/test_analysis_stats.py (problem difficulty, a per-problem arm effect, a shift per
training run, a run x problem term, 4 graded samples per problem, 150 problems): for each scenario (seeds per
arm, SD of the run shift) the share of simulated studies whose interval of the paired difference covers the
population difference, and the share that reject a zero population difference at 5%. The unit test runs the
same check on 1,000 studies; this prints it on many more and appends a row to
benchmarks/results/interval_coverage.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_analysis_stats import SCENARIOS, SEED_SD, DELTA, simulate, zero_effect_shift  # noqa: E402
from verl_bench.analysis.intervals import paired_interval  # noqa: E402

EXTRA = [(2, SEED_SD), (2, 0.0), (5, 0.0), (3, 2 * SEED_SD), (3, SEED_SD / 3)]


def scenario(studies: int, seeds: int, seed_sd: float) -> dict:
    rng = np.random.default_rng(1000 + 10 * seeds + int(100 * seed_sd))
    ya, yb, truth = simulate(rng, studies, seeds, seed_sd, DELTA)
    r = paired_interval([ya], [yb])
    za, zb, _ = simulate(rng, studies, seeds, seed_sd, zero_effect_shift(seed_sd))
    return {"seeds": seeds, "seed_sd": seed_sd,
            "coverage": float(np.mean((r["ci_low"] <= truth) & (truth <= r["ci_high"]))),
            "zero_effect_rejected": float(np.mean(paired_interval([za], [zb])["p_value"] < 0.05))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--studies", type=int, default=20000)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "interval_coverage.jsonl")
    args = ap.parse_args()
    t0, rows = time.time(), []
    for seeds, sd in SCENARIOS + EXTRA:
        rows.append(scenario(args.studies, seeds, sd))
        r = rows[-1]
        print(f"{seeds} seed(s) per arm, run-shift SD {sd:.3f}: 95% interval covers {r['coverage']:.1%}, a zero "
              f"effect rejected in {r['zero_effect_rejected']:.1%} of {args.studies} studies", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.write(json.dumps({"benchmark": "interval_coverage", "studies": args.studies, "scenarios": rows,
                            "seconds": round(time.time() - t0, 1)}) + "\n")
    print(f"appended to {args.out}")


if __name__ == "__main__":
    main()
