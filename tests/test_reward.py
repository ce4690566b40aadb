"""Grading responses (extraction + the verifier, one deadline per batch) and the reward schemes."""

from __future__ import annotations

import pytest

from verl_bench.reward import Grade, grade_batch, grade_response, reward_to_task_score, scheme_reward
from verl_bench.verifier import VerifierPool


@pytest.fixture(scope="module")
def pool():
    p = VerifierPool(n_workers=2, spares=1)
    p.warmup()
    yield p
    p.close()


def test_reward_scheme_table():
    assert scheme_reward(True, True, "boxed") == 1.0
    assert scheme_reward(True, False, "boxed") == 0.5
    assert scheme_reward(False, True, "boxed") == -0.5
    assert scheme_reward(False, False, "boxed") == -1.0
    assert scheme_reward(True, True, "binary") == scheme_reward(True, False, "binary") == 1.0
    assert scheme_reward(False, True, "binary") == scheme_reward(False, False, "binary") == 0.0
    assert reward_to_task_score(1.0, "binary") == 1.0 and reward_to_task_score(0.0, "binary") == -1.0
    for r in (1.0, 0.5, -0.5, -1.0):
        assert reward_to_task_score(r, "boxed") == r
    with pytest.raises(ValueError):
        scheme_reward(True, True, "nope")
    with pytest.raises(ValueError):
        reward_to_task_score(1.0, "nope")


def test_grade_batch_both_schemes(pool):
    responses = [
        "2+2 = \\boxed{4}",  # correct, boxed
        "So the answer is 4.",  # correct, not boxed
        "I think it is \\boxed{5}",  # wrong, boxed
        "I am not sure.",  # no answer at all
        "maybe 7",  # wrong, not boxed
        "\\boxed{\\frac{8}{2}}",  # correct via fraction, boxed
        "blah " * 5000 + "\\boxed{2\\sqrt{4}}",  # a long response; only the answer is limited; via sympy
    ]
    grades = grade_batch(responses, ["4"] * len(responses), 30.0, pool=pool)  # generous: a loaded machine
    assert [g.answer for g in grades] == ["4", "4", "5", None, "7", "\\frac{8}{2}", "2\\sqrt{4}"]
    assert [scheme_reward(g.correct, g.boxed, "boxed") for g in grades] == [1.0, 0.5, -0.5, -1.0, -1.0, 1.0, 1.0]
    assert [scheme_reward(g.correct, g.boxed, "binary") for g in grades] == [1, 1, 0, 0, 0, 1, 1]
    assert not any(g.timed_out for g in grades)
    assert grade_response(responses[1], "4", pool=pool) == Grade("4", False, True)  # fast path
    with pytest.raises(ValueError):
        grade_batch(responses, ["4"] * (len(responses) - 1), pool=pool)


def test_hanging_answers_are_counted_and_do_not_poison_the_batch(pool):
    # the right answers take the fast path: no deadline can reach them, however loaded the machine
    grades = grade_batch(["\\boxed{9^{9^{9^{9}}}}", "\\boxed{\\frac{24}{2}}", "\\boxed{5}", "\\boxed{10^{10^{10^{10}}}}"],
                         ["2", "12", "5", "3"], timeout_s=1.0, pool=pool)
    assert [g.correct for g in grades] == [False, True, True, False]
    assert [g.timed_out for g in grades] == [True, False, False, True]  # what the loop logs as timeouts

