"""Reference answers: where a set has a worked solution with a final answer (the registry's
``solution_key``) or, for a multiple-choice set, the text of the right option, does it agree with the gold?"""

from __future__ import annotations

import re
from dataclasses import dataclass

from verl_bench.answers import extract_answer, extract_boxed
from verl_bench.audit.forms import choice_options, same_text
from verl_bench.data import DatasetSpec, Problem
from verl_bench.verifier import verify

__all__ = ["Reference", "check_reference", "reference_of"]


@dataclass(frozen=True)
class Reference:
    """Where a set's reference final answer comes from.

    field: record field with the reference text. kind: "response" = a worked solution, scored like a
    model response (applicable when it states a final answer the way a model is asked to: a
    ``\\boxed{}``, or GSM8K's ``#### N``); "choice" = the field is the content of the correct option
    of a multiple-choice question (possibly prefixed "C. "), checked against the option the gold letter
    names. derived: the gold is taken from this same text.
    """

    field: str
    kind: str
    derived: bool = False
    note: str = ""


def reference_of(spec: DatasetSpec) -> Reference | None:
    """The set's reference, from its registry row; None where there is none (olympiadbench's solutions
    are prose without \\boxed{}; aime25, amc23/24 and gaokao2023en/2024_I/_II store the answer only)."""
    if spec.answer_form == "choice":
        note = f"'{spec.answer_key}' text vs the option named by the gold letter 'choice_answer'"
        return Reference(spec.answer_key, "choice", note=note)
    if spec.solution_key is None:
        return None
    derived = spec.solution_key == spec.answer_key
    note = "rationale ending '#### N' (unboxed)" if spec.answer_form == "####" else "last \\boxed{} of the solution"
    return Reference(spec.solution_key, "response", derived=derived, note=note)


def check_reference(ref: Reference, rec: dict, p: Problem, timeout_s: float) -> tuple[str, str | None] | None:
    """(reference answer, None if it agrees with the gold else the reason), or None if not applicable."""
    text = rec.get(ref.field)
    if isinstance(text, list):
        text = "\n\n".join(str(t) for t in text)
    if not isinstance(text, str) or not text.strip():
        return None
    if ref.kind == "response":
        if extract_boxed(text) is None and "####" not in text:
            return None  # no final-answer marker: nothing a grader would pick up reliably
        ans, _ = extract_answer(text)
        if ans is None:
            return None
        ok = verify(ans, p.gold, timeout_s)
        return ans, None if ok else "the reference's final answer does not verify against the gold"
    if ref.kind == "choice":
        return _check_choice(rec, text, p, timeout_s)
    raise ValueError(f"unknown reference kind {ref.kind!r}")


def _check_choice(rec: dict, text: str, p: Problem, timeout_s: float) -> tuple[str, str | None] | None:
    letter = rec.get("choice_answer")
    opts = choice_options(p.question)
    if not isinstance(letter, str) or letter.strip() not in ("A", "B", "C", "D") or opts is None:
        return None
    letter = letter.strip()
    content = text.strip()
    m = re.match(r"^([A-D])\s*[.．、:：]\s*", content)
    if m:
        if m.group(1) != letter:
            return content, f"'answer' names option {m.group(1)}, choice_answer is {letter}"
        content = content[m.end() :]
    target = opts[letter]
    if same_text(content, target) or verify(content, target, timeout_s):
        return text.strip(), None
    others = [L for L, t in opts.items() if L != letter and same_text(content, t)]
    hint = f" (it is option {others[0]}'s text)" if others else ""
    return text.strip(), f"'answer' text is not option {letter} ({target!r}){hint}"
