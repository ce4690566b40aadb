"""Studies: the file format is refused before Ray starts; the shipped studies validate; a tiny 2-arm x 2-seed
study runs end to end through the CLI, is SIGKILLed during training and during evaluation, and resumes
without redoing a finished trial or benchmark."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from verl_bench.cli import main
from verl_bench.config import ConfigError
from verl_bench.study import STUDIES, load_study

TINY_BASE = {
    "model": "tiny:test", "steps": 2, "checkpoint_every": 0, "keep_checkpoints": 1, "threads": 1,
    "data": {"train": "arithmetic_l0", "eval": "arithmetic_test_l0", "eval_size": 0},
    "rollout": {"prompts_per_step": 2, "n": 4, "max_new_tokens": 8},
    "rank": {"stride": 3, "window": 64},
    "algo": {"lr": 1.0e-3},
}
PROBLEMS, SAMPLES = 5, 2


def _doc(tmp_path: Path, **over) -> dict:
    doc = {
        "name": "tiny", "storage": str(tmp_path / "store"), "report": str(tmp_path / "report"),
        "base": TINY_BASE,
        "budget": {"steps": 2},
        "models": {"tiny": {"model": "tiny:test", "template": "chat-direct"}},
        "arms": {"grpo": {"shaping.enabled": False}, "verl": {}},
        "seeds": [0, 1],
        "evaluation": {"benchmarks": ["arithmetic_test_l0"], "preset": "paper", "n": SAMPLES, "max_tokens": 8,
                       "limit": PROBLEMS, "checkpoint": "last", "base": True, "resources": {"cpu": 1},
                       "backend": "sampler"},
        "primary": {"benchmark": "arithmetic_test_l0", "metric": "accuracy", "compare": ["verl", "grpo"]},
        "resources": {"cpu": 1},
        "max_concurrent": 1,
    }
    doc.update(over)
    return doc


def _write(tmp_path: Path, name: str = "study.yaml", **over) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(_doc(tmp_path, **over), sort_keys=False))
    return path


# ------------------------------------------------------------------------------------ validation (no Ray)
def test_shipped_studies_are_valid():
    demo = load_study(STUDIES / "demo.yaml")
    assert demo.compare == ("verl", "grpo") and len(demo.seeds) >= 2 and demo.evaluate_base
    assert {t.config["shaping"]["enabled"] for t in demo.trials} == {True, False}
    paper = load_study(STUDIES / "paper.yaml")
    assert len(paper.trials) == 3 * 2 * 3
    assert {m.spec for m in paper.models} == {"meta-llama/Llama-3.2-3B-Instruct", "Qwen/Qwen2.5-7B",
                                              "mistralai/Mathstral-7B-v0.1"}
    qwen = next(t.config for t in paper.trials if t.model == "qwen2.5-7b" and t.arm == "verl")
    assert qwen["data"]["template"] == "qwen-boxed" and qwen["algo"]["lr"] == 5.0e-7 and qwen["steps"] == 161
    assert paper.primary_benchmark == "average" and paper.preset.name == "paper" and paper.preset.n == 1


def test_paper_dry_run_prints_the_plan_and_resolves_no_model(capsys, monkeypatch):
    import ray

    from verl_bench import models

    def no_hub(*a, **k):
        raise AssertionError("a dry run must not resolve models")

    monkeypatch.setattr(models, "resolve_model", no_hub)
    monkeypatch.setattr(models, "_resolve_hub", no_hub)
    assert main(["study", str(STUDIES / "paper.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "3 model(s) x 2 arm(s) x 3 seed(s) = 18 trials of 161 steps" in out
    assert "8 Ray Train workers" in out and "GPU" in out
    assert "primary endpoint: verl - grpo on average accuracy" in out
    assert not ray.is_initialized()


@pytest.mark.parametrize("over,match", [
    ({"arms": {"grpo": {"shaping.enabled": False}}, "seedz": [0]},
     r"study.yaml:\d+: seedz: unknown key \(did you mean 'seeds'\?\)"),
    ({"arms": {"grpo": {"shaping.enabld": False}, "verl": {}}},
     r"study.yaml:\d+: arms.grpo.shaping.enabld: not a TrainConfig key \(did you mean 'enabled'\?\)"),
    ({"arms": {"grpo": {"shaping.kappa": -1.0}, "verl": {}}},
     r"study.yaml:\d+: arms.grpo: model tiny, arm grpo, seed 0 gives an invalid config: .*kappa"),
    ({"arms": {"grpo": {"seed": 3}, "verl": {}}}, r"study.yaml:\d+: arms.grpo.seed: seed is set by the study"),
    ({"seeds": 3}, r"study.yaml:\d+: seeds: expected a list of integer seeds"),
    ({"seeds": [0, "one"]}, r"study.yaml:\d+: seeds: expected a non-empty list of integers >= 0"),
    ({"seeds": [1, 1]}, r"study.yaml:\d+: seeds: seeds repeat"),
    ({"evaluation": {"benchmarks": ["gsm8kk"], "preset": "paper"}},
     r"study.yaml:\d+: evaluation.benchmarks: unknown benchmark 'gsm8kk' \(did you mean 'gsm8k'\?\)"),
    ({"evaluation": {"benchmarks": ["gsm8k"], "preset": "papr"}},
     r"study.yaml:\d+: evaluation.preset: unknown preset 'papr' \(did you mean 'paper'\?\)"),
    ({"evaluation": {"benchmarks": ["gsm8k"], "preset": "greedy", "n": 4, "k": [8]}},
     r"study.yaml:\d+: evaluation: eval preset 'greedy': every k must be in 1..n=4"),
    ({"primary": {"benchmark": "math500", "metric": "accuracy"}},
     r"study.yaml:\d+: primary.benchmark: 'math500' is not among evaluation.benchmarks"),
    ({"primary": {"benchmark": "average", "metric": "bleu"}}, r"study.yaml:\d+: primary.metric: unknown metric"),
    ({"primary": {"benchmark": "average", "compare": ["verl", "grpoo"]}},
     r"study.yaml:\d+: primary.compare: unknown arm 'grpoo' \(did you mean 'grpo'\?\)"),
    ({"models": {"tiny": {"model": "tiny:test", "template": "qwen-boxd"}}},
     r"study.yaml:\d+: models.tiny.template: unknown prompt template 'qwen-boxd' \(did you mean 'qwen-boxed'\?\)"),
    ({"models": {"tiny": {"model": "tiny:test", "overrides": {"algo.lrr": 1.0}}}},
     r"study.yaml:\d+: models.tiny.overrides.algo.lrr: not a TrainConfig key \(did you mean 'lr'\?\)"),
    ({"budget": {"steps": 0}}, r"study.yaml:\d+: budget.steps: expected an integer >= 1"),
])
def test_bad_study_files_are_refused_before_ray_starts(tmp_path, capsys, over, match):
    import re

    import ray

    path = _write(tmp_path, **over)
    with pytest.raises(ConfigError, match=match):
        load_study(path)
    assert main(["study", str(path)]) == 2  # the CLI: one line, exit code 2, nothing started
    err = capsys.readouterr().err
    assert err.startswith("error: ") and re.search(match, err), err
    assert not ray.is_initialized() and not (tmp_path / "store").exists()


def test_best_checkpoint_needs_every_checkpoint_and_validation(tmp_path):
    with pytest.raises(ConfigError, match=r"study.yaml:\d+: evaluation.checkpoint: best-by-validation picks .*"
                                          r"keep_checkpoints: 0"):
        load_study(_write(tmp_path, evaluation={**_doc(tmp_path)["evaluation"], "checkpoint": "best"}))


# ------------------------------------------------------------------------------------ running (Ray)
def _digest(run: Path) -> dict[str, str]:
    """Content hash of every file of a training run (what a rerun must leave untouched); the evaluation's
    files, which land beside the checkpoint later, are not the run's."""
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file() and "eval" not in p.relative_to(run).parts}


