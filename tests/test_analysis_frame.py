"""The tidy per-sample frame: lm-eval's per-sample JSONL of a study folder -> one row per graded sample,
labelled from trials.json; cached as samples.parquet; training dynamics from metrics.jsonl."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd
import pytest

from verl_bench.analysis.frame import COLUMNS, dynamics_frame, read_samples, samples_frame

BENCH = "arithmetic_test_l0"


def _eval_files(folder: Path, problems: list[tuple[str, str, list[str], list[float] | None]]) -> Path:
    """lm-eval's files as ``verl_bench.evaluate`` writes them: a results JSON naming the problem count and a
    samples JSONL (one line per problem, its n responses, and their grades unless None)."""
    folder.mkdir(parents=True, exist_ok=True)
    name, stamp = f"verl_{BENCH}", "2026-01-01T00-00-00.000000"
    (folder / f"results_{name}_{stamp}.json").write_text(json.dumps(
        {"n-samples": {name: {"effective": len(problems), "original": len(problems)}}}))
    with open(folder / f"samples_{name}_{stamp}.jsonl", "w") as f:
        for i, (pid, gold, responses, correct) in enumerate(problems):
            rec = {"doc_id": i, "doc": {"id": pid, "question": "q", "gold": gold, "prompt": "p"},
                   "resps": [[[r] for r in responses]], "filtered_resps": [responses]}
            if correct is not None:
                rec["grades"] = [{"correct": c, "answer": r[len("\\boxed{"):-1] if r.startswith("\\boxed{") else None}
                                for r, c in zip(responses, correct)]
            f.write(json.dumps(rec) + "\n")
    return folder / f"samples_{name}_{stamp}.jsonl"


def _study(tmp_path: Path) -> Path:
    """A study folder: the base model and two trials, 2 problems x 2 samples each."""
    study = tmp_path / "study"
    entries = [
        {"model": "m", "arm": "base", "seed": 0, "trial": "", "step": 0, "run_dir": "",
         "eval_dir": "base/m/chat/P", "error": None},
        {"model": "m", "arm": "grpo", "seed": 0, "trial": "t0", "step": 4, "run_dir": "train/t0/run",
         "eval_dir": "train/t0/run/checkpoints/step_000004/eval/chat/P", "error": None},
        {"model": "m", "arm": "verl", "seed": 1, "trial": "t1", "step": 4, "run_dir": "train/t1/run",
         "eval_dir": "train/t1/run/checkpoints/step_000004/eval/chat/P", "error": None},
        {"model": "m", "arm": "verl", "seed": 2, "trial": "t2", "step": None, "run_dir": "train/t2/run",
         "eval_dir": "", "error": "RuntimeError: boom"},  # a failed trial contributes no rows
    ]
    _eval_files(study / entries[0]["eval_dir"], [("a", "2", ["\\boxed{2}", "\\boxed{3}"], [1.0, 0.0]),
                                                  ("b", "5", ["\\boxed{1}", "\\boxed{1}"], [0.0, 0.0])])
    _eval_files(study / entries[1]["eval_dir"], [("a", "2", ["\\boxed{2}", "\\boxed{2}"], [1.0, 1.0]),
                                                  ("b", "5", ["\\boxed{5}", "\\boxed{1}"], [1.0, 0.0])])
    # written before per-sample grades were logged: graded again by the reward's checker
    _eval_files(study / entries[2]["eval_dir"], [("a", "2", ["\\boxed{2}", "\\boxed{7}"], None),
                                                  ("b", "5", ["\\boxed{5}", "The answer is 5"], None)])
    (study / "trials.json").write_text(json.dumps(entries))
    (study / "study_resolved.json").write_text(json.dumps({
        "trials": {"m/grpo/0": {"seed": 0, "shaping": {"enabled": False, "kappa": 2.0}},
                   "m/verl/1": {"seed": 1, "shaping": {"enabled": True, "kappa": 2.0}}},
        "evaluation": {"benchmarks": [BENCH], "protocol": "P"}}))
    for t, rows in (("t0", [{"step": 0, "val/accuracy": 0.5}, {"step": 1, "reward/mean": 0.25, "loss": 0.1}]),
                    ("t1", [{"step": 1, "reward/mean": 0.75, "loss": -0.2, "hostname": "x"}])):
        run = study / "train" / t / "run"
        run.mkdir(parents=True, exist_ok=True)
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return study


def test_samples_frame_rows_labels_and_config(tmp_path):
    frame = samples_frame(_study(tmp_path))
    assert list(frame.columns[:len(COLUMNS)]) == COLUMNS
    assert len(frame) == 3 * 2 * 2  # 3 evaluated models x 2 problems x 2 samples
    by = frame.set_index(["arm", "seed", "problem", "sample"])
    assert by.loc[("base", 0, "a", 1), "correct"] == 0.0 and by.loc[("base", 0, "a", 0), "response"] == "\\boxed{2}"
    assert by.loc[("grpo", 0, "b", 0), "correct"] == 1.0 and by.loc[("grpo", 0, "b", 0), "trial"] == "t0"
    assert by.loc[("grpo", 0, "b", 0), "step"] == 4 and by.loc[("grpo", 0, "b", 0), "gold"] == "5"
    # re-graded (no logged grades): 2 right, 7 wrong, "The answer is 5" right
    assert by.loc[("verl", 1), "correct"].tolist() == [1.0, 0.0, 1.0, 1.0]
    assert frame.groupby("arm").correct.mean().to_dict() == {"base": 0.25, "grpo": 0.75, "verl": 0.75}
    assert by.loc[("verl", 1, "a", 0), "config/shaping.enabled"] == True
    assert by.loc[("grpo", 0, "a", 0), "config/shaping.enabled"] == False
    assert pd.isna(by.loc[("base", 0, "a", 0), "config/shaping.kappa"])
    assert frame.dtypes["seed"] == "int64" and frame.dtypes["correct"] == "float64"


def test_samples_frame_is_cached_and_rebuilt_when_a_samples_file_is_newer(tmp_path):
    study = _study(tmp_path)
    first = samples_frame(study)
    cache = study / "samples.parquet"
    assert cache.is_file()
    mtime = cache.stat().st_mtime_ns
    pd.testing.assert_frame_equal(samples_frame(study), first)  # read from the cache
    assert cache.stat().st_mtime_ns == mtime
    # a re-evaluation replaces a samples file: the cache is stale and rebuilt
    f = _eval_files(study / "base/m/chat/P", [("a", "2", ["\\boxed{2}", "\\boxed{2}"], [1.0, 1.0]),
                                              ("b", "5", ["\\boxed{5}", "\\boxed{5}"], [1.0, 1.0])])
    later = time.time() + 5
    os.utime(f, (later, later))
    again = samples_frame(study)
    assert again[again.arm == "base"].correct.tolist() == [1.0] * 4


def test_read_samples_of_one_file(tmp_path):
    f = _eval_files(tmp_path / "e", [("p1", "3", ["\\boxed{3}", "x", "\\boxed{4}"], [1.0, 0.0, 0.0])])
    df = read_samples(f, BENCH)
    got = df.to_dict("list")
    got["answer"] = [a if isinstance(a, str) else None for a in got["answer"]]  # pandas shows None as nan
    assert got == {"benchmark": [BENCH] * 3, "problem": ["p1"] * 3, "sample": [0, 1, 2],
                                  "correct": [1.0, 0.0, 0.0], "response": ["\\boxed{3}", "x", "\\boxed{4}"],
                                  "answer": ["3", None, "4"], "gold": ["3"] * 3}


def test_dynamics_frame_has_every_numeric_metric(tmp_path):
    dyn = dynamics_frame(_study(tmp_path))
    assert list(dyn.columns) == ["model", "arm", "seed", "trial", "step", "metric", "value"]
    rows = {(r.trial, r.step, r.metric): r.value for r in dyn.itertuples()}
    assert rows == {("t0", 0, "val/accuracy"): 0.5, ("t0", 1, "reward/mean"): 0.25, ("t0", 1, "loss"): 0.1,
                    ("t1", 1, "reward/mean"): 0.75, ("t1", 1, "loss"): -0.2}
    assert set(dyn.arm) == {"grpo", "verl"}


@pytest.mark.parametrize("missing", ["trials.json", "study_resolved.json"])
def test_a_folder_that_is_no_study_is_refused(tmp_path, missing):
    study = _study(tmp_path)
    (study / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing):
        samples_frame(study)


def test_per_sample_grades_through_real_lm_eval(tmp_path, monkeypatch):
    """The whole path: lm-eval runs the held-out arithmetic task with a scripted model (sample j of problem i
    is right when j < i % 4), ``evaluate`` writes its files, the frame reads one row per sample with the
    grade the reward's checker gave it."""
    from tests.test_eval_lmeval import ScriptedLM
    from verl_bench.evaluate import run as run_lib
    from verl_bench.evaluate.presets import EvalPreset
    from verl_bench.evaluate.run import EvalJob, evaluate_model, samples_file
    from verl_bench.evaluate.tasks import build_docs

    preset = EvalPreset("t", temperature=0.6, top_p=0.95, n=4, max_tokens=16, ks=(1, 2, 4), limit=6)
    lm = ScriptedLM({BENCH: build_docs(BENCH, "qwen-boxed", limit=6)}, lambda i, j: j < i % 4)
    monkeypatch.setattr(run_lib, "make_lm", lambda *a, **k: lm)
    monkeypatch.setattr(run_lib, "resolve_model", lambda spec: Path(spec), raising=False)
    from verl_bench import models

    monkeypatch.setattr(models, "resolve_model", lambda spec: Path(spec))
    monkeypatch.setattr(models, "load_tokenizer", lambda folder: None)
    job = EvalJob(model="scripted", out_dir=tmp_path / "out", template="qwen-boxed")
    rows = evaluate_model(job, [BENCH], preset, log=lambda *_: None)
    assert "grades" not in {r["metric"] for r in rows}  # per-sample lists stay out of the tidy aggregates
    avg = next(r["value"] for r in rows if r["metric"] == "avg@4")
    df = read_samples(samples_file(job.out_dir, BENCH), BENCH)
    assert len(df) == 6 * 4
    want = [float(j < i % 4) for i in range(6) for j in range(4)]
    by_doc = {p: i for i, p in enumerate(d["id"] for d in build_docs(BENCH, "qwen-boxed", limit=6))}
    got = [float(c) for _, c in sorted(((by_doc[p] * 4 + s), c) for p, s, c in zip(df.problem, df["sample"], df.correct))]
    assert got == want
    assert df.correct.mean() == pytest.approx(avg)  # the frame and lm-eval's aggregate agree
    assert set(df.answer.dropna()) <= set(df.gold) | {"-12345"}
