"""Sweeps whose trials drive Ray Train workers (``ray.num_workers: 2``): Tune trial -> TorchTrainer -> DDP.

Each trial process reserves no CPU (``resources.cpu: 0``: it only waits on its workers), its two workers
one CPU each, so one trial at a time fits this 2-CPU machine.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.test_sweep import TINY_BASE, _write

TRAIN_BASE = {**TINY_BASE, "steps": 2, "checkpoint_every": 1, "keep_checkpoints": 0, "threads": 1,
              "ray": {"num_workers": 2, "cpus_per_worker": 1}}


def _rows(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line]


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_trials_train_on_two_workers_and_asha_stops_them(tmp_path, fresh_ray):
    from verl_bench.sweep import run_sweep

    # the metric is the shaping lambda itself (verl/lambda = shaping.lam with lambda_mode fixed), so the
    # outcome is known: the second trial (lam 0.5) is worse than the first (lam 1.0) at ASHA's rung (step 1)
    grid = run_sweep(_write(tmp_path, base=TRAIN_BASE, space={"shaping.lam": {"grid": [1.0, 0.5]}},
                            search={"algo": "grid"}, scheduler={"kind": "asha", "grace_period": 1, "max_t": 2},
                            metric="verl/lambda", mode="max", num_samples=1, resources={"cpu": 0},
                            max_concurrent=1))
    assert len(grid) == 2 and not grid.errors, [r.error for r in grid]
    by_lam = {r.config["shaping"]["lam"]: r for r in grid}
    for lam, r in by_lam.items():
        df = r.metrics_dataframe
        # the loop trained in a torch process group of 2 (reported by rank 0 from torch.distributed)
        assert (df["world_size"] == 2).all(), df["world_size"].tolist()
        assert df["verl/lambda"].tolist() == [lam] * len(df)
        assert r.checkpoint is None  # Train keeps the checkpoints; Tune gets their path as a metric
        ckpt = Path(r.metrics["checkpoint_path"])
        assert (ckpt / "trainer_state.pt").is_file() and Path(r.path) / "train" in ckpt.parents
        assert _rows(Path(r.path) / "run" / "metrics.jsonl")[:2] == [0, 1]  # rank 0 wrote the run's rows
    assert by_lam[1.0].metrics["step"] == 2
    assert by_lam[0.5].metrics["step"] == 1  # stopped by ASHA; the sweep still ended (its workers were freed)


def _kill_a_train_worker_once_checkpointed(exp: Path, killed: list, timeout_s: float = 240) -> None:
    """When a trial's Train run has registered its first checkpoint (its snapshot file exists), SIGKILL one
    Ray Train worker process: a crash, as on preemption."""
    import psutil

    deadline = time.time() + timeout_s
    while time.time() < deadline and not list(exp.glob("*/train/*/checkpoint_manager_snapshot.json")):
        time.sleep(0.2)
    for p in psutil.process_iter(["pid", "cmdline"]):
        if any("RayTrainWorker" in part for part in p.info["cmdline"] or []):
            os.kill(p.info["pid"], signal.SIGKILL)
            killed.append(p.info["pid"])
            return


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_failed_train_trial_resumes_from_its_checkpoint(tmp_path, fresh_ray):
    from verl_bench.sweep import run_sweep

    base = {**TRAIN_BASE, "steps": 4}
    spec = _write(tmp_path, base=base, space={"shaping.lam": {"grid": [1.0]}}, search={"algo": "grid"},
                  scheduler={"kind": "none"}, metric="rank/er", num_samples=1, resources={"cpu": 0},
                  max_concurrent=1, max_failures=1)
    exp = tmp_path / "store" / "tiny"
    killed: list[int] = []
    watcher = threading.Thread(target=_kill_a_train_worker_once_checkpointed, args=(exp, killed), daemon=True)
    watcher.start()
    grid = run_sweep(spec)
    watcher.join(timeout=5)
    assert killed, "no Train worker was found to kill"
    assert len(grid) == 1 and not grid.errors, [r.error for r in grid]
    r = grid[0]
    assert (Path(r.path) / "error.txt").is_file()  # the first attempt failed...
    assert r.metrics["step"] == 4  # ...and the retry finished
    df = r.metrics_dataframe
    resumed = df[df["restored_from"].fillna("") != ""]
    assert len(resumed), "the retried trial did not resume from a checkpoint"
    # it resumed from the Train run's own checkpoint (same storage and name: Train V2 restores its snapshot)
    restored = Path(resumed["restored_from"].iloc[0])
    assert Path(r.path) / "train" in restored.parents, restored
    # and continued after it instead of starting over at step 1
    assert int(resumed["step"].iloc[0]) >= 2
    assert _rows(Path(r.path) / "run" / "metrics.jsonl") == [0, 1, 2, 3, 4]  # redone steps were truncated