def _run_until(cmd: list[str], env: dict, log: Path, done, timeout: float = 300.0) -> None:
    """Start the study CLI; SIGKILL it (and the local Ray it started) as soon as ``done()`` holds."""
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None and not done():
            time.sleep(0.3)
        assert proc.poll() is None, f"the study ended before the kill point:\n{log.read_text()[-3000:]}"
        assert done(), f"kill point not reached in time:\n{log.read_text()[-3000:]}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _finished_runs(exp: Path, steps: int) -> list[Path]:
    out = []
    for m in exp.glob("*/run/metrics.jsonl"):
        rows = [json.loads(line) for line in m.read_text().splitlines() if line.strip()]
        if rows and rows[-1]["step"] == steps and any((m.parent / "checkpoints").glob("step_*/trainer_state.pt")):
            out.append(m.parent)
    return out


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_killed_study_resumes_without_redoing_finished_work(tmp_path):
    """2 arms x 2 seeds + the base model, through the CLI: SIGKILL once the first trial has finished, then
    again once the first evaluation has written its samples; --resume completes it with the finished trial
    and the finished benchmark untouched, and the per-sample table has every row."""
    import pandas as pd

    study = _write(tmp_path)
    study_dir = tmp_path / "store" / "tiny"
    exp = study_dir / "train"
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "0", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "verl_bench.study", str(study)]

    # 1. killed during training, once one trial is complete
    _run_until(cmd, env, tmp_path / "first.log", lambda: bool(_finished_runs(exp, 2)))
    first = _finished_runs(exp, 2)
    trained = {run: _digest(run) for run in first}

    # 2. resumed, killed during evaluation once a benchmark's samples are on disk
    def samples():
        return sorted(study_dir.rglob("samples_verl_arithmetic_test_l0_*.jsonl"))

    _run_until([*cmd, "--resume"], env, tmp_path / "second.log", lambda: bool(samples()) and all(
        len(f.read_text().splitlines()) == PROBLEMS for f in samples()))
    second_log = (tmp_path / "second.log").read_text()
    assert "stage 2/3" in second_log
    evaluated = {f: f.read_bytes() for f in samples()}
    assert (study_dir / "trials.json").is_file()

    # 3. resumed to the end
    out = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=600, check=False)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert "stage 1/3: all 4 trials already trained, kept" in log
    for run, digest in trained.items():  # the trial finished before the first kill was not trained again
        assert _digest(run) == digest
    for f, content in evaluated.items():  # nor was the benchmark finished before the second kill evaluated again
        assert f.read_bytes() == content
    assert "[study] report:" in log

    # the study folder
    entries = json.loads((study_dir / "trials.json").read_text())
    assert sorted((e["arm"], e["seed"]) for e in entries) == [("base", 0), ("grpo", 0), ("grpo", 1), ("verl", 0),
                                                               ("verl", 1)]
    assert all(e["error"] is None for e in entries)
    assert all(e["step"] == 2 and e["trial"] and e["checkpoint"].endswith("step_000002")
               for e in entries if e["arm"] != "base")
    resolved = json.loads((study_dir / "study_resolved.json").read_text())["trials"]
    assert resolved["tiny/grpo/1"]["shaping"]["enabled"] is False and resolved["tiny/grpo/1"]["seed"] == 1
    assert resolved["tiny/verl/0"]["shaping"]["enabled"] is True
    assert len(list(exp.glob("*/run/checkpoints/step_000002"))) == 4

    frame = pd.read_parquet(study_dir / "samples.parquet")
    assert {"model", "arm", "seed", "trial", "step", "benchmark", "problem", "sample", "correct", "response",
            "answer", "gold", "config/shaping.enabled"} <= set(frame.columns)
    assert len(frame) == (2 * 2 + 1) * PROBLEMS * SAMPLES
    counts = frame.groupby(["arm", "seed"]).size().to_dict()
    assert counts == {(a, s): PROBLEMS * SAMPLES for a, s in [("base", 0), ("grpo", 0), ("grpo", 1), ("verl", 0),
                                                              ("verl", 1)]}
    assert set(frame.correct.unique()) <= {0.0, 1.0}
    # the same problems in every arm: the pairing key
    assert len({tuple(sorted(g.problem.unique())) for _, g in frame.groupby(["arm", "seed"])}) == 1


