"""Per-trial overhead of a Tune sweep, side by side: a plain function trial vs Tune + Ray Train.

    python benchmarks/sweep_overhead.py [--trials 3] [--steps 2]

Both patterns run the same tiny config (tiny:test, arithmetic_l1, 2 steps, threads 1) as ``--trials``
sequential trials on a local 2-CPU Ray:
  plain  the pattern ``run_sweep`` uses: ``verl_bench.sweep.run._trial``, a Tune function trial that calls
         ``verl_bench.train.train`` in the trial's own process (resources {cpu: 1})
  train  a Tune function trial that builds and fits a Ray Train TorchTrainer
         (``verl_bench.distributed.train_with_ray``, 1 worker, ``TuneReportCallback``, Train storage under
         the trial's folder), resources {cpu: 1} for the trial + 1 CPU for the worker
  plain_reuse  plain with ``TuneConfig(reuse_actors=True)`` (trials share a process; for reference only:
         run_sweep does not reuse actors)
The training time of a trial is the wall time of its ``train()`` call up to its last report
(``time/train_call_s``, measured where ``train`` runs: the trial process, or the Train worker). The
per-trial overhead is (the Tuner's fit wall time / trials) - mean training time; per-trial figures use the
time between consecutive trials' last reports. Prints both, the ratio, and appends a JSON line to
benchmarks/results/sweep_overhead.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "sweep_overhead.jsonl"
sys.path.insert(0, str(ROOT))

_default_data = ROOT.parent / "shared" / "data" / "math"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "VERL_BENCH_DATA" not in os.environ and _default_data.is_dir():
    os.environ["VERL_BENCH_DATA"] = str(_default_data)

TINY = {
    "model": "tiny:test", "steps": 2, "checkpoint_every": 2, "keep_checkpoints": 1, "threads": 1,
    "data": {"train": "arithmetic_l1", "eval": "arithmetic_test_l1", "eval_size": 2},
    "rollout": {"prompts_per_step": 2, "n": 4, "max_new_tokens": 12},
    "rank": {"stride": 3, "window": 64},
    "algo": {"lr": 1.0e-3},
}
METRIC = "rank/er"


def _time_train() -> None:
    """Wrap ``verl_bench.train.train`` in this process: every report carries the seconds since the call."""
    import verl_bench.train as T

    if getattr(T.train, "_timed", False):
        return
    real = T.train

    def timed(cfg, report=None, resume_from=None):
        t0 = time.perf_counter()

        def rep(metrics, ckpt_dir):
            if report is not None:
                report({**metrics, "time/train_call_s": time.perf_counter() - t0, "time/wall": time.time()},
                       ckpt_dir)

        return real(cfg, report=rep, resume_from=resume_from)

    timed._timed = True
    T.train = timed


def plain_trial(config: dict, sweep: dict) -> None:
    from verl_bench.sweep.run import _trial

    _time_train()
    _trial(config, sweep)


def _timed_worker(config: dict) -> None:  # runs in the Ray Train worker
    from verl_bench import distributed

    _time_train()
    # a fresh worker process holds the real _worker; the trial process (if it ever ran it) the saved one
    getattr(distributed, "_real_worker", distributed._worker)(config)


def train_trial(config: dict, base: dict, experiment: str) -> None:
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from verl_bench import distributed
    from verl_bench.config import TrainConfig, _merge, from_dict

    if not hasattr(distributed, "_real_worker"):  # train_with_ray looks _worker up when called
        distributed._real_worker = distributed._worker
        distributed._worker = _timed_worker
    ctx = tune.get_context()
    trial_dir = Path(experiment) / Path(ctx.get_trial_dir()).name
    cfg = from_dict(TrainConfig, _merge(base, {**config, "run_dir": str(trial_dir / "run")}))
    distributed.train_with_ray(cfg, storage_path=str(trial_dir / "train"), name=f"train-{ctx.get_trial_id()}",
                               callbacks=[TuneReportCallback()])


def run_pattern(pattern: str, trials: int, steps: int, storage: Path) -> dict:
    from ray import tune

    base = {**TINY, "steps": steps, "checkpoint_every": steps}
    from verl_bench.config import TrainConfig, from_dict

    base = from_dict(TrainConfig, base).to_dict()
    path = storage / pattern
    if pattern in ("plain", "plain_reuse"):
        fn = tune.with_parameters(plain_trial, sweep={"base": base, "metric": METRIC, "seed_repeats": 1,
                                                      "cpu": 1.0, "experiment_path": str(path)})
    else:
        fn = tune.with_parameters(train_trial, base=base, experiment=str(path))
    tuner = tune.Tuner(
        tune.with_resources(fn, {"cpu": 1}),
        param_space={"seed": tune.grid_search(list(range(trials)))},
        tune_config=tune.TuneConfig(max_concurrent_trials=1, reuse_actors=pattern == "plain_reuse"),
        run_config=tune.RunConfig(name=pattern, storage_path=str(storage), verbose=0),
    )
    t0 = time.time()
    grid = tuner.fit()
    wall = time.time() - t0
    errors = [str(r.error) for r in grid if r.error]
    if errors:
        raise RuntimeError(f"{pattern}: {errors}")
    rows = sorted(({"train_s": r.metrics["time/train_call_s"], "end": r.metrics["time/wall"],
                    "step": r.metrics["step"]} for r in grid), key=lambda x: x["end"])
    prev, per_trial = t0, []
    for row in rows:
        per_trial.append(round(row["end"] - prev - row["train_s"], 2))
        prev = row["end"]
    train_s = statistics.mean(r["train_s"] for r in rows)
    out = {"trials": trials, "fit_wall_s": round(wall, 2), "train_s_mean": round(train_s, 2),
           "overhead_s_per_trial": round(wall / trials - train_s, 2), "overhead_s_each": per_trial,
           "steps": [r["step"] for r in rows]}
    print(f"[{pattern}] fit {wall:.1f}s for {trials} trials; train() {train_s:.2f}s/trial; overhead "
          f"{out['overhead_s_per_trial']:.2f}s/trial (each: {per_trial})", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args()

    import ray

    from verl_bench.distributed import init_ray

    init_ray(num_cpus=2, log_to_driver=False)
    res = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for pattern in ("plain", "plain_reuse", "train"):
                res[pattern] = run_pattern(pattern, args.trials, args.steps, Path(tmp))
    finally:
        ray.shutdown()
    ratio = res["train"]["overhead_s_per_trial"] / max(res["plain"]["overhead_s_per_trial"], 1e-9)
    print(f"per-trial overhead: plain {res['plain']['overhead_s_per_trial']:.2f}s, Tune+Train "
          f"{res['train']['overhead_s_per_trial']:.2f}s, ratio {ratio:.1f}x "
          f"(target <= 5 s for the chosen pattern: plain "
          f"{'meets' if res['plain']['overhead_s_per_trial'] <= 5 else 'misses'} it); plain with reused trial "
          f"actors (reuse_actors=True, not what run_sweep does): {res['plain_reuse']['overhead_s_per_trial']:.2f}s")
    row = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
           "cpus": os.cpu_count(), "ray": ray.__version__, "model": TINY["model"], "steps": args.steps,
           **res, "ratio_train_over_plain": round(ratio, 2)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
