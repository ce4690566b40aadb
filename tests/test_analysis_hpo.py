"""verl_bench.analysis.hpo: the trial table from Tune's files (hand-written and from a real Tune run), the
seed-noise floor by hand, knob importance on trials where one knob drives the metric, the Pareto front."""

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest

from verl_bench.analysis import hpo


def _trial(root, name, params, results, raw_tail=""):
    d = root / name
    d.mkdir(parents=True)
    (d / "params.json").write_text(json.dumps(params))
    (d / "result.json").write_text("".join(json.dumps(r) + "\n" for r in results) + raw_tail)
    return d


def test_trial_table_reads_tune_files(tmp_path):
    exp = tmp_path / "exp"
    _trial(exp, "fn_ab12c_00001_1_kappa=4", {"shaping": {"kappa": 4.0, "mode": "sum"}, "seed": 1},
           [{"step": 1, "val/accuracy": 0.2, "trial_id": "ab12c_00001", "config": {"x": 1}},
            {"step": 2, "val/accuracy": 0.3, "trial_id": "ab12c_00001"}], raw_tail='{"step": 3, "val/acc')  # cut off
    _trial(exp, "fn_ab12c_00000_0_kappa=2", {"shaping": {"kappa": 2.0, "mode": "meta"}, "seed": 0},
           [{"step": 2, "val/accuracy": 0.5, "trial_id": "ab12c_00000"}])
    pending = exp / "fn_ab12c_00002_2_kappa=8"  # started, never reported to Tune: its run's own log
    pending.mkdir()
    (pending / "params.json").write_text(json.dumps({"shaping": {"kappa": 8.0, "mode": "meta"}, "seed": 0}))
    (pending / "run").mkdir()
    (pending / "run" / "metrics.jsonl").write_text('{"step": 0, "val/accuracy": 0.1}\n{"step": 1, "loss": 2.0}\n')
    (exp / "checkpoint_tmp").mkdir()  # not a trial
    t = hpo.trial_table(exp)
    assert list(t["trial_id"]) == ["ab12c_00000", "ab12c_00001", "ab12c_00002"]  # start order
    assert list(t["config/shaping.kappa"]) == [2.0, 4.0, 8.0] and list(t["config/seed"]) == [0, 1, 0]
    assert list(t["val/accuracy"]) == [0.5, 0.3, 0.1]  # the last report (the cut-off line is skipped)
    assert list(t["n_reports"]) == [1, 2, 0] and t["loss"].iloc[2] == 2.0
    assert "config" not in t and not any(c.startswith("config/x") for c in t)


def test_seed_noise_floor_by_hand():
    t = pd.DataFrame({"config/a": [1, 1, 2, 2, 2, 3], "config/seed": [0, 1, 0, 1, 2, 0],
                      "m": [0.5, 0.7, 0.2, 0.3, 0.4, 0.9]})
    # groups a=1: 0.5, 0.7 (ss 0.02, 1 df); a=2: 0.2, 0.3, 0.4 (ss 0.02, 2 df); a=3 alone
    assert hpo.seed_noise_floor(t, "m") == pytest.approx(math.sqrt(0.04 / 3))
    assert hpo.seed_noise_floor(t.drop(columns="config/seed"), "m") is None
    assert hpo.seed_noise_floor(t.assign(**{"config/seed": 0, "config/a": range(6)}), "m") is None
    nested = t.rename(columns={"config/seed": "config/train.seed"})
    assert hpo.seed_noise_floor(nested, "m") == pytest.approx(math.sqrt(0.04 / 3))


def _driven_trials(n=40, seed=0):
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(0, 1, n), rng.uniform(0, 1, n)
    mode = rng.choice(["meta", "sum"], n)
    return pd.DataFrame({"config/a": a, "config/b": b, "config/mode": mode, "config/fixed": 3,
                         "m": 0.3 * a + rng.normal(0, 0.01, n)})


def test_knob_importance_driving_knob_above_the_others():
    t = _driven_trials()
    imp = hpo.knob_importance(t, ["a", "b", "mode", "fixed"], "m", n_boot=25).set_index("knob")
    assert imp.loc["a", "ci_low"] > max(imp.loc["b", "ci_high"], imp.loc["mode", "ci_high"])
    assert imp.loc["a", "share"] > 0.8
    # in metric units: the SD that moving a alone causes, 0.3 / sqrt(12) = 0.087 for a uniform on [0, 1]
    assert 0.05 < imp.loc["a", "importance"] < 0.1
    assert imp.loc["a", "ci_low"] <= imp.loc["a", "importance"] <= imp.loc["a", "ci_high"]
    assert imp.loc["fixed", ["importance", "ci_low", "ci_high"]].tolist() == [0.0, 0.0, 0.0]
    assert set(imp["n_trials"]) == {40}
    few = hpo.knob_importance(t.head(2), ["a"], "m", n_boot=5)
    assert few["importance"].isna().all()


def test_pareto_front_matches_brute_force():
    rng = np.random.default_rng(3)
    t = pd.DataFrame({"acc": rng.uniform(0, 1, 30), "length": rng.uniform(10, 100, 30), "id": range(30)})
    t.loc[5, "acc"] = np.nan
    front = hpo.pareto_front(t, ["acc", "length"], ["max", "min"])
    ok = t.dropna()
    expected = {i for i, r in ok.iterrows()
                if not any(q.acc >= r.acc and q.length <= r.length and (q.acc > r.acc or q.length < r.length)
                           for _, q in ok.iterrows())}
    assert set(front.index) == expected and list(front["acc"]) == sorted(front["acc"], reverse=True)
    with pytest.raises(ValueError, match="one mode"):
        hpo.pareto_front(t, ["acc", "length"], ["max"])


@pytest.mark.slow
def test_trial_table_of_a_real_tune_grid(tmp_path, local_ray):
    """A real Tune experiment (a trivial function trainable, grid over a knob and the seed): the table has one
    row per trial with its nested config flattened and its last report, and the seed-noise floor is the
    pooled SD of the seed-only differences."""
    from ray import tune

    def trainable(config):
        for step in (1, 2):
            tune.report({"step": step, "score": config["opt"]["lr"] * 10 + config["seed"] * 0.1 + step})

    tuner = tune.Tuner(trainable, param_space={"opt": {"lr": tune.grid_search([0.1, 0.2])},
                                               "seed": tune.grid_search([0, 1])},
                       run_config=tune.RunConfig(name="exp", storage_path=str(tmp_path), verbose=0))
    grid = tuner.fit()
    assert not grid.errors
    t = hpo.trial_table(tmp_path / "exp")
    assert len(t) == 4 and list(t["trial_index"]) == [0, 1, 2, 3]
    assert sorted(zip(t["config/opt.lr"], t["config/seed"])) == list(itertools.product([0.1, 0.2], [0, 1]))
    assert (t["n_reports"] == 2).all() and (t["step"] == 2).all()
    expected = t["config/opt.lr"] * 10 + t["config/seed"] * 0.1 + 2
    assert t["score"].tolist() == pytest.approx(expected.tolist())
    # each lr: two seeds 0.1 apart -> SD 0.1 / sqrt(2) in both groups
    assert hpo.seed_noise_floor(t, "score") == pytest.approx(0.1 / math.sqrt(2))
