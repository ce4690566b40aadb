"""Sweeps: the YAML format is checked before Ray starts; a tiny Optuna+ASHA sweep runs; a killed sweep resumes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY_BASE
from verl_bench.config import ConfigError
from verl_bench.sweep import SEARCH_SPACES, check_resources, load_sweep


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


@pytest.mark.parametrize("text,match", [
    ("base:\n  model: tiny:test\nspace:\n  shaping.kapa: {uniform: [1, 4]}\n",
     r"bad.yaml:4: space.shaping.kapa: not a TrainConfig key \(did you mean 'kappa'\?\)"),
    ("base:\n  model: tiny:test\n  rollout: {n: 4, temprature: 1}\nspace:\n  seed: {int: [0, 3]}\n",
     r"bad.yaml:3: rollout.temprature: unknown key"),
    ("base: {model: tiny:test}\nspace:\n  seed: {int: [0, 3]}\nsheduler: {kind: asha}\n",
     r"bad.yaml:4: sheduler: unknown key \(did you mean 'scheduler'\?\)"),
    ("base: {model: tiny:test}\nspace:\n  seed: {int: [0, 3]}\nsearch:\n  algo: optuna\n  sed: 1\n",
     r"bad.yaml:6: search.sed: unknown key"),
])
def test_unknown_keys_name_file_and_line(tmp_path, text, match):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=match):
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
    with pytest.raises(ConfigError, match=r"sweep.yaml:\d+: seed_repeats: .*make the seed a grid dimension"):
        load_sweep(_write(tmp_path, seed_repeats=2))  # gone: seeds are a grid dimension (or a study's)
    with pytest.raises(ConfigError, match=r"sweep.yaml:\d+: resources.gpu: expected a number"):
        load_sweep(_write(tmp_path, resources={"cpu": 1, "gpu": -1}))
    import torch

    spec = load_sweep(_write(tmp_path, resources={"cpu": 1, "gpu": torch.cuda.device_count() + 1}))
    with pytest.raises(ConfigError, match=r"resources.gpu: \d+ GPU\(s\) per trial but this machine has \d+"):
        check_resources(spec)


TRAIN_BASE = {**TINY_BASE, "ray": {"num_workers": 2, "cpus_per_worker": 1}}


def test_train_worker_trials_are_validated(tmp_path):
    """ray.num_workers > 1: resources are the trial's own process; its workers must fit beside it."""
    spec = load_sweep(_write(tmp_path, base=TRAIN_BASE, resources={"cpu": 0}))
    assert spec.workers == 2 and spec.cpu == 0
    check_resources(spec)  # 0 + 2 workers x 1 CPU fit this machine's 2 CPUs
    with pytest.raises(ConfigError, match=r"sweep.yaml:\d+: resources.cpu: 2 trial process\(es\) x 1 CPU \+ 2 "
                                          r"Train workers x 1 CPU = 4 CPUs"):
        check_resources(load_sweep(_write(tmp_path, base=TRAIN_BASE, max_concurrent=2, resources={"cpu": 1})),
                        cpus=2)
    with pytest.raises(ConfigError, match=r"sweep.yaml:\d+: resources.gpu: .*take GPUs through ray.use_gpu"):
        load_sweep(_write(tmp_path, base=TRAIN_BASE, resources={"cpu": 0, "gpu": 1}))
    with pytest.raises(ConfigError, match=r"sweep.yaml:\d+: resources.cpu: expected a number > 0, got 0 \(cpu 0 "):
        load_sweep(_write(tmp_path, resources={"cpu": 0}))  # a one-process trial needs its CPU
    with pytest.raises(ConfigError, match=r"sweep.yaml:\d+: space.ray.num_workers: ray.\* keys .* fixed"):
        load_sweep(_write(tmp_path, space={"ray.num_workers": {"choice": [1, 2]}}))


@pytest.mark.parametrize("over,match", [
    ({"metric": ["rank/er", "response_length"], "mode": "max"}, r"mode: needs one mode \(max or min\) per metric"),
    ({"metric": ["rank/er", "response_length"], "mode": ["max"]}, r"mode: needs one mode"),
    ({"metric": "rank/er", "mode": ["max", "min"]}, r"mode: needs one mode"),
    ({"metric": ["rank/er", "rank/er"], "mode": ["max", "min"]}, r"metric: names a metric twice"),
    ({"metric": ["rank/er", "respons_length"], "mode": ["max", "min"]},
     r"metric: unknown metric 'respons_length' \(did you mean 'response_length'\?\)"),
    ({"metric": ["rank/er", "response_length"], "mode": ["max", "least"]}, r"mode: must be max or min"),
    ({"metric": ["rank/er", "response_length"], "mode": ["max", "min"], "search": {"algo": "random"}},
     r"metric: a list of metrics is a multi-objective search, which needs search.algo optuna"),
    ({"metric": "val/accuracy", "base": {**TINY_BASE, "data": {**TINY_BASE["data"], "eval_size": 0}}},
     r"metric: val/\* metrics come from the held-out validation"),
])
def test_bad_objectives_are_rejected(tmp_path, over, match):
    with pytest.raises(ConfigError, match=r"sweep.yaml:\d+: " + match):
        load_sweep(_write(tmp_path, **over))


