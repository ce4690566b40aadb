"""How answers are written: a model's response around an answer, the gold as the file stores it, wrong
numbers to probe a gold with, and the options of a multiple-choice question. Pure string functions."""

from __future__ import annotations

import re
from typing import Any

from verl_bench.answers import as_number, normalize_answer
from verl_bench.data import DatasetSpec

__all__ = ["MAX_PROBES", "choice_options", "model_response", "probe_answers", "raw_answer", "same_text",
           "stored_gold"]  # fmt: skip

MAX_PROBES = 8  # distinct numbers probed per gold (the first ones, in order of appearance)


def model_response(answer: str) -> str:
    """A minimal model response that ends in ``answer`` boxed, the way instruction-following models
    write it (``$\\boxed{...}$`` in a sentence after some reasoning)."""
    return (
        "Let me work through the problem step by step.\n"
        "After simplifying, we obtain the result.\n\n"
        "Therefore, the final answer is $\\boxed{" + answer + "}$."
    )


_UNESCAPED_DOLLAR_RE = re.compile(r"(?<!\\)\$")


def _strip_delims(s: str) -> str:
    return _UNESCAPED_DOLLAR_RE.sub("", s).strip()


def raw_answer(spec: DatasetSpec, rec: dict) -> str | None:
    """The gold answer as the file stores it (:meth:`DatasetSpec.stored_answer`), as a model might write
    it inside ``\\boxed{}``: only unescaped ``$`` math delimiters are removed (nobody writes those inside
    a box); lists are joined with ", ", numbers printed as stored (``27.0``). An answer taken out of a
    text (after "####", a ``\boxed{}``) is given as it stands there."""
    value = spec.stored_answer(rec)
    if spec.answer_form in ("####", "boxed"):
        return value or None
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (list, tuple)):
        parts = [_strip_delims(str(v)) for v in value if v is not None]
        return ", ".join(p for p in parts if p) or None
    return _strip_delims(str(value)) or None


def stored_gold(spec: DatasetSpec, rec: dict) -> Any:
    """The gold as the record stores it, for a report: both fields of a multiple-choice record."""
    if spec.answer_form == "choice":
        return {"choice_answer": rec.get("choice_answer"), spec.answer_key: rec.get(spec.answer_key)}
    return spec.stored_answer(rec)


_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")
# what may follow a number that is *meant* to be dropped when grading: a base subscript (52_8, 4210_{5}),
# explicit LaTeX unit text (5.4 \text{ cents}, 15\mbox{ cm}^2), degrees, percent
_INTENDED_SUFFIX_RE = (
    r"(?:_\{?\d+\}?"
    r"|\s*\\(?:text|mbox|mathrm|textrm)\s*\{[^{}]*\}(?:\^\{?\d\}?)?"
    r"|\s*\^\s*\{?\s*\\circ\s*\}?"
    r"|\s*\\?%)+"
)


def probe_answers(gold: str) -> list[str]:
    """Wrong answers to try against ``gold``: the numbers written in it, then "0" and "1" -- leaving out
    any that equals the gold's own value, and a number the gold is only that number plus unit markup or
    a base subscript (those are meant to match)."""
    value = as_number(normalize_answer(gold))
    seen: list[str] = []
    for n in [*dict.fromkeys(_NUMBER_RE.findall(gold)).keys()][:MAX_PROBES] + ["0", "1"]:
        if n in seen:
            continue
        if value is not None and value[0] == as_number(n)[0]:
            continue
        if re.fullmatch(r"\s*" + re.escape(n) + _INTENDED_SUFFIX_RE + r"\s*", gold):
            continue
        seen.append(n)
    return seen


_OPTION_MARK_RE = re.compile(r"(?:(?<=[\s(（)）])|^)([A-D])(?:\s*[.．、:：]|\s)")


def choice_options(question: str) -> dict[str, str] | None:
    """The texts of options A-D of a multiple-choice question (``... A. x B. y C. z D. w``): the last
    "D" marker, the last "C" before it, and so on; None unless all four are found in order."""
    marks = list(_OPTION_MARK_RE.finditer(question))
    pos: dict[str, tuple[int, int]] = {}
    end = len(question)
    for letter in "DCBA":
        cand = [m for m in marks if m.group(1) == letter and m.end() <= end]
        if not cand:
            return None
        pos[letter] = (cand[-1].start(), cand[-1].end())
        end = cand[-1].start()
    letters = "ABCD"
    return {
        L: question[pos[L][1] : (pos[letters[i + 1]][0] if i < 3 else len(question))].strip()
        for i, L in enumerate(letters)
    }


_SQUASH_RE = re.compile(r"\s+|\\q?quad|\\[,;:! ]|[“”\"'。.]")


def same_text(a: str, b: str) -> bool:
    """Option texts compared without spacing, \\quad, quotes and full stops."""
    return _SQUASH_RE.sub("", a) == _SQUASH_RE.sub("", b)
