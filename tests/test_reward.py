"""Answer extraction, verification under a hard time bound, reward schemes."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_bench import reward as R
from verl_bench.reward import (
    MAX_ANSWER_CHARS,
    VerifierPool,
    extract_answer,
    extract_boxed,
    grade_batch,
    reward_to_task_score,
    scheme_reward,
    score_batch,
    score_response,
    verify,
)


def data_root() -> Path:
    return Path(os.environ.get("VERL_BENCH_DATA") or "/work/shared/data/math")


@pytest.fixture(scope="module")
def pool():
    p = VerifierPool(n_workers=2)
    p.warmup()  # worker start-up (sympy import) is not part of any per-answer deadline
    yield p
    p.close()


# ---------------------------------------------------------------------------------------- extraction


def test_extract_boxed():
    assert extract_boxed("so \\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"
    assert extract_boxed("\\boxed{1} then \\boxed{\\sqrt{x^{2}+1}}") == "\\sqrt{x^{2}+1}"
    assert extract_boxed("\\fbox{7}") == "7"
    assert extract_boxed("\\boxed{\\{1,2\\}}") == "\\{1,2\\}"
    assert extract_boxed("\\boxed 5 apples") == "5"
    assert extract_boxed("answer \\boxed{3} and a cut-off \\boxed{\\frac{1}{") == "3"  # unclosed last box
    assert extract_boxed("put it in \\boxed{} ... \\boxed{12}") == "12"
    assert extract_boxed("the result \\boxed{12} then \\boxed{}") == "12"  # empty box passed over
    assert extract_boxed("no box here") is None
    assert extract_boxed("\\boxedx{3}") is None


@given(st.text(alphabet=st.characters(blacklist_characters="{}\\", blacklist_categories=("Cs",)), min_size=1))
@settings(max_examples=60, deadline=None)
def test_extract_boxed_roundtrip(content):
    if content.strip():
        assert extract_boxed(f"blah \\boxed{{{content}}} end") == content.strip()


def test_extract_answer_fallbacks():
    assert extract_answer("work... so \\boxed{42}") == ("42", True)
    assert extract_answer("Thus the answer is 42.") == ("42", False)
    assert extract_answer("Final Answer: $\\frac{3}{4}$. Done") == ("\\frac{3}{4}", False)
    assert extract_answer("The final answer is **17**") == ("17", False)
    assert extract_answer("blah\n#### 1,234") == ("1,234", False)
    assert extract_answer("I got 3 and then 3.5 in the end") == ("3.5", False)
    assert extract_answer("no idea") == (None, False)
    assert extract_answer("") == (None, False)


# ---------------------------------------------------------------------------------------- verify


@pytest.mark.parametrize(
    "pred,gold",
    [
        ("0.5", "\\frac{1}{2}"),
        ("\\frac12", "0.5"),
        ("\\dfrac{1}{2}", "\\frac{1}{2}"),
        ("1,000", "1000"),
        ("1000", "1,000"),
        ("27", "27.0"),
        ("336^\\circ", "336"),
        ("x = 5", "5"),
        ("\\$18", "18"),
        ("4.5 \\times 10^{33}", "4.5e33"),
        ("(C)", "C"),
        ("CB", "BC"),
    ],
)
def test_equivalent_forms_fast_path(pred, gold, pool):
    calls = pool.stats["calls"]
    assert verify(pred, gold, pool=pool)
    assert pool.stats["calls"] == calls  # decided without math-verify


@pytest.mark.parametrize(
    "pred,gold",
    [
        ("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2"),
        ("(3, \\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("-q + p", "p - q"),
        ("2\\sqrt{3}", "\\sqrt{12}"),
        ("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}"),
        ("\\frac{9}{2}\\times 10^{33}", "4.5e33"),
        ("384, 48", "48, 384"),  # two answers in either order
    ],
)
def test_equivalent_forms_math_verify(pred, gold, pool):
    assert R._fast_check(pred, gold) is None  # needs sympy
    assert verify(pred, gold, pool=pool, use_cache=False)


@pytest.mark.parametrize(
    "pred,gold",
    [
        ("3", "2"),
        ("\\frac{1}{3}", "0.5"),
        ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt{2}}{2}"),
        ("1000", "100"),
        ("p + q", "p - q"),
        ("D", "C"),
        ("B", "BC"),
        ("4.6e33", "4.5e33"),
        ("48384", "48, 384"),  # ", " separates answers; it is no thousands separator
        ("48, 384", "48384"),
        ("", "1"),
        ("1", ""),
    ],
)
def test_wrong_answers_fail(pred, gold, pool):
    assert not verify(pred, gold, pool=pool, use_cache=False)


def test_length_limits_refuse_without_parsing(pool):
    calls = pool.stats["calls"]
    long_pred = "1" * (MAX_ANSWER_CHARS + 1)
    assert not verify(long_pred, "1" * (MAX_ANSWER_CHARS + 1), pool=pool)  # even when identical
    assert not verify("\\sqrt{" * 600 + "2" + "}" * 600, "2", pool=pool)
    assert not verify("1", "x" * (MAX_ANSWER_CHARS + 5), pool=pool)
    assert not verify(None, "1", pool=pool)  # type: ignore[arg-type]
    assert pool.stats["calls"] == calls
    # a long response is fine: only the extracted answer is limited
    assert score_response("blah " * 5000 + "\\boxed{7}", "7", pool=pool) == 1.0


def test_timeout_holds_off_the_main_thread(pool):
    """math-verify hangs on 9^{9^{9^{9}}}; from a worker thread the call still returns by the deadline."""
    bound, slack = 1.0, 1.5
    adversarial = "9^{9^{9^{9}}}"
    assert R._fast_check(adversarial, "1") is None  # really goes to math-verify
    out = {}

    def run():
        t0 = time.monotonic()
        out["ok"] = verify(adversarial, "1", timeout_s=bound, pool=pool, use_cache=False)
        out["wall"] = time.monotonic() - t0

    timeouts = pool.stats["timeouts"]
    th = threading.Thread(target=run)
    th.start()
    th.join(timeout=bound + 10)
    assert not th.is_alive()
    assert out["ok"] is False
    assert out["wall"] < bound + slack, out
    assert pool.stats["timeouts"] == timeouts + 1
    # the pool recovered: the killed worker was replaced and correct answers still verify
    assert verify("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2", pool=pool, use_cache=False)
    # and in a batch, one hanging answer does not stall or poison the others
    t0 = time.monotonic()
    got = grade_batch(
        ["\\boxed{9^{9^{9^{9}}}}", "\\boxed{2\\sqrt{3}}", "\\boxed{5}"],
        ["2", "\\sqrt{12}", "5"],
        timeout_s=bound,
        pool=pool,
    )
    assert [g.correct for g in got] == [False, True, True]
    assert time.monotonic() - t0 < bound + 15  # includes a replacement worker's start-up


# ---------------------------------------------------------------------------------------- schemes


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


def test_score_batch_both_schemes(pool):
    responses = [
        "2+2 = \\boxed{4}",  # correct, boxed
        "So the answer is 4.",  # correct, not boxed
        "I think it is \\boxed{5}",  # wrong, boxed
        "I am not sure.",  # no answer at all
        "maybe 7",  # wrong, not boxed
        "\\boxed{\\frac{8}{2}}",  # correct via fraction, boxed
    ]
    golds = ["4"] * len(responses)
    assert score_batch(responses, golds, "boxed", pool=pool) == [1.0, 0.5, -0.5, -1.0, -1.0, 1.0]
    assert score_batch(responses, golds, "binary", pool=pool) == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert [score_response(r, "4", "boxed", pool=pool) for r in responses] == [
        1.0,
        0.5,
        -0.5,
        -1.0,
        -1.0,
        1.0,
    ]
    with pytest.raises(ValueError):
        score_batch(responses, golds[:-1], "boxed", pool=pool)
    with pytest.raises(ValueError):
        score_batch(responses, golds, "nope", pool=pool)


def test_score_batch_parallel_math_verify(pool):
    # 8 distinct pairs that need sympy plus duplicates; duplicates are verified once
    preds = [f"\\frac{{{k}\\sqrt{{2}}}}{{2}}" for k in range(1, 9)]
    golds = [f"{k}/\\sqrt{{2}}" for k in range(1, 9)]
    responses = [f"\\boxed{{{p}}}" for p in preds] * 3
    calls = pool.stats["calls"]
    R._CACHE.clear()
    assert score_batch(responses, golds * 3, "binary", pool=pool) == [1.0] * 24
    assert pool.stats["calls"] - calls == 8
    wrong = score_batch([f"\\boxed{{{p}}}" for p in preds], golds[1:] + golds[:1], "boxed", pool=pool)
    assert wrong == [-0.5] * 8


def test_default_pool_from_a_thread():
    """verify() without an explicit pool uses the process-wide pool and works off the main thread."""
    out = {}

    def run():
        out["ok"] = verify("\\frac{2}{\\sqrt{2}}", "\\sqrt{2}", use_cache=False)

    th = threading.Thread(target=run)
    th.start()
    th.join(timeout=60)
    assert out.get("ok") is True
    R.shutdown_verifier()


@pytest.mark.skipif(not data_root().is_dir(), reason="benchmark data folder not found (set VERL_BENCH_DATA)")
def test_real_golds_verify_against_their_solutions():
    from verl_bench.data import load_problems

    m500 = load_problems("math500", data_root=data_root(), limit=40)
    grades = [extract_answer(p.solution) for p in m500]
    assert all(boxed for _, boxed in grades)
    assert all(verify(a, p.gold) for (a, _), p in zip(grades, m500))
    gsm = load_problems("gsm8k", data_root=data_root(), limit=40)
    assert all(extract_answer(p.solution)[0].replace(",", "") == p.gold for p in gsm)
