"""The report without a browser: sections, numbers equal to the statistics functions' outputs, the files
(CSV, parquet, PNG, SVG) and what they hold, the one-seed wording, study vs sweep sources, the CLI."""

from __future__ import annotations

import json
import re
from html import unescape
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.report_fakes import BENCHMARKS, DYN_METRICS, fake_dynamics, fake_meta, fake_samples, fake_sweep
from verl_bench.report import tables as T
from verl_bench.report.sources import ReportError, source_kind, sweep_objectives, tune_objective

QUIET = {"progress": lambda s: None}


def _fake_study_dir(root: Path, seeds=(0, 1, 2)) -> Path:
    """A study folder as far as the report looks at it: study.yaml (+ trials.json); its frames come from the
    monkeypatched frame reader."""
    d = root / "study"
    d.mkdir(parents=True)
    meta = fake_meta(models=("tiny-a",), seeds=seeds)
    (d / "study.yaml").write_text(
        "name: fake-study\nmodels:\n  tiny-a: {model: 'tiny:tiny-a', template: qwen-boxed}\n"
        "arms:\n  grpo: {shaping.enabled: false}\n  verl: {}\n"
        f"seeds: {list(seeds)}\nbudget: {{steps: 20}}\n"
        f"evaluation: {{benchmarks: {BENCHMARKS}, preset: quick, n: 4}}\n"
        "primary: {benchmark: average, metric: accuracy, compare: [verl, grpo]}\n")
    (d / "trials.json").write_text(json.dumps([]))
    assert meta["primary"]["compare"] == ["verl", "grpo"]
    return d


def _patch_frames(mp, seeds, metrics=DYN_METRICS):
    from verl_bench.analysis import frame

    samples = fake_samples(models=("tiny-a",), seeds=seeds)
    dynamics = fake_dynamics(models=("tiny-a",), seeds=seeds, metrics=metrics)
    mp.setattr(frame, "samples_frame", lambda study_dir: samples)
    mp.setattr(frame, "dynamics_frame", lambda study_dir: dynamics)
    return samples


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """One report on a 3-seed study folder and a sweep folder, built through build_report."""
    from verl_bench.report import build_report

    root = tmp_path_factory.mktemp("report")
    study, sweep = _fake_study_dir(root), fake_sweep(root, n_trials=6, seed_repeats=2)
    lines: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        samples = _patch_frames(mp, (0, 1, 2))
        page = build_report([study, sweep], root / "out", n_boot=10, progress=lines.append)
    return {"page": page, "html": page.read_text(), "samples": samples, "out": root / "out", "lines": lines,
            "sweep": sweep}


def test_sections_and_progress(full):
    html = full["html"]
    for sid in ("header", "verdict", "table", "forest", "passk", "dynamics", "hpo-0", "appendix", "files"):
        assert f'<section id="{sid}">' in html
    for fact in ("Primary endpoint", "Evaluation protocol", "Versions", "Git commit", "Data", "torch",
                 "transformers", "ray", "lm_eval", "math-verify", "verl-bench"):
        assert fact in html
    assert "biased upward" in html and "fresh" in html  # the sweep's best is not a result
    assert "Seed variance was not measured" not in html
    assert any("reading study" in s for s in full["lines"]) and any("writing the page" in s for s in full["lines"])


def test_page_is_self_contained(full):
    html = full["html"]
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "a reference that leaves the file"
    assert "<script" not in html
    srcs = re.findall(r'<img src="([^"]+)"', html)
    assert srcs and all(s.startswith("data:image/svg+xml;base64,") for s in srcs)
    assert full["page"].stat().st_size < 3e6


