"""The same question stored twice (within a set or across sets, equal up to formatting): its golds must
agree, or at least one of them is wrong -- or the grader fails to see that two forms are equal."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from verl_bench.audit.gold import DEFAULT_TIMEOUT_S
from verl_bench.audit.known import DOCUMENTED_CONFLICTS
from verl_bench.data import BENCHMARKS, Problem, load_problems_with_stats
from verl_bench.verifier import verify_many

__all__ = ["DuplicateGroup", "check_duplicates", "question_key"]

# what two copies of one question may differ in: spacing, math delimiters, braces, brackets,
# punctuation and spacing/formatting commands (digits and words are kept, so different numbers differ)
_QUESTION_NOISE_RE = re.compile(
    r"\\(?:q?quad|mathrm|left|right|text|mathbf|displaystyle)|[\s$\\{}()（）\[\],，.。:：;；_]"
)


def question_key(question: str) -> str:
    return _QUESTION_NOISE_RE.sub("", question)


@dataclass
class DuplicateGroup:
    ids: list[str]  # problem ids carrying the same question text (up to formatting)
    golds: list[str]
    agree: bool  # every gold verifies against the first, both ways
    documented: str | None = None  # DOCUMENTED_CONFLICTS reason, for a group that does not agree


def check_duplicates(
    names: Sequence[str] = BENCHMARKS,
    data_root: str | os.PathLike | None = None,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> list[DuplicateGroup]:
    """Questions that occur more than once (within a set or across sets, equal up to formatting) and
    whether their golds agree. A disagreement means at least one gold is wrong -- or the grader fails
    to see that two forms are equal (which is how "ln2" vs "\\ln 2" showed up)."""
    by_key: dict[str, list[Problem]] = {}
    for name in names:
        for p in load_problems_with_stats(name, data_root=data_root)[0]:
            by_key.setdefault(question_key(p.question), []).append(p)
    groups = []
    for ps in by_key.values():
        if len(ps) < 2:
            continue
        first = ps[0].gold
        pairs = [(p.gold, first) for p in ps[1:]] + [(first, p.gold) for p in ps[1:]]
        agree = all(verify_many(pairs, timeout_s))
        ids = [p.id for p in ps]
        groups.append(
            DuplicateGroup(
                ids=ids,
                golds=[p.gold for p in ps],
                agree=agree,
                documented=None if agree else DOCUMENTED_CONFLICTS.get(frozenset(ids)),
            )
        )
    return groups
