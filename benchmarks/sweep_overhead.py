"""Per-trial overhead of a Tune sweep, side by side: the patterns ``run_sweep`` uses and the alternative.

    python benchmarks/sweep_overhead.py [--trials 3] [--steps 2] [--patterns plain_reuse,plain] [--model SPEC]

Every pattern runs the same tiny config (tiny:test, arithmetic_l1, ``--steps`` steps, threads 1) as
``--trials`` sequential trials through ``verl_bench.sweep.run._trial`` (the function ``run_sweep`` gives
Tune), on a local 2-CPU Ray started the way ``run_sweep`` starts it:
  plain_reuse     ray.num_workers 1: ``train`` in the trial's process, ``reuse_actors=True`` (what
                  run_sweep does: the next trial reuses the process)
  plain           the same with a fresh trial process per trial (``reuse_actors=False``; the previous default)
  train_2workers  ray.num_workers 2 (1 CPU each): the trial fits a Ray Train TorchTrainer
                  (``TuneReportCallback``) and reserves no CPU itself (resources.cpu 0); what run_sweep does
                  for ray.num_workers > 1 (with Ray's dashboard up, which Train needs to clean up stopped runs)
The training time of a trial is the wall time of its ``train()`` call up to its last report
(``time/train_call_s``, measured where ``train`` runs: the trial process, or the rank-0 Train worker). The
per-trial overhead is (the Tuner's fit wall time / trials) - mean training time; per-trial figures use the
time between consecutive trials' last reports. Each trial's own peak RSS (``memory/peak_rss_gb``: the
trial resets its process's high-water mark when it starts; and its CUDA peak on a GPU) is recorded in run
order as ``trial_peak_rss_gb``: in plain_reuse the later trials run in the first one's process, and their
peaks against plain's (a fresh process each) show whether a reused process holds its memory. Prints the
figures and their ratios, with the load average (the machine may be shared), and appends a JSON line to
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

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "sweep_overhead.jsonl"
sys.path.insert(0, str(ROOT))

_default_data = ROOT.parent / "shared" / "data" / "math"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "VERL_BENCH_DATA" not in os.environ and _default_data.is_dir():
    os.environ["VERL_BENCH_DATA"] = str(_default_data)

# the tests' tiny run (2 prompts x 4 samples of 12 tokens), 2 steps, one checkpoint at the end
TINY = {**yaml.safe_load((ROOT / "verl_bench" / "configs" / "tiny.yaml").read_text()),
        "steps": 2, "checkpoint_every": 2, "keep_checkpoints": 1}
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


def timed_trial(config: dict, sweep: dict) -> None:
    """``run_sweep``'s trial function, with ``train`` (in this process, or in the Train workers) timed."""
    from verl_bench import distributed
    from verl_bench.sweep.run import _trial

    _time_train()
    if not hasattr(distributed, "_real_worker"):  # train_with_ray looks _worker up when called
        distributed._real_worker = distributed._worker
        distributed._worker = _timed_worker
    _trial(config, sweep)


def _timed_worker(config: dict) -> None:  # runs in a Ray Train worker
    from verl_bench import distributed

    _time_train()
    # a fresh worker process holds the real _worker; a trial process (if it ever ran it) the saved one
    getattr(distributed, "_real_worker", distributed._worker)(config)


PATTERNS = {  # name: (ray.num_workers, resources.cpu of the trial process, reuse_actors)
    "plain_reuse": (1, 1.0, True),
    "plain": (1, 1.0, False),
    "train_2workers": (2, 0.0, False),
}


