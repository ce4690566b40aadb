"""Sweeps: the YAML format is checked before Ray starts; a tiny Optuna+ASHA sweep runs; a killed sweep resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from verl_bench.config import ConfigError
from verl_bench.sweep import SEARCH_SPACES, check_resources, load_sweep

TINY_BASE = {
    "model": "tiny:test", "steps": 3, "checkpoint_every": 1, "keep_checkpoints": 2, "threads": 1,
    "data": {"train": "arithmetic_l1", "eval": "arithmetic_test_l1", "eval_size": 2},
    "rollout": {"prompts_per_step": 2, "n": 4, "max_new_tokens": 12},
    "rank": {"stride": 3, "window": 64},
    "algo": {"lr": 1.0e-3},
}


def _write(tmp_path: Path, name: str = "sweep.yaml", **over) -> Path:
    doc = {
        "base": TINY_BASE,
        "space": {"shaping.kappa": {"loguniform": [0.5, 8.0]}, "shaping.tau": {"uniform": [-0.5, 0.5]},
                  "shaping.mode": {"choice": ["meta", "sum"]}},
        "search": {"algo": "optuna", "seed": 0},
        "scheduler": {"kind": "asha", "grace_period": 1, "max_t": 3},
        "metric": "rank/er", "mode": "max", "num_samples": 3, "resources": {"cpu": 1}, "max_concurrent": 1,
        "storage": str(tmp_path / "store"), "name": "tiny",
    }
    doc.update(over)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------ validation (no Ray)
@pytest.mark.parametrize("space", sorted(p.name for p in SEARCH_SPACES.glob("*.yaml")))
def test_provided_spaces_are_valid(space):
    spec = load_sweep(SEARCH_SPACES / space)
    assert spec.space and spec.base["ray"]["num_workers"] == 1
    if spec.algo == "optuna":  # the paper's point (the base's values) is tried first
        assert spec.points_to_evaluate and spec.points_to_evaluate[0]["shaping.kappa"] == 2.0


def test_required_spaces_exist():
    names = {p.name for p in SEARCH_SPACES.glob("*.yaml")}
    assert {"verl_default.yaml", "era_threshold.yaml", "ablations.yaml", "demo.yaml"} <= names


def test_unknown_keys_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base:\n  model: tiny:test\nspace:\n  shaping.kapa: {uniform: [1, 4]}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:4: space.shaping.kapa: not a TrainConfig key \(did you mean 'kappa'\?\)"):
        load_sweep(bad)
    bad.write_text("base:\n  model: tiny:test\n  rollout: {n: 4, temprature: 1}\nspace:\n  seed: {int: [0, 3]}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:3: rollout.temprature: unknown key"):
        load_sweep(bad)
    bad.write_text("base: {model: tiny:test}\nspace:\n  seed: {int: [0, 3]}\nsheduler: {kind: asha}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:4: sheduler: unknown key \(did you mean 'scheduler'\?\)"):
        load_sweep(bad)
    bad.write_text("base: {model: tiny:test}\nspace:\n  seed: {int: [0, 3]}\nsearch:\n  algo: optuna\n  sed: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:6: search.sed: unknown key"):
        load_sweep(bad)


@pytest.mark.parametrize("space,match", [
    ({"shaping.kappa": {"gaussian": [0, 1]}}, r"space.shaping.kappa: expected one distribution"),
    ({"shaping.kappa": {"uniform": [4, 1]}}, r"space.shaping.kappa: uniform needs lo < hi"),
    ({"shaping.kappa": {"loguniform": [0, 1]}}, r"space.shaping.kappa: loguniform needs lo > 0"),
    ({"shaping.kappa": {"uniform": [-1, 2]}}, r"space.shaping.kappa: .*kappa must be > 0"),  # a sampled value fails
    ({"rollout.n": {"uniform": [2, 8]}}, r"space.rollout.n: rollout.n is an integer: use \{int: \[lo, hi\]\}"),
    ({"shaping.mode": {"choice": ["meta", "mixed"]}}, r"space.shaping.mode: .*must be one of"),
    ({"shaping": {"choice": [1, 2]}}, r"space.shaping: is a section"),
    ({"shaping.kappa": {"grid": [1.0, 2.0]}}, r"space.shaping.kappa: grid is not supported with search.algo optuna"),
])
def test_bad_spaces_are_rejected(tmp_path, space, match):
    with pytest.raises(ConfigError, match=r"sweep.yaml:\d+: " + match):
        load_sweep(_write(tmp_path, space=space))


def test_bad_search_scheduler_and_resources(tmp_path):
    with pytest.raises(ConfigError, match=r"sweep.yaml:\d+: search.algo: must be one of"):
        load_sweep(_write(tmp_path, search={"algo": "hyperopt"}))
    with pytest.raises(ConfigError, match=r"search.points_to_evaluate: point 0: shaping.kappa=9.0 lies outside"):
        load_sweep(_write(tmp_path, search={"algo": "optuna", "points_to_evaluate": [
            {"shaping.kappa": 9.0, "shaping.tau": 0.0, "shaping.mode": "meta"}]}))
    with pytest.raises(ConfigError, match=r"sweep.yaml:\d+: scheduler.grace_period: must be <= max_t"):
        load_sweep(_write(tmp_path, scheduler={"kind": "asha", "grace_period": 5, "max_t": 3}))
    with pytest.raises(ConfigError, match=r"sweep.yaml:\d+: metric: unknown metric 'reward_mean' \(did you mean 'reward/mean'\?\)"):
        load_sweep(_write(tmp_path, metric="reward_mean"))
    with pytest.raises(ConfigError, match=r"sweep.yaml:\d+: seed_repeats: .*use scheduler kind none"):
        load_sweep(_write(tmp_path, seed_repeats=2))
    with pytest.raises(ConfigError, match=r"sweep.yaml:\d+: base: .*ray.num_workers: 1"):
        load_sweep(_write(tmp_path, base={**TINY_BASE, "ray": {"num_workers": 2}}))
    with pytest.raises(ConfigError, match=r"sweep.yaml:\d+: resources.gpu: expected a number"):
        load_sweep(_write(tmp_path, resources={"cpu": 1, "gpu": -1}))
    import torch

    spec = load_sweep(_write(tmp_path, resources={"cpu": 1, "gpu": torch.cuda.device_count() + 1}))
    with pytest.raises(ConfigError, match=r"resources.gpu: \d+ GPU\(s\) per trial but this machine has \d+"):
        check_resources(spec)


def test_errors_are_raised_before_ray_starts(tmp_path):
    import ray
    import torch

    from verl_bench.sweep import run_sweep

    with pytest.raises(ConfigError, match="grid is not supported"):
        run_sweep(_write(tmp_path, space={"shaping.kappa": {"grid": [1.0, 2.0]}}))
    with pytest.raises(ConfigError, match="GPU"):
        run_sweep(_write(tmp_path, resources={"cpu": 1, "gpu": torch.cuda.device_count() + 1}))
    assert not ray.is_initialized()
    assert not (tmp_path / "store").exists()


# ------------------------------------------------------------------------------------ running (Ray)
@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the in-process sweeps (run_sweep joins it instead of starting its own)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {k: v for k, v in os.environ.items()
                                       if k in ("HF_HUB_OFFLINE", "VERL_BENCH_DATA", "TOKENIZERS_PARALLELISM")}})
    yield
    ray.shutdown()


@pytest.mark.slow
def test_optuna_asha_sweep_runs_every_trial(tmp_path, local_ray):
    from verl_bench.sweep import run_sweep

    grid = run_sweep(_write(tmp_path))
    assert len(grid) == 3 and not grid.errors
    configs = [r.config["shaping"] for r in grid]
    assert {"kappa": 2.0, "tau": 0.0, "mode": "meta"} in configs  # the paper's point went first
    for r in grid:
        assert r.metrics["step"] >= 1 and "rank/er" in r.metrics
        assert r.checkpoint is not None and (Path(r.checkpoint.path) / "trainer_state.pt").is_file()
        run = Path(r.path) / "run"  # the training run lives in the trial's own folder in the storage
        assert (run / "metrics.jsonl").is_file()
        assert Path(r.path).parent == tmp_path / "store" / "tiny"
    best = grid.get_best_result()
    assert best.metrics["rank/er"] == max(r.metrics["rank/er"] for r in grid)


@pytest.mark.slow
def test_grid_sweep_with_seed_repeats(tmp_path, local_ray):
    import ray

    from verl_bench.sweep import run_sweep

    base = {**TINY_BASE, "steps": 2}
    try:
        grid = run_sweep(_write(tmp_path, base=base, space={"shaping.mode": {"grid": ["meta", "sum"]}},
                                search={"algo": "grid"}, scheduler={"kind": "none"}, seed_repeats=2,
                                max_concurrent=2, num_samples=1))
    finally:
        ray.shutdown()  # the next test starts its own Ray in a subprocess
    assert len(grid) == 2 and not grid.errors
    assert sorted(r.config["shaping"]["mode"] for r in grid) == ["meta", "sum"]
    for r in grid:
        seeds = [r.metrics_dataframe[f"rank/er/seed{i}"].dropna().iloc[-1] for i in (0, 1)]
        assert r.metrics["rank/er"] == pytest.approx(sum(seeds) / 2)  # the mean over the seeds
        assert seeds[0] != seeds[1]
        for i in (0, 1):
            assert _rows(Path(r.path) / f"run_seed{i}" / "metrics.jsonl") == [0, 1, 2]


def _rows(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line]


@pytest.mark.slow
def test_killed_sweep_resumes_without_rerunning_finished_trials(tmp_path):
    spec = _write(tmp_path, scheduler={"kind": "none"}, search={"algo": "random", "seed": 0})
    exp = tmp_path / "store" / "tiny"
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "0", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "verl_bench.sweep", str(spec)]
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    finished: list[Path] = []
    try:
        deadline = time.time() + 150
        while time.time() < deadline and proc.poll() is None:
            runs = sorted(exp.glob("*/run/metrics.jsonl"))
            finished = [p for p in runs if _rows(p)[-1:] == [3]]
            running = [p.parents[1] for p in runs if p not in finished]
            if finished and any(any(t.glob("checkpoint_*")) for t in running):
                break  # one trial done, the next one has a Tune checkpoint
            time.sleep(0.5)
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert finished, "no trial finished in time"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        proc.wait()
    done = {p: p.stat().st_mtime_ns for p in finished}

    out = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=150, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "3 trial(s), 0 failed" in out.stdout
    assert "resumed from" in out.stdout + out.stderr  # the interrupted trial continued from its checkpoint
    for p, mtime in done.items():  # finished trials were not run again
        assert p.stat().st_mtime_ns == mtime and _rows(p) == [0, 1, 2, 3]
    runs = sorted(exp.glob("*/run/metrics.jsonl"))
    assert len(runs) == 3 and all(_rows(p) == [0, 1, 2, 3] for p in runs)
    for trial in exp.glob("_trial_*"):
        steps = [json.loads(line)["step"] for line in (trial / "result.json").read_text().splitlines()]
        assert steps[-1] == 3