def test_files_exist_and_parse(full):
    out = full["out"]
    svgs = sorted((out / "figures").glob("*.svg"))
    assert {p.stem for p in svgs} == {p.stem for p in (out / "figures").glob("*.png")}
    assert len(svgs) >= 7 and len(re.findall(r"<img ", full["html"])) == len(svgs)
    import xml.etree.ElementTree as ET

    from PIL import Image  # matplotlib's own dependency

    for svg in svgs:
        assert ET.parse(svg).getroot().tag.endswith("svg")
        with Image.open(svg.with_suffix(".png")) as im:
            assert im.size[0] > 100 and im.size[1] > 100
    csvs = sorted((out / "tables").glob("*.csv"))
    assert {"accuracy", "comparisons", "pass_at_k", "dynamics", "disagreements"} <= {p.stem for p in csvs}
    for csv in csvs:
        a, b = pd.read_csv(csv), pd.read_parquet(csv.with_suffix(".parquet"))
        assert list(a.columns) == list(b.columns) and len(a) == len(b) > 0
    for link in re.findall(r'href="((?:figures|tables)/[^"]+)"', full["html"]):
        assert (out / link).is_file(), link


def test_numbers_equal_the_statistics_functions(full):
    from verl_bench.analysis import stats

    samples, out, html = stats.last_step(full["samples"]), full["out"], unescape(full["html"])
    acc = T.accuracy_long(stats.accuracy_table(samples))
    got = pd.read_csv(out / "tables" / "accuracy.csv")
    key = ["model", "arm", "benchmark"]
    merged = got.merge(acc, on=key, suffixes=("_report", "_stats"))
    assert len(merged) == len(acc) == len(got)
    for col in ("mean", "ci_low", "ci_high"):
        np.testing.assert_allclose(merged[f"{col}_report"], merged[f"{col}_stats"], rtol=1e-12)
    # each paper-table cell shows exactly the stats' mean and interval
    for r in acc.itertuples():
        assert T.interval(r.mean, r.ci_low, r.ci_high) in html

    comps = stats.comparisons(samples, "verl", "grpo", benchmarks=BENCHMARKS, average=True)
    comp = pd.read_csv(out / "tables" / "comparisons.csv")
    assert len(comp) == len(comps)
    for c in comps:
        row = comp[(comp["benchmark"] == c.benchmark) & (comp["model"] == c.model)].iloc[0]
        for f in ("delta", "ci_low", "ci_high", "p_value", "p_adjusted", "mde"):
            assert row[f] == pytest.approx(getattr(c, f), rel=1e-12), f
        assert row["verdict"] == c.verdict == stats.verdict(c)
    primary = next(c for c in comps if c.benchmark == "average")
    assert T.interval(primary.delta, primary.ci_low, primary.ci_high, signed=True) in html
    assert T.p_text(primary.p_value) in html and T.pct(primary.mde) in html
    wording = {"better": "verl is better than grpo", "worse": "verl is worse than grpo"}
    assert wording.get(primary.verdict, primary.verdict.capitalize()) in html

    curves = stats.pass_at_k_curve(stats.last_step(samples), [1, 2, 4])
    got = pd.read_csv(out / "tables" / "pass_at_k.csv")
    np.testing.assert_allclose(got["mean"].to_numpy(), curves["mean"].to_numpy(), rtol=1e-12)


def test_sweep_numbers_equal_the_hpo_functions(full):
    from verl_bench.analysis import hpo

    trials = hpo.trial_table(full["sweep"])
    floor = hpo.seed_noise_floor(trials, "val/accuracy")
    assert floor is not None and f"Seed-noise floor: {floor:.4g}" in unescape(full["html"])
    knobs = ["shaping.kappa", "shaping.tau", "shaping.mode"]  # the seed is no knob
    want = hpo.knob_importance(trials, knobs, "val/accuracy", n_boot=10).set_index("knob")
    got = pd.read_csv(full["out"] / "tables" / "sweep_0_fake_sweep_importance.csv").set_index("knob")
    assert sorted(got.index) == sorted(knobs)
    for col in ("importance", "ci_low", "ci_high"):
        np.testing.assert_allclose(got.loc[knobs, col], want.loc[knobs, col], rtol=1e-9)
    best = trials.loc[trials["val/accuracy"].idxmax()]
    assert f"val/accuracy = {best['val/accuracy']:.4g}" in full["html"]