def test_multi_objective_spec_and_pareto_front():
    spec_path = SEARCH_SPACES / "pareto_length.yaml"
    spec = load_sweep(spec_path)
    assert spec.metrics == ["val/accuracy", "val/response_length"] and spec.modes == ["max", "min"]
    from types import SimpleNamespace

    from verl_bench.sweep.run import pareto_front

    rs = [SimpleNamespace(metrics={"a": a, "len": n}) for a, n in [(0.5, 30), (0.6, 40), (0.4, 35), (0.6, 50)]]
    front = pareto_front(rs, ["a", "len"], ["max", "min"])
    assert [(r.metrics["a"], r.metrics["len"]) for r in front] == [(0.5, 30), (0.6, 40)]


PBT = {"kind": "pbt", "perturbation_interval": 1}


@pytest.mark.parametrize("over,match", [
    ({"search": {"algo": "optuna"}}, r"search.algo: PBT .* use search.algo random"),
    ({"space": {"rollout.n": {"int": [2, 4]}}}, r"space.rollout.n: rollout.n cannot change in the middle of a run"),
    ({"scheduler": {**PBT, "hyperparam_mutations": {"seed": {"int": [0, 3]}}}},
     r"scheduler.hyperparam_mutations.seed: seed cannot change in the middle of a run"),
    ({"scheduler": {**PBT, "hyperparam_mutations": {"shaping.kappa": {"gaussian": [1, 2]}}}},
     r"scheduler.hyperparam_mutations.shaping.kappa: expected one distribution"),
    ({"scheduler": {"kind": "pbt"}}, r"scheduler: PBT needs perturbation_interval"),
    ({"scheduler": {**PBT, "perturbation_interval": 3}}, r"scheduler.perturbation_interval: must be < the base"),
    ({"scheduler": {**PBT, "perturbation_interval": 1}, "base": {**TINY_BASE, "checkpoint_every": 2}},
     r"scheduler.perturbation_interval: must be a multiple of the base config's checkpoint_every \(2\)"),
    ({"scheduler": {**PBT, "grace_period": 1}}, r"scheduler.grace_period: not used by scheduler kind pbt"),
    ({"scheduler": {**PBT, "quantile_fraction": 0.7}}, r"scheduler.quantile_fraction: expected a number in"),
    ({"num_samples": 1}, r"num_samples: PBT needs a population of at least 2 trials"),
    ({"max_concurrent": 1}, r"max_concurrent: PBT keeps its whole population \(3 trials\) alive"),
    ({"base": {**TINY_BASE, "keep_checkpoints": 2}}, r"base: keep_checkpoints 2: PBT needs 0 \(all\) or >= 3"),
    ({"base": TRAIN_BASE, "resources": {"cpu": 0}}, r"base: PBT needs Tune checkpoints"),
])
def test_bad_pbt_is_rejected(tmp_path, over, match):
    doc = {"search": {"algo": "random"}, "scheduler": PBT, "space": {"shaping.kappa": {"loguniform": [0.5, 8.0]}},
           "base": {**TINY_BASE, "keep_checkpoints": 0}, "max_concurrent": 3}
    doc.update(over)
    with pytest.raises(ConfigError, match=r"sweep.yaml:\d+: " + match):
        load_sweep(_write(tmp_path, **doc))


def test_pbt_spec_and_bounds():
    from verl_bench.sweep.run import _clamp_to_bounds

    spec = load_sweep(SEARCH_SPACES / "pbt_kappa.yaml")
    assert spec.scheduler == "pbt" and spec.perturbation_interval == 5 and spec.population == 4
    assert [d.key for d in spec.mutations] == ["shaping.kappa", "shaping.gain", "algo.lr"]
    assert spec.max_concurrent == 4  # the whole population is alive
    cfg = {"shaping": {"kappa": 9.6, "alpha": -0.1}, "rollout": {"n": 9}}  # x1.2 / x0.8 left the bounds
    out = _clamp_to_bounds(cfg, [("shaping.kappa", "loguniform", 0.5, 8.0), ("shaping.alpha", "uniform", 0.05, 0.9),
                                 ("rollout.n", "int", 2, 8)])
    assert out == {"shaping": {"kappa": 8.0, "alpha": 0.05}, "rollout": {"n": 8}}


