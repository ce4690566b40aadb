"""Hostile completions for the grader, and the measurements made with them.

Used by tests/test_verifier_hostile.py (inside a Ray worker) and benchmarks/verifier_attack.py (the wall
time bounds, old grader against new). A case is (kind, response, gold, expected correct): towers of
powers, huge factorials and sums, deep nesting, million-character answers, malformed LaTeX, unicode
look-alikes, text that would be dangerous if evaluated, and answers that try to match every gold. All are
wrong except equivalent answers in other digit systems, which are accepted, consistently.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence

Case = tuple[str, str, str, bool]
Grader = Callable[[Sequence[str], Sequence[str], float], list]  # (responses, golds, timeout_s) -> grades


def _box(a: str) -> str:
    return "\\boxed{" + a + "}"


def hostile_cases(marker: str) -> list[Case]:
    """``marker``: a path that code execution would create."""
    cases: list[Case] = []
    for a in ["9^{9^{9^{9}}}", "2^{2^{2^{2^{2^{2}}}}}", "10^{10^{10^{10}}}", "(9^9)^{9^{9^9}}", "e^{e^{e^{e^{e}}}}",
              "\\left(10^{100}\\right)^{10^{100}}"]:
        cases.append(("power tower", _box(a), "1", False))
    for a in ["(10^{6})!", "100000!", "9!!!!!!", "\\sum_{k=1}^{10^{12}} k^{k}", "\\prod_{k=1}^{10^{9}} k",
              "\\binom{10^{12}}{10^{6}}", "(x+1)^{100000}", "\\left(x+y+z\\right)^{3000}", "10^{10^{10}}"]:
        cases.append(("huge factorial/sum/power", _box(a), "2", False))
    cases += [
        ("deep nesting", _box("\\sqrt{" * 300 + "2" + "}" * 300), "2", False),
        ("deep nesting", _box("(" * 450 + "1" + ")" * 450), "2", False),
        ("deep nesting", _box("\\frac{1}{" * 150 + "2" + "}" * 150), "2", False),
        ("deep nesting", _box("{" * 480 + "1" + "}" * 480), "2", False),
        ("million characters", _box("1" * 1_000_000), "1" * 1_000_000, False),
        ("million characters", "9" * 1_000_000, "9", False),
        ("million characters", _box("{" * 999_990), "1", False),
        ("million characters", "$" * 1_000_000 + " 1", "1", False),
        ("million characters", "The answer is " + "\\(" * 500_000 + " 1", "1", False),
        ("million characters", "answer is" + "\n" * 1_000_000, "1", False),
        ("long, under the limit", "\\(" * 15_000 + "$" * 1_000 + " so the answer is 9^{9^{9^{9}}}", "1", False),
        ("long, under the limit", "\\boxed{" * 4_000 + "{" * 3_000, "1", False),
    ]
    for a in ["\\frac{1}{", "\\frac{}{}", "\\sqrt[}{2}", "\\left( 1 \\right]", "\\begin{matrix} 1 & 2", "^^^^",
              "\\\\\\\\", "_{_{_{}}}", "\\end{array}", "\\frac{\\frac{\\frac{", "\\left.", "\\over\\over", "&&&"]:
        cases.append(("malformed LaTeX", _box(a), "7", False))  # math-verify reads "\\frac{1}{" as 1: fair enough
    cases += [
        ("unicode look-alike", _box("O"), "0", False), ("unicode look-alike", _box("l"), "1", False),
        ("unicode look-alike", _box("Ⅻ"), "12", False), ("unicode look-alike", _box("А"), "A", False),  # Cyrillic
        ("unicode look-alike", _box("1\u200b2"), "12", False), ("unicode look-alike", _box("x²"), "x", False),
        ("unicode look-alike", _box("½"), "2", False), ("unicode look-alike", _box("Ｃ"), "C", False),
        ("other digit system", _box("４２"), "42", True), ("other digit system", _box("٤٢"), "42", True),
        ("other digit system", _box("\\sqrt{٤}"), "2", True), ("other digit system", _box("𝟒𝟐"), "42", True),
    ]
    for a in [f"__import__('os').system('touch {marker}')", f"(lambda: __import__('os').system('touch {marker}'))()",
              f"open('{marker}', 'w').write('x')", f"exec(\"open('{marker}','w')\")", "eval('1+1')",
              f"\\input{{{marker}}}", "\\include{/etc/passwd}", f"1+__import__('os').system('touch {marker}')",
              "().__class__.__base__.__subclasses__()", "\\immediate\\write18{touch " + marker + "}"]:
        cases.append(("dangerous if evaluated", _box(a), "2", False))
        cases.append(("dangerous if evaluated", f"The answer is {a}", "2", False))
    return cases


GOLDS = ["42", "\\frac{1}{2}", "(1, 2)", "C", "x^2+1", "[0, 1)", "\\{1, 2\\}", "\\text{even}"]
UNIVERSAL = ["x", "\\mathbb{R}", "\\text{all real numbers}", "\\infty", "\\pm\\infty", "ABCDE", "A, B, C, D, E",
             ", ".join(str(k) for k in range(200)), "\\varnothing", "\\emptyset", "\\forall x", "x = x", "a=b", "0/0",
             "\\frac{0}{0}", "\\text{NaN}", "zoo", "\\tilde{\\infty}", "1=1", "\\text{True}", "=", "\\in",
             "\\mathbb{C}", "(-\\infty, \\infty)", "z", "\\cdots", "\\ldots", "*", "?"]


def universal_cases() -> list[Case]:
    """Answers that try to match every gold, each against every gold of a varied set."""
    return [("matches every gold?", _box(a), g, False) for a in UNIVERSAL for g in GOLDS]


def per_answer(grader: Grader, cases: Sequence[Case], timeout_s: float,
               before: Callable[[], None] | None = None) -> dict:
    """Each case graded alone: the worst wall time (and its kind) and the cases graded otherwise than
    expected. ``before``: called untimed before each case (to start each from a warm pool)."""
    worst, worst_kind, wrong = 0.0, "", []
    for kind, response, gold, expected in cases:
        if before is not None:
            before()
        t0 = time.monotonic()
        (g,) = grader([response], [gold], timeout_s)
        wall = time.monotonic() - t0
        if wall > worst:
            worst, worst_kind = wall, kind
        if g.correct != expected:
            wrong.append((kind, response[:60], gold[:20], g.correct))
    return {"cases": len(cases), "worst_s": worst, "worst_kind": worst_kind, "wrong": wrong}


def one_batch(grader: Grader, cases: Sequence[Case], timeout_s: float) -> dict:
    """All cases in one call: its wall time, how many came back correct and how many timed out."""
    t0 = time.monotonic()
    grades = grader([c[1] for c in cases], [c[2] for c in cases], timeout_s)
    return {"size": len(cases), "wall_s": time.monotonic() - t0, "correct": sum(bool(g.correct) for g in grades),
            "timed_out": sum(bool(getattr(g, "timed_out", False)) for g in grades),
            "wrong": [(c[0], c[1][:60], c[2][:20], g.correct) for c, g in zip(cases, grades) if g.correct != c[3]]}


def attack(marker: str, timeout_s: float = 1.0, n_workers: int = 2) -> dict:
    """The suite with the current grader and a fresh pool (``n_workers`` and a warm spare), wherever it is
    called (the test calls it in a Ray task):

    * verdicts: every hostile (wrong) case in batches of 40 (batch deadline ``2 x timeout_s``: what a training
      step does), every universal answer x gold in one batch with longer deadlines (5 s per answer, 60 s
      for the batch) so that they get a full hearing rather than a deadline's "wrong", and the few right
      answers without a batch deadline;
    * one hostile answer: the first case of each kind graded alone, each from a warm pool;
    * 40 hostile completions in one batch, from a warm pool.
    """
    from functools import partial

    from verl_bench.reward import grade_batch
    from verl_bench.verifier import VerifierPool

    cases = hostile_cases(marker)
    with VerifierPool(n_workers=n_workers, spares=1) as pool:
        pool.warmup()
        grader = partial(grade_batch, pool=pool)
        wrong = [c for c in cases if not c[3]]
        verdicts = [one_batch(grader, wrong[i : i + 40], timeout_s) for i in range(0, len(wrong), 40)]
        pool.warmup()  # the few right answers (other digit systems): a full hearing, even on a loaded machine
        verdicts.append(one_batch(partial(grade_batch, pool=pool, batch_timeout_s=math.inf),
                                  [c for c in cases if c[3]], 30.0))
        pool.warmup()
        verdicts.append(one_batch(partial(grade_batch, pool=pool, batch_timeout_s=60.0), universal_cases(), 5.0))
        firsts = list({c[0]: c for c in reversed(cases)}.values())[::-1]
        single = per_answer(grader, firsts, timeout_s, before=pool.warmup)
        pool.warmup()
        batch = one_batch(grader, [c for c in cases if not c[3]][:40], timeout_s)
    return {"pid": os.getpid(), "cases": sum(v["size"] for v in verdicts),
            "wrong": [w for v in verdicts for w in v["wrong"]],
            "decided_by_deadline": sum(v["timed_out"] for v in verdicts), "single": single, "batch": batch}
