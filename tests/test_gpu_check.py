"""benchmarks/gpu_check.py: every part runs (tiny, on the CPU) and passes; the runner isolates, times and skips."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu_check import main, run_parts
from benchmarks.gpu_parts import PARTS, Skipped, fsdp_available

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_cpu_smoke_runs_every_part_and_passes(tmp_path):
    out, results = tmp_path / "out", tmp_path / "results.jsonl"
    out.mkdir()
    env = {**os.environ, "OUT": str(out), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--results", str(results)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    log = proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = _rows(out / "gpu_check.jsonl")
    assert rows == _rows(results), "the same rows go to $OUT and to --results"
    by_part = {r["part"]: r for r in rows}
    assert list(by_part) == [*PARTS, "summary"], log
    for name in PARTS:
        row = by_part[name]
        assert row["mode"] == "cpu-smoke" and row["seconds"] >= 0
        if name == "fsdp" and fsdp_available() is not None:  # only while the FSDP loop has not landed
            assert row["skipped"] == fsdp_available() and row["pass"] is None
            continue
        assert row["pass"] is True and row["skipped"] is None, f"{name}: {row}\n{log}"
    summary = by_part["summary"]
    assert summary["pass"] is True and summary["figures"]["ray_imported"] is False
    assert proc.returncode == 0, log

    # the figures say what the parts claim
    prec = by_part["precision"]["figures"]
    assert prec["mixed_moved"] > 0.99 and prec["pure_bf16_moved"] < 0.05 and prec["optimizer_over_bf16_refused"]
    rank = by_part["rank"]["figures"]
    assert rank["er_rel_err_max"] <= 1e-4 and rank["erv_abs_err_max"] <= 1e-3 and len(rank["checked_responses"]) == 4
    sampler = by_part["sampler"]["figures"]
    assert sampler["batch"] == 8 and sampler["cached_tokens_per_s"] > 0 and sampler["generate_tokens_per_s"] > 0
    ckpt = by_part["checkpoint"]["figures"]
    assert ckpt["steps"] == 2 and ckpt["reload_max_abs_diff"] == 0.0 and ckpt["file_dtypes"] == ["F32"]
    assert 0.5 < ckpt["mean_change_over_lr"] < 4  # AdamW moves each weight by about lr per step, at lr 5e-7
    if fsdp_available() is None:
        fsdp = by_part["fsdp"]["figures"]
        assert fsdp["sharded"] and fsdp["backend"] == "gloo" and fsdp["reload_max_abs_diff"] == 0.0


def test_runner_isolates_failures_and_keeps_to_the_budget():
    calls, rows = [], []

    def ok(ctx):
        calls.append("ok")
        return True, {"x": 1.5}

    def broken(ctx):
        calls.append("broken")
        raise ValueError("boom")

    def not_here(ctx):
        raise Skipped("needs CUDA")

    def too_long(ctx):
        calls.append("too_long")
        return True, {}

    parts = {"broken": broken, "ok": ok, "not_here": not_here, "too_long": too_long}
    none_failed = run_parts(None, parts, budget_s=60, write=rows.append, estimates={"too_long": 61})
    assert not none_failed and calls == ["broken", "ok"]  # a failure does not stop the next part
    by_part = {r["part"]: r for r in rows}
    assert by_part["broken"]["pass"] is False and by_part["broken"]["error"] == "ValueError: boom"
    assert by_part["ok"] == {"part": "ok", "pass": True, "skipped": None, "seconds": by_part["ok"]["seconds"],
                             "figures": {"x": 1.5}, "error": None}
    assert by_part["not_here"]["pass"] is None and by_part["not_here"]["skipped"] == "needs CUDA"
    assert by_part["too_long"]["pass"] is None and "time budget" in by_part["too_long"]["skipped"]
    assert run_parts(None, {"ok": ok, "not_here": not_here}, budget_s=60, write=rows.append, estimates={})


def test_no_ray_in_the_import_chain():
    # the script and everything its parts import (the smoke run's summary row checks the same after running)
    code = ("import sys; import benchmarks.gpu_check, benchmarks.gpu_parts, tests.reference, verl_bench.train, "
            "verl_bench.models, verl_bench.fsdp, verl_bench.checkpoint; print('ray' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    imported = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120, check=False)
    assert imported.stdout.strip() == "False", imported.stderr[-2000:]


def test_bad_arguments_exit_2_before_any_work(capsys, tmp_path):
    results = tmp_path / "rows.jsonl"
    with pytest.raises(SystemExit) as exit_info:
        main(["--cpu-smoke", "--only", "rank,nope", "--results", str(results)])
    assert exit_info.value.code == 2 and "unknown part(s) ['nope']" in capsys.readouterr().err
    assert not results.exists()