def _train_cell_in(args) -> str:
    """One trial of a restored grid training the cell "tiny/verl/0": run/ appears a moment after it starts
    (as train() makes it), then the run takes a while; returns the folder it trained in."""
    from verl_bench.sweep.run import train_cell

    experiment, trial, barrier = args
    homes = []

    def train_in(home: Path) -> None:
        homes.append(home)
        time.sleep(0.3)
        (home / "run").mkdir(exist_ok=True)
        time.sleep(0.7)

    barrier.wait()
    train_cell(experiment, "tiny/verl/0", {"model": "tiny", "arm": "verl", "seed": 0}, 2, experiment / trial, train_in)
    return homes[0].name


def test_two_trials_of_one_cell_train_it_in_one_folder(tmp_path):
    """Tune's restore runs a cell's old trial beside its regenerated one: started together, the second waits
    for the first and then continues in the first's folder; no second run of the cell appears."""
    import multiprocessing

    exp = tmp_path / "train"
    params = {"model": "tiny", "arm": "verl", "seed": 0}
    for trial in ("old_00000", "new_00004"):
        (exp / trial).mkdir(parents=True)
        (exp / trial / "params.json").write_text(json.dumps(params))
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Manager().Barrier(2)
    with ctx.Pool(2) as pool:
        homes = pool.map(_train_cell_in, [(exp, "old_00000", barrier), (exp, "new_00004", barrier)])
    assert len(set(homes)) == 1, homes
    assert sorted(p.parent.name for p in exp.glob("*/run")) == [homes[0]]


def test_training_stage_restores_after_ray_kills_a_trial_for_memory(tmp_path, monkeypatch):
    """Tune 2.60 fails the whole experiment when Ray's memory monitor kills a trial's process: the stage
    restores it (finished trials are kept); any other error is raised."""
    import verl_bench.sweep.run as sweep_run
    from verl_bench.study.run import train_stage

    spec = load_study(_write(tmp_path))
    calls, lines = [], []

    def fake_run_cells(sweep, cells, grid, path, *, resume, address):
        calls.append(resume)
        if len(calls) == 1:
            raise RuntimeError("Caught unexpected exception: 1 worker(s) were killed due to the node running low "
                               "on memory.")
        return []

    monkeypatch.setattr(sweep_run, "run_cells", fake_run_cells)
    out = train_stage(spec, tmp_path / "s", resume=False, address=None, log=lines.append)
    assert calls == [False, True] and any("lack of memory; restoring" in line for line in lines)
    assert set(out) == {t.key for t in spec.trials} and all(v["error"] for v in out.values())

    def broken(*a, **k):
        raise RuntimeError("something else")

    monkeypatch.setattr(sweep_run, "run_cells", broken)
    with pytest.raises(RuntimeError, match="something else"):
        train_stage(spec, tmp_path / "s", resume=False, address=None, log=lines.append)
