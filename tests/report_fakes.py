"""Synthetic inputs for the report tests: a tidy per-sample frame and a dynamics frame with the CONTRACT's
columns (models x arms base/grpo/verl x seeds x benchmarks x problems x samples), and a fake Tune sweep folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

BENCHMARKS = ["arithmetic_test_l0", "math500"]
DYN_METRICS = ["reward/mean", "val/accuracy", "response_length", "entropy", "kl", "clip_frac", "grad_norm",
               "rank/er", "rank/erv", "rank/era", "verl/beta_mean", "verl/phi_mean"]


def fake_samples(models=("tiny-a", "tiny-b"), seeds=(0, 1, 2), problems=12, samples=4, effect=0.15,
                 rng_seed=0) -> pd.DataFrame:
    """Per problem a difficulty; VERL solves ``effect`` more often than GRPO, the base model less often."""
    rng = np.random.default_rng(rng_seed)
    arm_shift = {"base": -0.2, "grpo": 0.0, "verl": effect}
    rows = []
    for model in models:
        for bench in BENCHMARKS:
            ease = rng.uniform(0.15, 0.85, problems)
            for arm, shift in arm_shift.items():
                for seed in ((0,) if arm == "base" else seeds):
                    seed_shift = 0.0 if arm == "base" else rng.normal(0, 0.03)
                    for p in range(problems):
                        prob = float(np.clip(ease[p] + shift + seed_shift, 0.02, 0.98))
                        for s in range(samples):
                            ok = rng.random() < prob
                            gold = str(p * 7)
                            answer = gold if ok else str(p * 7 + 1)
                            rows.append({
                                "model": model, "arm": arm, "seed": seed,
                                "trial": "" if arm == "base" else f"t_{model}_{arm}_{seed}",
                                "step": 0 if arm == "base" else 20, "benchmark": bench, "problem": f"{bench}/{p}",
                                "sample": s, "correct": float(ok),
                                "response": f"Let me think <about> it & work: {p} x 7 ... \\boxed{{{answer}}}",
                                "answer": answer, "gold": gold, "config/shaping.kappa": 2.0,
                            })
    return pd.DataFrame(rows)


def fake_dynamics(models=("tiny-a", "tiny-b"), seeds=(0, 1, 2), steps=10, metrics=DYN_METRICS,
                  rng_seed=1) -> pd.DataFrame:
    rng = np.random.default_rng(rng_seed)
    rows = []
    for model in models:
        for arm in ("grpo", "verl"):
            for seed in seeds:
                for step in range(1, steps + 1):
                    for metric in metrics:
                        if metric == "val/accuracy" and step % 5:
                            continue  # validation only every 5 steps, as train.py logs it
                        rows.append({"model": model, "arm": arm, "seed": seed, "trial": f"t_{model}_{arm}_{seed}",
                                     "step": step, "metric": metric,
                                     "value": float(step * 0.05 + rng.normal(0, 0.02) + (arm == "verl") * 0.05)})
    return pd.DataFrame(rows)


def fake_meta(models=("tiny-a", "tiny-b"), seeds=(0, 1, 2)) -> dict:
    return {"name": "fake-study", "source": "/nonexistent/fake-study",
            "models": {m: f"tiny:{m}" for m in models}, "arms": ["grpo", "verl"], "seeds": list(seeds),
            "benchmarks": list(BENCHMARKS), "protocol": {"preset": "quick", "n": 4, "temperature": 1.0},
            "primary": {"benchmark": "average", "metric": "accuracy", "compare": ["verl", "grpo"]}, "steps": 20}


def fake_sweep(root: Path, n_trials=8, seed_repeats=1, rng_seed=2, metric=None, mode=None) -> Path:
    """A Tune-shaped experiment folder: experiment_state-*.json and one folder per trial with params.json and
    result.json (one JSON line per report), as Tune writes them."""
    rng = np.random.default_rng(rng_seed)
    exp = root / "fake_sweep"
    exp.mkdir(parents=True)
    runner = {"_metric": metric, "_mode": mode} if metric else {}
    (exp / "experiment_state-2026-11-29_12-00-00.json").write_text(json.dumps({"trial_data": [],
                                                                               "runner_data": runner}))
    i = 0
    for t in range(n_trials):
        kappa, tau = float(rng.uniform(0.5, 8)), float(rng.uniform(-0.5, 0.5))
        mode = ["meta", "sum"][t % 2]
        for rep in range(seed_repeats):
            trial_id = f"abc{i:05d}"
            d = exp / f"train_fn_{trial_id}_{i}_kappa={kappa:.2f}"
            d.mkdir()
            params = {"shaping.kappa": kappa, "shaping.tau": tau, "shaping.mode": mode, "seed": rep}
            (d / "params.json").write_text(json.dumps(params))
            lines = []
            for step in range(1, 4):
                acc = 0.3 + 0.05 * np.log(kappa) - 0.2 * tau ** 2 + 0.02 * step + rng.normal(0, 0.02)
                lines.append(json.dumps({"step": step, "training_iteration": step, "trial_id": trial_id,
                                         "val/accuracy": acc, "val/response_length": 40 + 10 * kappa + step,
                                         "config": params}))
            (d / "result.json").write_text("\n".join(lines) + "\n")
            i += 1
    return exp