def test_one_seed_says_seed_variance_was_not_measured(tmp_path):
    from verl_bench.report import build_report

    study = _fake_study_dir(tmp_path, seeds=(0,))
    with pytest.MonkeyPatch.context() as mp:
        _patch_frames(mp, (0,), metrics=["reward/mean", "val/accuracy"])
        html = unescape(build_report([study], tmp_path / "out", **QUIET).read_text())
    assert "Seed variance was not measured" in html and "Seed variance not measured: one training seed" in html
    assert "seed variance not measured" in html  # by the paper table too
    assert html.count("Seed variance not measured (one training seed)") == 2  # forest and pass@k captions
    assert "<section id=\"hpo-0\">" not in html  # a study has no HPO section
    assert "(1 per arm)" in html


def test_sweep_only_report_through_the_cli(tmp_path, capsys):
    from verl_bench.analysis import hpo
    from verl_bench.cli import main

    sweep = fake_sweep(tmp_path, n_trials=6)
    assert main(["report", str(sweep), "-o", str(tmp_path / "out"), "--metric", "val/accuracy,val/response_length",
                 "--mode", "max,min", "--n-boot", "10"]) == 0
    assert "report: open " in capsys.readouterr().out
    html = unescape((tmp_path / "out" / "index.html").read_text())
    assert '<section id="hpo-0">' in html and '<section id="verdict">' not in html
    assert "Pareto front" in html and "optimisation history" in html and "biased upward" in html
    trials = hpo.trial_table(sweep)
    imp = pd.read_csv(tmp_path / "out" / "tables" / "sweep_0_fake_sweep_importance.csv")
    assert set(imp["knob"]) <= {"shaping.kappa", "shaping.tau", "shaping.mode"}
    assert len(pd.read_csv(tmp_path / "out" / "tables" / "sweep_0_fake_sweep_trials.csv")) == len(trials)


def test_sweep_with_a_constant_metric_still_reports(tmp_path):
    """fANOVA refuses a metric without variance: the section says so instead of the report failing."""
    from verl_bench.report import render_report

    trials = pd.DataFrame({"trial_id": [f"t{i}" for i in range(4)], "config/lr": [1e-3, 2e-3, 3e-3, 4e-3],
                           "config/seed": [0, 1, 0, 1], "val/accuracy": [0.0] * 4})
    html = unescape(render_report(None, None, tmp_path / "out", {"name": "flat"}, trials=trials, n_boot=5,
                                  **QUIET).read_text())
    assert "optimisation history" in html
    # today hpo.knob_importance raises (fANOVA: "zero total variance"); should it return nan instead, the table shows
    assert "importance not computed" in html or '<th class="l">knob</th>' in html


# ------------------------------------------------------------------------------------------ small parts
def test_source_kind_and_errors(tmp_path):
    assert source_kind(_fake_study_dir(tmp_path)) == "study"
    assert source_kind(fake_sweep(tmp_path)) == "sweep"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="neither a study folder"):
        source_kind(tmp_path / "empty")
    with pytest.raises(ReportError, match="not a folder"):
        source_kind(tmp_path / "missing")


def test_two_studies_with_the_same_runs_are_refused(tmp_path):
    from verl_bench.report import build_report

    a, b = _fake_study_dir(tmp_path / "a"), _fake_study_dir(tmp_path / "b")
    with pytest.MonkeyPatch.context() as mp:
        _patch_frames(mp, (0,))
        with pytest.raises(ReportError, match="both hold model 'tiny-a'"):
            build_report([a, b], tmp_path / "out", **QUIET)


def test_cli_bad_source_exits_2(tmp_path, capsys):
    from verl_bench.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "empty" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # refused before any work