def run_pattern(pattern: str, trials: int, steps: int, storage: Path, model: str = TINY["model"]) -> dict:
    from ray import tune

    from verl_bench.config import TrainConfig, from_dict
    from verl_bench.sweep.run import DRIVER_MEMORY

    workers, cpu, reuse = PATTERNS[pattern]
    base = from_dict(TrainConfig, {**TINY, "model": model, "steps": steps, "checkpoint_every": steps,
                                   "ray": {"num_workers": workers, "cpus_per_worker": 1}}).to_dict()
    path = storage / pattern
    fn = tune.with_parameters(timed_trial, sweep={"base": base, "metrics": [METRIC], "seed_repeats": 1,
                                                  "cpu": cpu, "experiment_path": str(path)})
    resources = {"cpu": cpu} if cpu else {"cpu": 0, "memory": DRIVER_MEMORY}  # as run_sweep's _trial_resources
    tuner = tune.Tuner(
        tune.with_resources(fn, resources),
        param_space={"seed": tune.grid_search(list(range(trials)))},
        tune_config=tune.TuneConfig(max_concurrent_trials=1, reuse_actors=reuse),
        run_config=tune.RunConfig(name=pattern, storage_path=str(storage), verbose=0),
    )
    load_before = os.getloadavg()
    t0 = time.time()
    grid = tuner.fit()
    wall = time.time() - t0
    errors = [str(r.error) for r in grid if r.error]
    if errors:
        raise RuntimeError(f"{pattern}: {errors}")
    # memory/peak_*: each trial's own peak (a trial resets its process's high-water mark when it starts)
    rows = sorted(({"train_s": r.metrics["time/train_call_s"], "end": r.metrics["time/wall"],
                    "step": r.metrics["step"], "pid": r.metrics.get("pid"),
                    "rss": float(r.metrics_dataframe["memory/peak_rss_gb"].max()),
                    "cuda": r.metrics.get("memory/peak_cuda_gb")} for r in grid), key=lambda x: x["end"])
    prev, per_trial = t0, []
    for row in rows:
        per_trial.append(round(row["end"] - prev - row["train_s"], 2))
        prev = row["end"]
    train_s = statistics.mean(r["train_s"] for r in rows)
    out = {"trials": trials, "fit_wall_s": round(wall, 2), "train_s_mean": round(train_s, 2),
           "overhead_s_per_trial": round(wall / trials - train_s, 2), "overhead_s_each": per_trial,
           "steps": [r["step"] for r in rows], "trial_processes": len({r["pid"] for r in rows}),
           "trial_peak_rss_gb": [round(r["rss"], 3) for r in rows],
           "loadavg_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)]}
    if all(r["cuda"] is not None for r in rows):
        out["trial_peak_cuda_gb"] = [round(r["cuda"], 3) for r in rows]
    print(f"[{pattern}] fit {wall:.1f}s for {trials} trials; train() {train_s:.2f}s/trial; overhead "
          f"{out['overhead_s_per_trial']:.2f}s/trial (each: {per_trial}); {out['trial_processes']} trial "
          f"process(es); peak RSS per trial {out['trial_peak_rss_gb']} GB; load {out['loadavg_1m_before_after']}",
          flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--patterns", default=",".join(PATTERNS), help=f"a comma list of {list(PATTERNS)}")
    ap.add_argument("--model", default=TINY["model"], help="the trials' model spec (memory: a bigger tiny:...)")
    args = ap.parse_args()
    patterns = [p for p in PATTERNS if p in args.patterns.split(",")]

    import ray

    from verl_bench.distributed import init_ray
    from verl_bench.models import resolve_model

    resolve_model(args.model)  # built before any trial, so no trial pays (or keeps) the build
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        for pattern in patterns:
            # a Ray per pattern, started as run_sweep starts it (the dashboard only for Train workers)
            init_ray(num_cpus=2, log_to_driver=False, dashboard=PATTERNS[pattern][0] > 1)
            try:
                res[pattern] = run_pattern(pattern, args.trials, args.steps, Path(tmp), args.model)
            finally:
                ray.shutdown()
    chosen = res["plain_reuse"]["overhead_s_per_trial"] if "plain_reuse" in res else None
    ratios = {f"{p}_over_plain_reuse": round(res[p]["overhead_s_per_trial"] / max(chosen, 1e-9), 2)
              for p in res if p != "plain_reuse" and chosen is not None}
    print("per-trial overhead: " + "; ".join(f"{p} {r['overhead_s_per_trial']:.2f}s" for p, r in res.items())
          + (f" ({'meets' if chosen <= 5 else 'misses'} the <= 5 s target for plain_reuse)" if chosen else "")
          + f"; ratios {ratios}; load average now {os.getloadavg()[0]:.2f}")
    if "plain_reuse" in res and "plain" in res:  # a reused process against a fresh one per trial
        ratios["reused_peak_rss_over_fresh"] = round(max(res["plain_reuse"]["trial_peak_rss_gb"])
                                                     / max(res["plain"]["trial_peak_rss_gb"]), 3)
        print(f"peak RSS per trial: reused process {res['plain_reuse']['trial_peak_rss_gb']} GB, a fresh process "
              f"each {res['plain']['trial_peak_rss_gb']} GB (ratio of the maxima "
              f"{ratios['reused_peak_rss_over_fresh']})")
    row = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
           "cpus": os.cpu_count(), "ray": ray.__version__, "model": args.model, "steps": args.steps,
           **res, "ratios": ratios, "chosen": "plain_reuse"}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