def test_progress_line_is_printed_on_changes_not_per_result(capsys):
    from types import SimpleNamespace

    from verl_bench.sweep.progress import SweepProgress

    p = SweepProgress("loss", "min", every_s=3600)
    trials = [SimpleNamespace(status="RUNNING", trial_id="t0"), SimpleNamespace(status="PENDING", trial_id="t1")]
    p.on_step_end(0, trials)
    for step, loss in enumerate([3.0, 1.0, 2.0, float("nan")] * 25, start=1):  # 100 results, same counts
        p.on_trial_result(step, trials, trials[0], {"loss": loss, "step": step})
        p.on_step_end(step, trials)
    trials[0].status, trials[1].status = "TERMINATED", "ERROR"
    p.on_step_end(101, trials)
    p.on_experiment_end(trials)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2, lines
    assert re.fullmatch(r"\[sweep 0m0\ds\] 1 running, 1 pending, 0 paused, 0 done, 0 errored \| no loss yet", lines[0])
    assert lines[1].endswith("0 running, 0 pending, 0 paused, 1 done, 1 errored | best loss 1 (trial t0, step 2)")


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
@pytest.mark.slow
def test_optuna_asha_sweep_runs_every_trial(tmp_path, local_ray, capsys):
    from verl_bench.sweep import run_sweep

    grid = run_sweep(_write(tmp_path))
    assert len(grid) == 3 and not grid.errors
    # the status line: printed when trial counts change, never once per result (3 trials x 3 steps)
    status = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[sweep ")]
    assert 3 <= len(status) <= 10, status
    assert any(re.search(r"1 running, \d+ pending, 0 paused, \d done, 0 errored \| best rank/er [\d.]+ "
                         r"\(trial \w+, step \d\)", line) for line in status), status
    best_er = max(r.metrics_dataframe["rank/er"].max() for r in grid)  # over every step of every trial
    final = re.search(r"0 running, 0 pending, 0 paused, 3 done, 0 errored \| best rank/er ([\d.]+)", status[-1])
    assert final and float(final.group(1)) == pytest.approx(best_er, rel=1e-3), status[-1]
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
def test_reused_trial_processes_carry_no_state(tmp_path, local_ray):
    """Two trials of the same config: the second runs in the first one's process (reuse_actors) and must
    train exactly the same numbers (no RNG, optimizer, shaper or cache state carried over)."""
    from verl_bench.sweep import run_sweep

    grid = run_sweep(_write(tmp_path, base={**TINY_BASE, "steps": 2}, space={"shaping.mode": {"grid": ["meta"]}},
                            search={"algo": "grid"}, scheduler={"kind": "none"}, num_samples=2))
    assert len(grid) == 2 and not grid.errors
    a, b = (r.metrics_dataframe for r in grid)
    assert a["pid"].iloc[-1] == b["pid"].iloc[-1]  # one process ran both trials
    for key in ("rank/er", "rank/erv", "reward/mean", "loss", "grad_norm", "verl/phi_mean", "response_length"):
        assert b[key].tolist() == pytest.approx(a[key].tolist(), rel=1e-9, abs=1e-12), key


def _optuna_searcher_state(experiment: Path) -> dict:
    """The Optuna searcher's state as Tune saved it with the experiment (ConcurrencyLimiter saves its inner
    searcher's attributes)."""
    import pickle

    return pickle.loads(next(experiment.glob("searcher-state-*.pkl")).read_bytes())


@pytest.mark.slow
def test_multi_objective_optuna_sweep(tmp_path, local_ray):
    import optuna

    from verl_bench.sweep import run_sweep

    grid = run_sweep(_write(tmp_path, base={**TINY_BASE, "steps": 2}, metric=["rank/er", "response_length"],
                            mode=["max", "min"], scheduler={"kind": "asha", "grace_period": 1, "max_t": 2},
                            num_samples=3))
    assert len(grid) == 3 and not grid.errors
    state = _optuna_searcher_state(tmp_path / "store" / "tiny")
    assert state["_metric"] == ["rank/er", "response_length"] and state["_mode"] == ["max", "min"]
    study = state["_ot_study"]
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 3  # every trial told Optuna both values: the ones it reported last
    reported = sorted((r.metrics["rank/er"], r.metrics["response_length"]) for r in grid)
    assert sorted(tuple(t.values) for t in done) == [pytest.approx(v) for v in reported]


@pytest.mark.slow
def test_grid_sweep_over_seeds(tmp_path, local_ray):
    """The seed is a grid dimension like any key: one trial per (mode, seed), each with its own run."""
    import ray

    from verl_bench.sweep import run_sweep

    base = {**TINY_BASE, "steps": 2}
    try:
        grid = run_sweep(_write(tmp_path, base=base, space={"shaping.mode": {"grid": ["meta", "sum"]},
                                                            "seed": {"grid": [0, 1]}},
                                search={"algo": "grid"}, scheduler={"kind": "none"}, max_concurrent=2,
                                num_samples=1))
    finally:
        ray.shutdown()  # the next test starts its own Ray in a subprocess
    assert len(grid) == 4 and not grid.errors
    assert sorted((r.config["shaping"]["mode"], r.config["seed"]) for r in grid) == [
        ("meta", 0), ("meta", 1), ("sum", 0), ("sum", 1)]
    by_seed = {}
    for r in grid:
        assert _rows(Path(r.path) / "run" / "metrics.jsonl") == [0, 1, 2]
        by_seed.setdefault(r.config["shaping"]["mode"], []).append(r.metrics["rank/er"])
    assert all(a != b for a, b in by_seed.values())  # different seeds, different runs


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
