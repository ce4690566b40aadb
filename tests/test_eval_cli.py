"""``verl-bench eval``: bad input fails before any model loads; a sweep's checkpoints evaluated as Ray tasks."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from verl_bench import cli
from verl_bench.config import load_config
from verl_bench.evaluate import run as run_lib
from verl_bench.train import train


def _no_model(monkeypatch):
    monkeypatch.setattr(run_lib, "make_lm", lambda *a, **k: pytest.fail("a model was loaded"))


@pytest.mark.parametrize("argv, message", [
    (["tiny:test", "--benchmarks", "gsm8k,mmlu"], "unknown benchmark(s) mmlu"),
    (["tiny:test", "--preset", "fast"], "unknown eval preset 'fast'"),
    (["tiny:test", "--preset", "greedy", "--k", "1,4"], "every k must be in 1..n=1"),
    (["tiny:test", "--temperature", "0", "--n", "4"], "identical samples"),
    ([], "give MODEL_OR_CHECKPOINT... or --experiment PATH"),
    (["./no/such/model"], "does not exist"),
])
def test_bad_input_is_one_clear_error_before_any_model_loads(argv, message, monkeypatch, capsys, tmp_path):
    _no_model(monkeypatch)
    assert cli.main(["eval", *argv, "--output", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_a_missing_benchmark_file_is_named_before_any_model_loads(monkeypatch, capsys, tmp_path):
    _no_model(monkeypatch)
    root = tmp_path / "data"
    (root / "gsm8k").mkdir(parents=True)  # the set's folder exists, its file does not
    rc = cli.main(["eval", "tiny:test", "--benchmarks", "gsm8k", "--data-root", str(root),
                   "--output", str(tmp_path / "out")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "gsm8k" in err and str(root) in err


@pytest.fixture
def own_ray():
    """The eval CLI starts a local Ray when there are several jobs: shut it down after the test."""
    yield
    import ray

    ray.shutdown()


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """Two real training runs of a tiny model in a sweep's layout (<experiment>/<trial>/run), with the
    trial's params.json that Tune writes."""
    exp = tmp_path_factory.mktemp("sweep")
    for trial, kappa in (("trial_0", 2.0), ("trial_1", 4.0)):
        cfg = load_config(None, [], base={
            "model": "tiny:test", "run_dir": str(exp / trial / "run"), "steps": 2, "checkpoint_every": 1,
            "keep_checkpoints": 0, "threads": 2, "eval_every": 1,
            "data": {"train": "arithmetic_l1", "eval": "arithmetic_test_l1", "eval_size": 2,
                     "template": "qwen-boxed"},
            "rollout": {"prompts_per_step": 2, "n": 2, "max_new_tokens": 6},
            "rank": {"stride": 2, "window": 64}, "shaping": {"kappa": kappa}})
        train(cfg)
        (exp / trial / "params.json").write_text(json.dumps({"shaping": {"kappa": kappa}}))
    return exp


def test_experiment_checkpoints_run_as_ray_tasks_into_one_table_and_rerun_is_a_no_op(experiment, capsys,
                                                                                     monkeypatch, own_ray):
    argv = ["eval", "--experiment", str(experiment), "--which", "all", "--benchmarks", "amc23,aime24",
            "--preset", "greedy", "--limit", "2", "--max-tokens", "4", "--cpus-per-job", "1"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "4 job(s) as Ray tasks" in out
    table = pd.read_parquet(experiment / "eval_table.parquet")
    per = table[table.metric == "pass@1"]
    assert sorted(set(zip(per.trial, per.step))) == [("trial_0", 1), ("trial_0", 2), ("trial_1", 1), ("trial_1", 2)]
    assert set(per.benchmark) == {"amc23", "aime24", "verl_math"}
    assert set(per["config/shaping.kappa"]) == {2.0, 4.0}
    assert set(per.template) == {"qwen-boxed"}  # the template the runs were trained with
    for ckpt in set(per.checkpoint):  # lm-eval's files live beside each checkpoint
        folder = next(experiment.glob(f"**/{ckpt.split('/')[-1]}/eval/qwen-boxed/greedy_t4_lim2"))
        assert len(list(folder.glob("results_verl_*.json"))) == 2
        assert len(list(folder.glob("samples_verl_*.jsonl"))) == 2

    # everything is on disk: the same command evaluates nothing again and keeps the table's rows
    _no_model(monkeypatch)
    assert cli.main([*argv, "--no-ray"]) == 0
    again = pd.read_parquet(experiment / "eval_table.parquet")
    assert len(again) == len(table)
    pd.testing.assert_frame_equal(again.sort_values(list(again.columns[:8])).reset_index(drop=True),
                                  table.sort_values(list(table.columns[:8])).reset_index(drop=True))


def test_sigkilled_eval_resumes_without_redoing_finished_benchmarks(tmp_path):
    """The eval CLI in a subprocess is SIGKILLed once its first benchmark is complete; the same command
    then finishes the others and leaves the finished one's files untouched."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "verl_bench.cli", "eval", "tiny:test", "--benchmarks", "amc23,aime24,aime25",
           "--preset", "greedy", "--limit", "8", "--max-tokens", "16", "--template", "qwen-boxed",
           "--output", str(out), "--batch-size", "2"]
    folder = out / "tiny_test" / "qwen-boxed" / "greedy_t16_lim8"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        deadline = time.time() + 300
        while run_lib.results_file(folder, "amc23") is None:
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.time() < deadline, "the first benchmark never finished"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    first = run_lib.results_file(folder, "amc23")
    before = {p.name: p.read_bytes() for p in folder.iterdir() if "amc23" in p.name}
    assert run_lib.results_file(folder, "aime25") is None  # killed before the last benchmark was done

    done = subprocess.run(cmd, check=False, capture_output=True, text=True, env=os.environ.copy())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "1 benchmark(s) already evaluated" in done.stdout
    assert {p.name: p.read_bytes() for p in folder.iterdir() if "amc23" in p.name} == before
    assert run_lib.results_file(folder, "amc23") == first
    for b in ("aime24", "aime25"):
        assert run_lib.results_file(folder, b) is not None
        assert len(list(folder.glob(f"samples_verl_{b}_*.jsonl"))) == 1
