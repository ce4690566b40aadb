"""Grading responses and turning grades into rewards.

Public API::

    Grade(answer, boxed, correct, timed_out=False)
    Grader                                   # protocol: (responses, golds, timeout_s) -> list[Grade]
    grade_batch(responses, golds, timeout_s=2.0, *, batch_timeout_s=None, pool=None) -> list[Grade]
    grade_response(response, gold, timeout_s=2.0) -> Grade
    scheme_reward(correct, boxed, scheme) -> float
    reward_to_task_score(reward, scheme) -> float                 # in [-1, 1]

``grade_batch`` is the default ``Grader``: extraction (``verl_bench.answers``), then the checks of
``verl_bench.verifier`` with a deadline for the whole batch (default ``2 x timeout_s``), so a batch of
hostile answers costs seconds, not ``N x timeout_s``. Anything with the ``Grader`` signature can stand in
for it (a test's fake grader, another checker) where the training loop takes a grader.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from verl_bench.answers import extract_answer
from verl_bench.verifier import DEFAULT_TIMEOUT_S, VerifierPool, check_many

__all__ = [
    "BATCH_TIMEOUT_FACTOR",
    "DEFAULT_TIMEOUT_S",
    "SCHEMES",
    "Grade",
    "Grader",
    "grade_batch",
    "grade_response",
    "reward_to_task_score",
    "scheme_reward",
]

SCHEMES = ("binary", "boxed")
BATCH_TIMEOUT_FACTOR = 2.0  # a batch's deadline, in per-answer timeouts


@dataclass(frozen=True)
class Grade:
    answer: str | None  # extracted answer (None: nothing found)
    boxed: bool  # the answer came from a \boxed{}
    correct: bool
    timed_out: bool = False  # math-verify ran out of time (own or the batch's deadline): counted wrong


class Grader(Protocol):
    def __call__(self, responses: Sequence[str], golds: Sequence[str],
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> list[Grade]: ...


def grade_batch(responses: Sequence[str], golds: Sequence[str], timeout_s: float = DEFAULT_TIMEOUT_S, *,
                batch_timeout_s: float | None = None, pool: VerifierPool | None = None) -> list[Grade]:
    """Grade each response against its gold. ``timeout_s``: math-verify's deadline per answer;
    ``batch_timeout_s``: for all of them together (None: ``BATCH_TIMEOUT_FACTOR x timeout_s``; math.inf:
    none). ``sum(g.timed_out for g in grades)`` is the number of answers the deadlines decided."""
    if len(responses) != len(golds):
        raise ValueError(f"{len(responses)} responses but {len(golds)} golds")
    if batch_timeout_s is None:
        batch_timeout_s = BATCH_TIMEOUT_FACTOR * timeout_s
    extracted = [extract_answer(r) for r in responses]
    idx = [i for i, (a, _) in enumerate(extracted) if a is not None]
    outcomes = check_many([(extracted[i][0], golds[i]) for i in idx], timeout_s, batch_timeout_s, pool=pool)
    checked = dict(zip(idx, outcomes))
    return [Grade(a, b, checked[i].correct, checked[i].timed_out) if i in checked else Grade(a, b, False)
            for i, (a, b) in enumerate(extracted)]


def grade_response(response: str, gold: str, timeout_s: float = DEFAULT_TIMEOUT_S, *,
                   pool: VerifierPool | None = None) -> Grade:
    return grade_batch([response], [gold], timeout_s, pool=pool)[0]


def scheme_reward(correct: bool, boxed: bool, scheme: str = "boxed") -> float:
    """binary: 1 correct / 0 otherwise. boxed (the VERL paper's): +1 correct and boxed, +0.5 correct
    but not boxed, -0.5 boxed but wrong, -1 no boxed answer (and not correct)."""
    if scheme == "binary":
        return 1.0 if correct else 0.0
    if scheme == "boxed":
        if correct:
            return 1.0 if boxed else 0.5
        return -0.5 if boxed else -1.0
    raise ValueError(f"unknown reward scheme {scheme!r}; known: {', '.join(SCHEMES)}")


def reward_to_task_score(reward: float, scheme: str = "boxed") -> float:
    """Map a scheme's reward to a task score in [-1, 1]: binary 2r-1, boxed r itself."""
    if scheme == "binary":
        return 2.0 * float(reward) - 1.0
    if scheme == "boxed":
        return float(reward)
    raise ValueError(f"unknown reward scheme {scheme!r}; known: {', '.join(SCHEMES)}")
