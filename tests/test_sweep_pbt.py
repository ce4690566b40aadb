"""PBT: a trial restarted from another trial's checkpoint trains with its own, mutated config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.test_sweep import TINY_BASE, _write
from verl_bench.config import load_config
from verl_bench.train import STATE_FILE, latest_checkpoint, train


def _saved_lr(checkpoint: Path) -> float:
    state = torch.load(checkpoint / STATE_FILE, weights_only=False)
    return state["optimizer"]["param_groups"][0]["lr"]


def test_resume_applies_the_new_configs_lr(tmp_path):
    """The optimizer state holds the old run's lr; a resumed run with another lr must train with the new one."""
    base = {**TINY_BASE, "run_dir": str(tmp_path / "a"), "steps": 2, "checkpoint_every": 1, "keep_checkpoints": 0,
            "data": {**TINY_BASE["data"], "eval_size": 0}}
    train(load_config(None, ["algo.lr=0.001", "algo.weight_decay=0.0"], base=base), stop_after=1)
    donor = latest_checkpoint(tmp_path / "a")
    assert _saved_lr(donor) == pytest.approx(1e-3)
    # another run (as PBT does: the trial's own run_dir) resumes from that checkpoint with a mutated lr
    cfg = load_config(None, [f"run_dir={tmp_path / 'b'}", "algo.lr=0.004", "algo.weight_decay=0.01"], base=base)
    train(cfg, resume_from=donor)
    state = torch.load(latest_checkpoint(tmp_path / "b") / STATE_FILE, weights_only=False)
    assert state["step"] == 2
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(4e-3)
    assert state["optimizer"]["param_groups"][0]["weight_decay"] == pytest.approx(0.01)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_pbt_sweep_clones_and_perturbs(tmp_path, fresh_ray):
    from verl_bench.sweep import run_sweep

    # The metric is the shaping lambda itself (verl/lambda = shaping.lam with lambda_mode fixed): the trial
    # with the smaller lam is always the worse one, so at a perturbation step where both trials have a
    # score, the worse trial is cloned from the better one. resample_probability 0: mutations are x0.8/x1.2.
    steps = 8  # perturbations at steps 2, 4, 6 leave steps to train after a clone
    base = {**TINY_BASE, "steps": steps, "checkpoint_every": 1, "keep_checkpoints": 0}
    grid = run_sweep(_write(
        tmp_path, base=base, space={"shaping.lam": {"uniform": [0.5, 2.0]}, "algo.lr": {"loguniform": [1e-4, 1e-1]}},
        search={"algo": "random", "seed": 0}, metric="verl/lambda", mode="max", num_samples=2, max_concurrent=2,
        scheduler={"kind": "pbt", "perturbation_interval": 2, "resample_probability": 0.0}))
    assert len(grid) == 2 and not grid.errors, [r.error for r in grid]
    exp = tmp_path / "store" / "tiny"
    assert (exp / "pbt_global.txt").read_text().strip(), "PBT logged no exploit"
    trial_dirs = {Path(r.path).name for r in grid}

    exploited = 0
    for r in grid:
        df = r.metrics_dataframe
        # Tune's result file keeps every report across the restarts (sweep/loggers.py): the trial's own steps
        # from 1, then after each clone the donor's step + 1 onwards, each run of rows without a gap, to the end
        assert len(df) and "restored_from" in df, f"{r.path}: Tune kept no result rows"
        runs = (df["restored_from"].fillna("") != df["restored_from"].fillna("").shift()).cumsum()
        segments = [seg for _, seg in df.groupby(runs, sort=False)]
        assert segments[0]["step"].iloc[0] == 1, df[["step", "restored_from"]]
        for seg in segments:
            assert list(seg["step"]) == list(range(seg["step"].iloc[0], seg["step"].iloc[-1] + 1)), seg["step"]
        clones = []
        for path in df["restored_from"].fillna("").unique():
            if "/checkpoint_" not in path:  # a Tune checkpoint: a clone, or PBT resuming a trial it paused
                continue
            ckpt = Path(path)
            donor = ckpt.parent.name
            assert donor in trial_dirs
            donor_step = torch.load(ckpt / STATE_FILE, weights_only=False)["step"]
            first = df[df["restored_from"] == path]["step"].min()
            assert first == donor_step + 1  # continued from the checkpoint's step, not from step 0
            if donor != Path(r.path).name:
                clones.append(path)
        exploited += len(clones)
        # Tune's log of this trial's exploits, pbt_policy_<trial id>.txt (the trial's folder name holds its id;
        # r.metrics may not: after an exploit of a donor's final checkpoint it is the donor's last result)
        policies = [p for p in exp.glob("pbt_policy_*.txt")
                    if f"_{p.stem.removeprefix('pbt_policy_')}_" in Path(r.path).name]
        exploits = sum(len(p.read_text().splitlines()) for p in policies)
        assert len(clones) <= exploits
        if len(clones) < exploits:
            continue  # the last exploit cloned a donor's final checkpoint: the trial trained no step after it
        assert df["step"].iloc[-1] == steps
        if clones:
            # after the last clone the trial trained with its mutated config: lam as reported, lr as saved
            cfg = r.config
            assert df["verl/lambda"].iloc[-1] == pytest.approx(cfg["shaping"]["lam"])
            assert 0.5 <= cfg["shaping"]["lam"] <= 2.0 and 1e-4 <= cfg["algo"]["lr"] <= 1e-1  # clamped to bounds
            assert _saved_lr(latest_checkpoint(Path(r.path) / "run")) == pytest.approx(cfg["algo"]["lr"])
            written = _yaml(Path(r.path) / "run" / "config.yaml")  # what train() last started with
            assert written["shaping"]["lam"] == pytest.approx(cfg["shaping"]["lam"])
    assert exploited >= 1, "no trial continued from another trial's checkpoint"


def _yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())