def test_tune_objective_read_from_the_experiment_state(tmp_path):
    assert tune_objective(fake_sweep(tmp_path / "a", n_trials=2, metric="val/response_length", mode="min")) == (
        "val/response_length", "min")
    assert tune_objective(fake_sweep(tmp_path / "b", n_trials=2)) == (None, None)


def test_sweep_objectives():
    t = pd.DataFrame({"config/a": [1, 2], "val/accuracy": [0.1, 0.2], "loss": [1.0, 2.0]})
    assert sweep_objectives(t, None, None) == (["val/accuracy"], ["max"])
    assert sweep_objectives(t, ["loss"], ["min"]) == (["loss"], ["min"])
    with pytest.raises(ReportError, match="'nope'"):
        sweep_objectives(t, ["nope"], None)


def test_interval_formatting():
    assert T.interval(0.412, 0.381, 0.443) == "41.2 ± 3.1"
    assert T.interval(0.412, 0.30, 0.45) == "41.2 [30.0, 45.0]"
    assert T.interval(0.013, -0.01, 0.036, signed=True) == "+1.3 ± 2.3"
    assert T.interval(float("nan"), 0, 1) == "–" and T.p_text(0.0001) == "< 0.001"


def test_disagreements_pick_a_correct_and_a_wrong_response():
    s = fake_samples(models=("m",), seeds=(0,), problems=6, samples=2, effect=0.0)
    s.loc[(s["arm"] == "verl") & (s["problem"] == "math500/3"), "correct"] = 1.0
    s.loc[(s["arm"] == "grpo") & (s["problem"] == "math500/3"), "correct"] = 0.0
    d = T.disagreements(s, "m", "verl", "grpo", limit=50)
    row = d[d["problem"] == "math500/3"].iloc[0]
    assert row["winner"] == "verl" and row["solve_rate_verl"] == 1.0 and row["solve_rate_grpo"] == 0.0
    rate = s[s["arm"].isin(["verl", "grpo"])].groupby(["benchmark", "problem", "arm"])["correct"].mean().unstack()
    assert len(d) == int(((rate["verl"] - rate["grpo"]).abs() >= 0.5).sum())
    gaps = (d["solve_rate_verl"] - d["solve_rate_grpo"]).abs().to_numpy()
    assert (np.diff(gaps) <= 0).all()


def test_data_provenance_names_the_generator_or_the_data_root(monkeypatch, tmp_path):
    from verl_bench.report.sources import provenance

    (tmp_path / "PROVENANCE.md").write_text("# Math data\nCopied from public snapshots.\n| table |\n")
    monkeypatch.setenv("VERL_BENCH_DATA", str(tmp_path))
    gen = provenance(["arithmetic_test_l0"])
    assert gen["root"].startswith("no data files") and "seed 1000003" in gen["lines"][0]
    files = provenance(["arithmetic_test_l0", "math500"])  # one benchmark read from files: the data root
    assert files == {"root": str(tmp_path), "lines": ["# Math data", "Copied from public snapshots."]}


def test_git_commit_is_dirty_for_changed_code_not_for_the_report_being_written(tmp_path):
    import subprocess

    from verl_bench.report.sources import git_commit

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "reports" / "demo").mkdir(parents=True)
    (tmp_path / "reports" / "demo" / "index.html").write_text("old")
    (tmp_path / "code.py").write_text("x = 1")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    (tmp_path / "reports" / "demo" / "index.html").write_text("new")  # the report being rebuilt
    clean = git_commit(tmp_path / "reports" / "demo", repo=tmp_path)
    assert len(clean) == 40 and "uncommitted" not in clean
    assert git_commit(repo=tmp_path).endswith("(with uncommitted changes)")  # any other report: dirty
    (tmp_path / "code.py").write_text("x = 2")
    assert git_commit(tmp_path / "reports" / "demo", repo=tmp_path) == clean + " (with uncommitted changes)"

