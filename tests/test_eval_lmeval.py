"""The benchmarks through real lm-eval, offline: scores, files, the group average, idempotence, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from lm_eval import simple_evaluate
from lm_eval.api.model import LM

from verl_bench import reward as reward_lib
from verl_bench.evaluate import run as run_lib
from verl_bench.evaluate.metrics import problem_metrics
from verl_bench.evaluate.presets import EvalPreset
from verl_bench.evaluate.run import (
    EvalJob,
    empty_task_manager,
    evaluate_model,
    find_checkpoints,
    group_average,
    read_results,
)
from verl_bench.evaluate.tasks import BENCHMARKS, build_docs, build_group, task_name
from verl_bench.models import resolve_model

TINY = "tiny:test"


class ScriptedLM(LM):
    """An lm-eval model whose answers are known in advance: for the i-th problem of a benchmark (file order)
    its j-th sample is right when ``script(i, j)`` is true. The prompt -> gold map comes from the same docs
    lm-eval is given, so the whole lm-eval path (requests, repeats, filters, process_results, aggregation,
    groups) runs for real and the expected scores can be computed by hand."""

    def __init__(self, docs_by_bench: dict[str, list[dict]], script):
        super().__init__()
        self.lookup = {d["prompt"]: (i, d["gold"]) for docs in docs_by_bench.values() for i, d in enumerate(docs)}
        self.script = script
        self.seen: dict[str, int] = {}

    def generate_until(self, requests, disable_tqdm: bool = False):
        out = []
        for req in requests:
            prompt = req.args[0]
            i, gold = self.lookup[prompt]
            j = self.seen.get(prompt, 0)
            self.seen[prompt] = j + 1
            out.append(f"Therefore \\boxed{{{gold}}}." if self.script(i, j) else "Therefore \\boxed{-12345}.")
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError


BENCHES = list(BENCHMARKS)  # every set, a few problems each


def test_scores_through_lm_eval_match_the_script_and_the_group_is_the_unweighted_mean():
    preset = EvalPreset("t", temperature=0.6, top_p=0.95, n=4, max_tokens=32, ks=(1, 2, 4), limit=5)
    docs = {b: build_docs(b, "qwen-boxed", limit=5) for b in BENCHES}
    # problem i: samples j < i are right (problem 0: none right, problem 4: all four right)
    lm = ScriptedLM(docs, lambda i, j: j < i)
    res = simple_evaluate(model=lm, tasks=[build_group(BENCHES, preset, "qwen-boxed")], bootstrap_iters=0,
                          log_samples=True, task_manager=empty_task_manager())
    for b in BENCHES:
        r = res["results"][task_name(b)]
        want = pd.DataFrame([problem_metrics(["x"] * 4, [j < i for j in range(4)], (1, 2, 4))
                             for i in range(5)]).mean()
        assert r["avg@4,all"] == pytest.approx(want["avg@4"]) == pytest.approx((0 + 1 + 2 + 3 + 4) / 20)
        assert r["pass@2,all"] == pytest.approx(want["pass@2"])
        assert r["pass@4,all"] == pytest.approx(4 / 5)
        assert r["sample_len"] == 5
        assert len(res["samples"][task_name(b)]) == 5
    # whole sets of different sizes: the group is the plain mean of the task means, not the pooled mean
    sets = ["aime24", "amc23", "gaokao2024_I"]  # 30, 40 and 14 problems
    one = EvalPreset("t1", temperature=0.6, top_p=0.95, n=1, max_tokens=32)
    lm = ScriptedLM({b: build_docs(b, "qwen-boxed") for b in sets}, lambda i, j: i % 3 == 0)
    res = simple_evaluate(model=lm, tasks=[build_group(sets, one, "qwen-boxed")], bootstrap_iters=0,
                          task_manager=empty_task_manager())
    per_task = [res["results"][task_name(b)]["pass@1,all"] for b in sets]
    assert per_task == [pytest.approx(10 / 30), pytest.approx(14 / 40), pytest.approx(5 / 14)]
    assert res["groups"]["verl_math"]["pass@1,all"] == pytest.approx(sum(per_task) / 3)
    assert abs(sum(per_task) / 3 - 29 / 84) > 1e-3  # (the pooled mean would differ)


def test_group_average_weights_benchmarks_equally_whatever_their_size():
    rows = [{"model": "m", "benchmark": "gsm8k", "metric": "pass@1", "value": 0.9, "stderr": 0.03, "problems": 1319},
            {"model": "m", "benchmark": "aime24", "metric": "pass@1", "value": 0.1, "stderr": 0.04, "problems": 30}]
    (avg,) = group_average(rows, ["gsm8k", "aime24"])
    assert avg["benchmark"] == "verl_math" and avg["value"] == pytest.approx(0.5)
    assert avg["stderr"] == pytest.approx(0.025)  # sqrt(0.03^2 + 0.04^2) / 2
    assert group_average(rows, ["gsm8k", "aime24", "amc23"]) == []  # a partial average is not reported


@pytest.fixture(scope="module")
def tiny_folder():
    return resolve_model(TINY)


def test_hf_backend_files_scores_and_idempotent_rerun(tmp_path, tiny_folder, monkeypatch):
    preset = EvalPreset("t", temperature=1.0, top_p=1.0, n=2, max_tokens=6, ks=(1, 2), limit=2)
    job = EvalJob(model=str(tiny_folder), out_dir=tmp_path / "out", template="chat")
    rows = evaluate_model(job, ["gsm8k", "aime24"], preset, backend="hf", batch_size=4, log=lambda *_: None)
    assert {(r["benchmark"], r["metric"]) for r in rows} == {
        (b, m) for b in ("gsm8k", "aime24") for m in ("pass@1", "pass@2", "maj@2", "avg@2")}
    for b in ("gsm8k", "aime24"):
        res_file = run_lib.results_file(job.out_dir, b)
        assert res_file is not None
        res = json.loads(res_file.read_text())
        assert res["configs"][task_name(b)]["metadata"]["protocol"] == preset.key()
        samples = [json.loads(x) for x in res_file.with_name(
            res_file.name.replace("results_", "samples_").replace(".json", ".jsonl")).read_text().splitlines()]
        assert len(samples) == 2 and all(len(s["resps"][0]) == 2 for s in samples)
        # lm-eval's aggregate equals a recomputation from its own samples file with the reward checker
        per_doc = []
        for s in samples:
            grades = reward_lib.grade_batch(s["resps"][0], [s["doc"]["gold"]] * 2)
            per_doc.append(problem_metrics([g.answer for g in grades], [g.correct for g in grades], (1, 2)))
        assert res["results"][task_name(b)]["pass@2,all"] == pytest.approx(pd.DataFrame(per_doc)["pass@2"].mean())

    # everything done: a rerun loads no model and returns the same rows
    monkeypatch.setattr(run_lib, "make_lm", lambda *a, **k: pytest.fail("a finished benchmark was re-run"))
    again = evaluate_model(job, ["gsm8k", "aime24"], preset, backend="hf", log=lambda *_: None)
    assert again == rows


def test_a_benchmark_killed_mid_write_is_redone_and_the_finished_one_is_kept(tmp_path, tiny_folder, monkeypatch):
    preset = EvalPreset("t", temperature=0.0, max_tokens=4, limit=2)
    job = EvalJob(model=str(tiny_folder), out_dir=tmp_path / "out", template="qwen-boxed")
    evaluate_model(job, ["amc23", "aime25"], preset, backend="hf", log=lambda *_: None)
    kept = run_lib.results_file(job.out_dir, "amc23")
    redo = run_lib.results_file(job.out_dir, "aime25")
    kept_bytes = kept.read_bytes()
    # a kill between lm-eval's results file and the end of its samples file: the samples are cut short
    samples = redo.with_name(redo.name.replace("results_", "samples_").replace(".json", ".jsonl"))
    samples.write_text(samples.read_text().splitlines()[0] + "\n")
    assert run_lib.results_file(job.out_dir, "aime25") is None
    ran = []
    real = run_lib._run_one
    monkeypatch.setattr(run_lib, "_run_one", lambda lm, b, *a: ran.append(b) or real(lm, b, *a))
    evaluate_model(job, ["amc23", "aime25"], preset, backend="hf", log=lambda *_: None)
    assert ran == ["aime25"]
    assert kept.read_bytes() == kept_bytes
    assert run_lib.results_file(job.out_dir, "aime25") is not None
    assert len(list(job.out_dir.glob("samples_verl_aime25_*.jsonl"))) == 1  # the partial one is gone


def test_read_results_gives_tidy_rows_with_stderr(tmp_path, tiny_folder):
    preset = EvalPreset("t", temperature=0.0, max_tokens=4, limit=3)
    job = EvalJob(model=str(tiny_folder), out_dir=tmp_path / "out", template="qwen-boxed")
    evaluate_model(job, ["gsm8k"], preset, backend="hf", log=lambda *_: None)
    rows = read_results(run_lib.results_file(job.out_dir, "gsm8k"))
    assert [r["metric"] for r in rows] == ["pass@1", "avg@1"]
    assert all(r["problems"] == 3 and r["stderr"] is not None and r["protocol"] == preset.key() for r in rows)


def _write_run(run: Path, steps_with_val: dict[int, float]):
    """A training run's layout as verl_bench.train writes it, with copies of a real HF model as checkpoints."""
    import shutil

    for step in steps_with_val:
        shutil.copytree(resolve_model(TINY), run / "checkpoints" / f"step_{step:06d}")
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "val/accuracy": a}) + "\n" for s, a in steps_with_val.items()))
    (run / "config.yaml").write_text("data:\n  template: abel\n")


def test_find_checkpoints_all_last_best(tmp_path):
    exp = tmp_path / "sweep"
    _write_run(exp / "trial_a" / "run", {2: 0.5, 4: 0.25})
    _write_run(exp / "trial_b" / "run", {2: 0.1, 4: 0.3})
    (exp / "trial_a" / "params.json").write_text(json.dumps({"shaping": {"kappa": 4.0}}))
    last = find_checkpoints(exp, "last")
    assert [(c["trial"], c["step"]) for c in last] == [("trial_a", 4), ("trial_b", 4)]
    assert last[0]["config/shaping.kappa"] == 4.0
    best = find_checkpoints(exp, "best")
    assert [(c["trial"], c["step"]) for c in best] == [("trial_a", 2), ("trial_b", 4)]
    assert len(find_checkpoints(exp, "all")) == 4
    assert run_lib.pick_template(Path(last[0]["checkpoint"])) == "abel"  # the template it was trained with
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        find_checkpoints(tmp_path / "sweep" / "trial_a", "last")
