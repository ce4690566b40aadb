"""Does the embedded default really learn? Train SmolLM2-135M-Instruct on the arithmetic set on this CPU.

    python benchmarks/learning_curve.py [--steps 40] [--set key=value ...]

Runs the demo config (verl_bench/configs/demo.yaml) through the plain training loop, with held-out greedy
accuracy before and after (every problem of the held-out split), and records the per-step curve, step time
and peak memory to benchmarks/results/learning_curve.{jsonl,csv} plus a summary line in
benchmarks/results/learning_curve_summary.jsonl. Resumable: rerunning with the same --run-dir continues.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from datetime import datetime, timezone
from pathlib import Path

import torch

from verl_bench.cli import DEMO_CONFIG
from verl_bench.config import load_config
from verl_bench.train import train

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--run-dir", default="runs/learning_curve")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    cfg = load_config(DEMO_CONFIG, [f"steps={args.steps}", f"run_dir={args.run_dir}", "data.eval_size=64",
                                    f"eval_every={max(args.steps // 4, 1)}", *args.set])
    train(cfg)

    rows = [json.loads(line) for line in (Path(cfg.run_dir) / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["step"] >= 1 and "reward/mean" in r]
    vals = [(r["step"], r["val/accuracy"], r["val/problems"]) for r in rows if "val/accuracy" in r]
    times = [r["time/step_s"] for r in steps]
    k = max(1, len(steps) // 4)
    summary = {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": cfg.model, "train": cfg.data.train, "eval": cfg.data.eval, "steps": len(steps),
        "prompts_per_step": cfg.rollout.prompts_per_step, "n": cfg.rollout.n,
        "max_new_tokens": cfg.rollout.max_new_tokens, "lr": cfg.algo.lr, "shaping": cfg.shaping.enabled,
        "gradient_checkpointing": cfg.gradient_checkpointing, "share_prompt": cfg.share_prompt,
        "micro_batch": cfg.micro_batch, "micro_batch_tokens": cfg.micro_batch_tokens, "engine": cfg.rollout.engine, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "val_accuracy_before": vals[0][1] if vals else None, "val_accuracy_after": vals[-1][1] if vals else None,
        "val_problems": vals[0][2] if vals else None, "val_curve": vals,
        "train_reward_first_quarter": statistics.mean(r["reward/mean"] for r in steps[:k]),
        "train_reward_last_quarter": statistics.mean(r["reward/mean"] for r in steps[-k:]),
        "step_time_median_s": statistics.median(times), "step_time_min_s": min(times),
        "generate_time_median_s": statistics.median(r["time/generate_s"] for r in steps),
        "update_time_median_s": statistics.median(r["time/update_s"] for r in steps),
        "peak_rss_gb": max(r["memory/peak_rss_gb"] for r in steps),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    with (RESULTS / "learning_curve.jsonl").open("w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    keys = ["step", "reward/mean", "accuracy", "response_length", "rank/er", "rank/erv", "rank/era",
            "verl/phi_mean", "verl/frac_shaped", "time/step_s", "memory/peak_rss_gb"]
    with (RESULTS / "learning_curve.csv").open("w") as f:
        f.write(",".join(keys) + "\n")
        for r in steps:
            f.write(",".join(f"{r.get(k, '')}" for k in keys) + "\n")
    with (RESULTS / "learning_curve_summary.jsonl").open("a") as f:
        f.write(json.dumps(summary) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
