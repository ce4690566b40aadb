"""avg@n / pass@k / maj@k, presets and the per-doc scoring hook, against brute force and real gold answers."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_bench.data import load_problems
from verl_bench.evaluate.metrics import majority_vote, pass_at_k, problem_metrics
from verl_bench.evaluate.presets import PRESETS, EvalPreset, get_preset
from verl_bench.evaluate.tasks import GRADES, build_docs, make_process_results, metric_names


def brute_pass_at_k(outcomes: list[bool], k: int) -> float:
    """Fraction of all k-subsets of the samples that contain a correct one."""
    subsets = list(itertools.combinations(range(len(outcomes)), k))
    return sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_equals_brute_force(n):
    for c in range(n + 1):
        outcomes = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(outcomes, k), abs=1e-12), (n, c, k)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 256), st.data())
def test_pass_at_k_matches_binomial_formula_at_paper_scale(n, data):
    c = data.draw(st.integers(0, n))
    k = data.draw(st.integers(1, n))
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)  # exact integers, then one division
    assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-9)
    assert pass_at_k(n, c, 1) == pytest.approx(c / n)


def test_pass_at_k_rejects_impossible_inputs():
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="c <= n"):
        pass_at_k(4, 5, 1)


def test_majority_vote_counts_normalised_answers_and_breaks_ties_by_first_seen():
    assert majority_vote(["3", "5", "5", "3", None, "5"]) == 1
    assert majority_vote(["7", "9"]) == 0  # tie: first seen
    assert majority_vote([None, None]) is None
    # "\\frac{1}{2}" vs "\\dfrac{1}{2}" are one answer after normalisation; "2" is outvoted
    assert majority_vote(["2", "\\dfrac{1}{2}", "\\frac{1}{2}"]) == 1


def test_problem_metrics_by_hand():
    answers = ["5", "4", "4", "4"]
    correct = [True, False, False, False]
    m = problem_metrics(answers, correct, ks=(1, 2, 4))
    assert m["avg@4"] == 0.25
    assert m["pass@1"] == pytest.approx(0.25)
    assert m["pass@2"] == pytest.approx(1 - 3 / 6)  # C(3,2)/C(4,2)
    assert m["pass@4"] == 1.0
    assert m["maj@2"] == 1.0  # first two: "5" (right) and "4": tie goes to the first
    assert m["maj@4"] == 0.0  # "4" wins 3 to 1
    with pytest.raises(ValueError, match="k=8 > n=4"):
        problem_metrics(answers, correct, ks=(8,))


def test_presets_validate_and_name_their_protocol():
    paper = get_preset("paper")
    assert (paper.temperature, paper.top_p, paper.n, paper.max_tokens) == (0.6, 0.95, 1, 1536)
    assert get_preset("greedy").generation_kwargs()["do_sample"] is False
    with pytest.raises(ValueError, match="identical samples"):
        EvalPreset("bad", temperature=0.0, n=4)
    with pytest.raises(ValueError, match="every k must be in 1..n=4"):
        EvalPreset("bad", temperature=1.0, n=4, ks=(8,))
    with pytest.raises(ValueError, match="unknown eval preset 'nope'"):
        get_preset("nope")
    # asking the greedy preset for 8 samples switches to sampling and reports k = 1, 2, 4, 8
    many = get_preset("greedy").with_overrides(n=8)
    assert many.temperature > 0 and many.ks == (1, 2, 4, 8)
    # every protocol change gives a different results folder, so results are never mixed
    keys = {p.key() for p in PRESETS.values()} | {many.key(), paper.with_overrides(max_tokens=512).key()}
    assert len(keys) == len(PRESETS) + 2


@pytest.fixture(scope="module")
def gsm8k_doc():
    return build_docs("gsm8k", "qwen-boxed", limit=1)[0]


def test_docs_carry_the_rendered_prompt_and_normalised_gold(gsm8k_doc):
    p = load_problems("gsm8k", limit=1)[0]
    assert gsm8k_doc["gold"] == p.gold == "18"
    assert gsm8k_doc["prompt"].startswith("<|im_start|>system") and p.question in gsm8k_doc["prompt"]
    assert gsm8k_doc["prompt"].endswith("<|im_start|>assistant\n")


def test_process_results_scores_real_gold_with_the_training_checker(gsm8k_doc):
    preset = EvalPreset("t", temperature=0.6, top_p=0.95, n=4, max_tokens=64, ks=(1, 2, 4))
    score = make_process_results(preset)
    right, wrong = "She makes 9 * 2 = \\boxed{18} dollars.", "So the answer is \\boxed{16}."
    m = score(gsm8k_doc, [[wrong, right, wrong, "no answer at all"]])
    assert set(m) == {*metric_names(preset), GRADES}  # and every sample's own grade (task version 2)
    assert m["avg@4"] == 0.25 and m["pass@4"] == 1.0 and m["pass@2"] == pytest.approx(0.5)
    assert m["maj@4"] == 0.0  # 16 twice beats 18 once
    m = score(gsm8k_doc, [["\\boxed{18.0}", "\\boxed{18}", "The answer is $18", wrong]])
    assert m["avg@4"] == 0.75 and m["maj@2"] == 1.0
    with pytest.raises(RuntimeError, match="expected 4 responses, got 1"):
        score(gsm8k_doc, [[right]])
