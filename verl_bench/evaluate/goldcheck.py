"""Checks against the truth: does every gold answer of a benchmark score as it should?

A benchmark number is only as good as its gold answers and the grader that compares against them. For
every record of a set this module runs these checks (names as in :data:`CHECKS`):

* ``response`` (the check that matters): the normalised gold, written by a "model" as
  ``... the final answer is $\\boxed{GOLD}$.``, goes through the path a real response takes
  (:func:`verl_bench.reward.extract_answer`, then :func:`verl_bench.reward.verify`). The extracted
  answer must be the gold unchanged and must verify. A failure means a model that answers right, in the
  gold's own form, is scored wrong.
* ``raw``: the same with the answer as the *file* stores it (before ``verl_bench.data``'s
  normalisation; only unescaped ``$`` delimiters removed): ``27.0`` (AMC 23), ``336^\\circ`` (AIME 25),
  ``\\$18.90`` (MATH), ``1,000`` after ``####`` (GSM8K). Catches a normalisation that changes the meaning.
* ``parse``: math-verify on its own (the fast string/number path bypassed) parses the boxed gold into a
  math object -- not its plain-string fallback -- and finds it equal to itself. A gold failing this is
  matched only by string equality, so a model writing a *different but equivalent* form
  (``0.5`` for ``\\frac{1}{2}``) is scored wrong.
* ``probe``: wrong-answer probes. A bare number taken from a gold that is not itself that number (and
  the numbers 0 and 1) must score as WRONG. This catches golds that math-verify parses to a fragment
  (``\\{x|-2\\leq x < 1\\}`` read as ``1``), which would make wrong answers count as right. A number
  followed only by explicit LaTeX unit markup or a base subscript (``15\\mbox{ cm}^2``, ``52_8``,
  ``30^\\circ``) is meant to match that number and is not probed.
* ``solution``: where a set has a reference with a final answer (:data:`REFERENCES`), that reference,
  scored like a model response, verifies against the gold. For gsm8k and minerva_math the gold is itself
  taken from that text (``derived``), so there it only confirms extraction and normalisation agree. For
  gaokao2024_mix the reference is the ``answer`` text, checked against the option that the gold letter
  (``choice_answer``) names in the question.

Records that ``verl_bench.data`` skips (no usable gold) are counted with their reason. Failures that
are data problems or known grader limits (not bugs in our code) are listed with their reason in
:data:`DOCUMENTED_EXCEPTIONS`; the report marks every other failure NEW.

Command line::

    python -m verl_bench.evaluate.goldcheck [--sets gsm8k math500 ...] [--out FILE] [--data-root DIR]

prints a per-set table and every failure, and writes the full report as JSON. Exit status 1 when there
is a NEW failure (or a documented one no longer fails), else 0.

The ``parse`` and ``probe`` checks run math-verify in this process, with the grader's worker set-up
and each gold parsed once (signal-based timeouts in the main thread): gold answers and number probes are
trusted input, unlike model output, which only ever goes to the worker pool of ``verl_bench.reward``.
The ``response``, ``raw`` and ``solution`` checks go through :func:`verl_bench.reward.verify` itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from verl_bench.data import DATASETS, Problem, _iter_records, load_problems_with_stats, resolve_data_root
from verl_bench.reward import (
    _E_NOTATION_RE,
    _as_number,
    _fast_check,
    extract_answer,
    extract_boxed,
    normalize_answer,
    verify,
    verify_many,
)

__all__ = [
    "CHECKS",
    "DATA_NOTES",
    "DOCUMENTED_CONFLICTS",
    "DOCUMENTED_EXCEPTIONS",
    "EVAL_SETS",
    "REFERENCES",
    "DuplicateGroup",
    "Failure",
    "GoldReport",
    "check_duplicates",
    "check_gold",
    "choice_options",
    "format_duplicates",
    "format_table",
    "main",
    "model_response",
    "probe_answers",
    "question_key",
    "raw_answer",
    "run_checks",
]

# The evaluation sets (train sets can be checked too, by name).
EVAL_SETS = (
    "gsm8k",
    "math500",
    "minerva_math",
    "olympiadbench",
    "aime24",
    "aime25",
    "amc23",
    "amc24",
    "gaokao2023en",
    "gaokao2024_I",
    "gaokao2024_II",
    "gaokao2024_mix",
)
CHECKS = ("response", "raw", "parse", "probe", "solution")
SELF_CHECKS = ("response", "raw", "parse")  # a record passing all three counts as "self ok"

# Generous per-answer deadline: a gold check should fail on the answer, not on a busy machine.
DEFAULT_TIMEOUT_S = 10.0
MAX_PROBES = 8  # distinct numbers probed per gold (the first ones, in order of appearance)


def model_response(answer: str) -> str:
    """A minimal model response that ends in ``answer`` boxed, the way instruction-following models
    write it (``$\\boxed{...}$`` in a sentence after some reasoning)."""
    return (
        "Let me work through the problem step by step.\n"
        "After simplifying, we obtain the result.\n\n"
        "Therefore, the final answer is $\\boxed{" + answer + "}$."
    )


# --------------------------------------------------------------------------------------------------
# Raw answers, probes, multiple-choice options
# --------------------------------------------------------------------------------------------------

_UNESCAPED_DOLLAR_RE = re.compile(r"(?<!\\)\$")


def _strip_delims(s: str) -> str:
    return _UNESCAPED_DOLLAR_RE.sub("", s).strip()


def raw_answer(name: str, rec: dict) -> str | None:
    """The gold answer as the file stores it, as a model might write it inside ``\\boxed{}``: only
    unescaped ``$`` math delimiters are removed (nobody writes those inside a box); lists are joined
    with ", ", numbers printed as stored (``27.0``)."""
    if name in ("gsm8k", "gsm8k_train"):
        ans = rec.get("answer")
        if not isinstance(ans, str) or "####" not in ans:
            return None
        return ans.split("####")[-1].strip() or None
    if name == "minerva_math":
        return extract_boxed(rec.get("solution") or "")
    if name == "gaokao2024_mix" and isinstance(rec.get("choice_answer"), str) and rec["choice_answer"].strip():
        return rec["choice_answer"].strip()
    value = rec.get("final_answer" if name == "olympiadbench" else "answer")
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (list, tuple)):
        parts = [_strip_delims(str(v)) for v in value if v is not None]
        return ", ".join(p for p in parts if p) or None
    return _strip_delims(str(value)) or None


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
    value = _as_number(normalize_answer(gold))
    seen: list[str] = []
    for n in [*dict.fromkeys(_NUMBER_RE.findall(gold)).keys()][:MAX_PROBES] + ["0", "1"]:
        if n in seen:
            continue
        if value is not None and value[0] == _as_number(n)[0]:
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


def _same_text(a: str, b: str) -> bool:
    """Option texts compared without spacing, \\quad, quotes and full stops."""
    return _SQUASH_RE.sub("", a) == _SQUASH_RE.sub("", b)


# --------------------------------------------------------------------------------------------------
# Reference solutions
# --------------------------------------------------------------------------------------------------


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


REFERENCES: dict[str, Reference] = {
    "gsm8k": Reference("answer", "response", derived=True, note="rationale ending '#### N' (unboxed)"),
    "gsm8k_train": Reference("answer", "response", derived=True, note="rationale ending '#### N' (unboxed)"),
    "math500": Reference("solution", "response", note="last \\boxed{} of the solution"),
    "minerva_math": Reference("solution", "response", derived=True, note="last \\boxed{} of the solution"),
    "aime24": Reference("solution", "response", note="last \\boxed{} of the AoPS solution"),
    "aime_train": Reference("solution", "response", note="last \\boxed{} of the solution"),
    "gaokao2024_mix": Reference(
        "answer", "choice", note="'answer' text vs the option named by the gold letter 'choice_answer'"
    ),
}
# No reference with a final answer: olympiadbench (its solutions are prose without \boxed{}; the gold is
# final_answer), aime25, amc23, amc24, gaokao2023en, gaokao2024_I/_II (answer only), math_train.


def _reference_check(ref: Reference, rec: dict, p: Problem, timeout_s: float) -> tuple[str, str | None] | None:
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
        if _same_text(content, target) or verify(content, target, timeout_s):
            return text.strip(), None
        others = [L for L, t in opts.items() if L != letter and _same_text(content, t)]
        hint = f" (it is option {others[0]}'s text)" if others else ""
        return text.strip(), f"'answer' text is not option {letter} ({target!r}){hint}"
    raise ValueError(f"unknown reference kind {ref.kind!r}")


# --------------------------------------------------------------------------------------------------
# math-verify in this process (parse and probe checks)
# --------------------------------------------------------------------------------------------------

_MV: list | None = None


def _mv_timeout() -> int | None:
    # math-verify's own timeouts use signal.alarm: main thread only
    return 5 if threading.current_thread() is threading.main_thread() else None


def _mv_parse(answer: str) -> list:
    """math-verify's parse of ``\\boxed{answer}``, set up as in the grader's worker
    (``verl_bench.reward._mv_equal``); [] when it raises."""
    global _MV
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    if _MV is None:
        logging.getLogger("math_verify").setLevel(logging.CRITICAL)
        _MV = [LatexExtractionConfig(), ExprExtractionConfig()]
    a = _E_NOTATION_RE.sub(r"\1\\times10^{\2}", answer.strip())
    try:
        return parse("\\boxed{" + a + "}", extraction_config=_MV, parsing_timeout=_mv_timeout())
    except Exception:  # noqa: BLE001 - the worker counts any error as "wrong"
        return []


def _mv_equal(gold_parsed: list, pred_parsed: list) -> bool:
    from math_verify import verify as mv_verify

    if not gold_parsed or not pred_parsed:
        return False
    try:
        return bool(mv_verify(gold_parsed, pred_parsed, timeout_seconds=_mv_timeout()))
    except Exception:  # noqa: BLE001
        return False


def _parse_problem(parsed: list) -> str | None:
    """None if math-verify parsed the gold to a math object equal to itself; else the reason."""
    if not parsed:
        return "math-verify extracts nothing"
    if isinstance(parsed[0], str):
        return f"math-verify cannot parse it (string fallback {parsed[0]!r})"
    if not _mv_equal(parsed, parsed):
        return f"math-verify finds the parsed gold ({parsed[0]}) unequal to itself"
    return None


def _probe_hits(gold: str, parsed: list) -> list[str]:
    """The probes that score as correct: the grader's fast path first, then math-verify on the gold
    parsed once (what the worker would compute, without re-parsing the gold for every probe)."""
    hits = []
    for probe in probe_answers(gold):
        ok = _fast_check(probe, gold)
        if ok is None:
            ok = _mv_equal(parsed, _mv_parse(probe))
        if ok:
            hits.append(probe)
    return hits


# --------------------------------------------------------------------------------------------------
# Documented exceptions
# --------------------------------------------------------------------------------------------------

# (set, problem id, check) -> why this record fails that check and why it is left so. Problem ids are
# "<set>/<0-based record index>"; file line = index + 1. Only data problems and limits of math-verify
# belong here: a bug in our normalisation or grader is fixed instead.
_LITERAL = "written in a form math-verify cannot read"
DOCUMENTED_EXCEPTIONS: dict[tuple[str, str, str], str] = {
    # ---- minerva_math: the gold is the last \boxed{} of the solution
    ("minerva_math", "minerva_math/5", "raw"): "stored as numpy code 'np.arcsin(10/13)'; the gold is "
    "normalised to '\\arcsin (10/13)', so only a model that writes numpy code is scored wrong",
    ("minerva_math", "minerva_math/5", "solution"): "same as raw: the solution boxes 'np.arcsin(10/13)'",
    ("minerva_math", "minerva_math/38", "raw"): "stored as the Python float literal '-1./3', " + _LITERAL
    + "; the gold is normalised to '-1/3'",
    ("minerva_math", "minerva_math/38", "solution"): "same as raw: the solution boxes '-1./3'",
    ("minerva_math", "minerva_math/49", "raw"): "stored as '-3./2', " + _LITERAL + "; gold normalised to '-3/2'",
    ("minerva_math", "minerva_math/49", "solution"): "same as raw: the solution boxes '-3./2'",
    ("minerva_math", "minerva_math/27", "parse"): "math-verify cannot parse the equation with L_{\\odot}, "
    "M_{\\odot}: only the exact string scores",
    ("minerva_math", "minerva_math/269", "parse"): "math-verify cannot parse the list 'E_{1},E_{2}': only the "
    "exact string scores",
    ("minerva_math", "minerva_math/261", "probe"): "math-verify reads '\\hbar \\omega(v+1 / 2)-\\frac{E_{0}^{2} "
    "e^{2}}{2 m \\omega^{2}}' as the number 2: the answer '2' is scored right (math-verify limit)",
    # ---- olympiadbench: gold = final_answer (list joined with ", ")
    ("olympiadbench", "olympiadbench/34", "parse"): "math-verify cannot parse 'm_{\\max }=n^{2}-n-1' (the "
    "subscript \\max): only the exact string scores",
    ("olympiadbench", "olympiadbench/96", "parse"): "data: 't(0,4]' lost its '\\in' (t \\in (0,4]); "
    "unparseable, only the exact string scores",
    ("olympiadbench", "olympiadbench/73", "probe"): "data: the gold is a sentence ('f(x)=a x+b, where b is "
    "an arbitrary integer, ...'); math-verify picks a fragment equal to 0",
    ("olympiadbench", "olympiadbench/91", "probe"): "acceptable: 'f(x)=1' vs '1' (the constant function 1)",
    ("olympiadbench", "olympiadbench/117", "probe"): "math-verify drops 'm' as the unit metre: '6' is scored "
    "right for '6m' (m is the problem's variable)",
    # ---- aime24
    ("aime24", "aime24/15", "solution"): "data: the AoPS solution boxes '\\textbf{(073)}' (answer-choice "
    "style); the gold 073 is right",
    # ---- gaokao2023en
    ("gaokao2023en", "gaokao2023en/83", "parse"): "math-verify reads only 'b >' of 'b > a > c': only the "
    "exact string scores",
    ("gaokao2023en", "gaokao2023en/107", "parse"): "data: stored '$145$solution:' (text pasted after the "
    "answer); a model answering 145 is scored WRONG",
    ("gaokao2023en", "gaokao2023en/0", "probe"): "math-verify reads the set-builder '\\{x|-2\\leq x < 1\\}' "
    "as 1: '1' is scored right, '[-2,1)' wrong (math-verify limit)",
    ("gaokao2023en", "gaokao2023en/22", "probe"): "math-verify reads '\\{x|x=3k,k\\in \\mathbb{Z}\\}' as 3 "
    "(math-verify limit)",
    ("gaokao2023en", "gaokao2023en/81", "probe"): "acceptable: '\\{1\\}' vs '1' (a one-element set)",
    ("gaokao2023en", "gaokao2023en/243", "probe"): "math-verify drops 's' as the unit second: '2' is scored "
    "right for '2s' (s is the problem's variable)",
    ("gaokao2023en", "gaokao2023en/370", "probe"): "acceptable: '5am' vs '5' (a time of day)",
    # ---- gaokao2024
    ("gaokao2024_I", "gaokao2024_I/12", "raw"): "stored as plain text 'ln2' (l*n*2 to math-verify); the "
    "gold is normalised to '\\ln 2', so only a model writing 'ln2' is scored wrong",
    ("gaokao2024_mix", "gaokao2024_mix/42", "parse"): "data: stored '7-\\sqrt{5 \\mathrm{i}}' (the i "
    "slipped inside the root; the answer is 7-\\sqrt{5}i), unparseable: only the exact string scores",
    ("gaokao2024_mix", "gaokao2024_mix/75", "solution"): "data: i(conj(z)+z)=10i is option A (choice_answer "
    "A, right); the 'answer' text '10' is option C's text",
}

# Questions stored more than once with golds that disagree (frozenset of problem ids -> reason).
DOCUMENTED_CONFLICTS: dict[frozenset[str], str] = {
    frozenset({"amc23/37", "gaokao2023en/349"}): "data: 2023 AMC 12B #7 (integers n making the root real): "
    "n=1, n=100 and 101..999 give 901, as amc23 has it; gaokao2023en/349 (line 350) stores 902, wrong",
    frozenset({"gaokao2024_I/13", "gaokao2024_II/13"}): "data: gaokao2024_II records 13 and 14 (ids 12, 13) "
    "carry shifted answers: id 13 is 2024-I's card game (answer 1/2, as gaokao2024_I/13 and "
    "gaokao2024_mix/73 have it) but stores '24;112', the answer of id 12's 4x4 grid question, which in "
    "turn stores '\\frac{-2\\sqrt{2}}{3}' (a question missing from the file)",
}

# Found by reading, not flagged by any check; kept here so the report carries them.
DATA_NOTES: list[str] = [
    ("gaokao2024_II/12 (line 13): the 4x4 grid question has the gold \\frac{-2\\sqrt{2}}{3}; its real "
     "answers are 24 and 112 (see gaokao2024_mix/60). gaokao2024_II/13: gold '24;112', real answer 1/2."),
    ("gaokao2024_mix/60 (line 61): two blanks stored as '24,112', which the grader (like math-verify) reads "
     "as the number 24112: a model answering '24, 112' is scored wrong, '24112' right."),
    ("gaokao2024_mix/76 (line 77): the question text lost the complement (C_A(A \\cap B)); as stored the "
     "right option is A {1,4,9}, the gold D {2,3,5} is the real exam's answer."),
    ("gaokao2024_mix: 7 questions occur twice in the file (ids 18/77, 21/79, 22/80, 23/81, 28/86, 29/87, "
     "33/90), so they weigh double in its accuracy; gaokao2023en holds 7 of the 40 amc23 problems."),
    ("gaokao2024_mix multiple-choice records are graded on the letter (choice_answer): a model that boxes "
     "the option's content instead ('3\\sqrt{2}' for D) is scored wrong."),
]


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


@dataclass
class Failure:
    id: str  # Problem.id: "<set>/<0-based record index>"
    where: str  # "line N" (jsonl) or "record N" (json array), 1-based, in the data file
    check: str  # one of CHECKS
    gold: str  # the normalised gold
    answer: str | None  # the string compared against the gold (extracted / raw / probe / reference)
    raw_gold: Any  # the gold as stored in the file
    reason: str
    documented: str | None = None  # the DOCUMENTED_EXCEPTIONS reason; None for a NEW failure


@dataclass
class GoldReport:
    name: str
    path: str | None  # the data file, relative to the data root
    total_records: int
    loaded: int
    skipped: list[tuple[int, str]]
    ok: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CHECKS, 0))
    applicable: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CHECKS, 0))
    self_ok: int = 0  # records passing response, raw and parse
    solution_source: str | None = None
    solution_derived: bool = False
    failures: list[Failure] = field(default_factory=list)
    stale_exceptions: list[str] = field(default_factory=list)  # documented, but no longer failing
    seconds: float = 0.0

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def failing_ids(self, check: str) -> list[str]:
        return [f.id for f in self.failures if f.check == check]

    @property
    def new_failures(self) -> list[Failure]:
        return [f for f in self.failures if f.documented is None]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["n_skipped"] = self.n_skipped
        d["skipped"] = [{"where": n, "reason": r} for n, r in self.skipped]
        d["n_new_failures"] = len(self.new_failures)
        return d


def _raw_gold(name: str, rec: dict) -> Any:
    if name in ("gsm8k", "gsm8k_train"):
        ans = rec.get("answer")
        return ans.split("####")[-1].strip() if isinstance(ans, str) and "####" in ans else ans
    if name == "minerva_math":
        return extract_boxed(rec.get("solution") or "")
    if name == "olympiadbench":
        return rec.get("final_answer")
    if name == "gaokao2024_mix":
        return {"choice_answer": rec.get("choice_answer"), "answer": rec.get("answer")}
    return rec.get("answer")


def check_gold(
    name: str,
    data_root: str | os.PathLike | None = None,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    checks: Sequence[str] = CHECKS,
) -> GoldReport:
    """Run ``checks`` (default all of :data:`CHECKS`) on every record of set ``name``."""
    t0 = time.monotonic()
    unknown = set(checks) - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown checks {sorted(unknown)}; known: {', '.join(CHECKS)}")
    spec = DATASETS.get(name)
    if spec is None or spec.path is None:
        raise ValueError(f"{name!r} is not a file-backed set; known: {', '.join(DATASETS)}")
    problems, stats = load_problems_with_stats(name, data_root=data_root)
    path = resolve_data_root(data_root) / spec.path
    where_key = "line" if path.suffix == ".jsonl" else "record"
    raw = dict(_iter_records(path))
    report = GoldReport(
        name=name, path=spec.path, total_records=stats.total_records, loaded=stats.loaded, skipped=list(stats.skipped)
    )
    failed: dict[str, set[str]] = {c: set() for c in CHECKS}

    def fail(p: Problem, check: str, answer: str | None, reason: str) -> None:
        n = p.meta[where_key]
        failed[check].add(p.id)
        report.failures.append(
            Failure(
                id=p.id,
                where=f"{where_key} {n}",
                check=check,
                gold=p.gold,
                answer=answer,
                raw_gold=_raw_gold(name, raw[n]),
                reason=reason,
                documented=DOCUMENTED_EXCEPTIONS.get((name, p.id, check)),
            )
        )

    def graded(answers: list[tuple[Problem, str]]) -> list[tuple[Problem, str, str | None, bool, bool]]:
        """(problem, answer, extracted, boxed, correct) for ``answer`` boxed in a model response."""
        ext = [extract_answer(model_response(a)) for _, a in answers]
        oks = verify_many([(e if e is not None else "", p.gold) for (p, _), (e, _) in zip(answers, ext)], timeout_s)
        return [(p, a, e, b, ok) for (p, a), (e, b), ok in zip(answers, ext, oks)]

    def record(check: str, p: Problem, answer: str | None, reason: str | None) -> None:
        report.applicable[check] += 1
        if reason is None:
            report.ok[check] += 1
        else:
            fail(p, check, answer, reason)

    if "response" in checks:
        for p, a, ext, boxed, ok in graded([(p, p.gold) for p in problems]):
            if ext != a or not boxed:
                record("response", p, ext, "extract_answer does not give back the boxed gold unchanged")
            else:
                record("response", p, ext, None if ok else "the boxed gold does not verify against itself")

    if "raw" in checks:
        todo = [(p, raw_answer(name, raw[p.meta[where_key]])) for p in problems]
        for p, a, ext, _, ok in graded([(p, a) for p, a in todo if a is not None]):
            record("raw", p, a, None if ok else f"the stored answer (extracted as {ext!r}) is scored wrong")

    if "parse" in checks or "probe" in checks:
        parsed = {p.id: _mv_parse(p.gold) for p in problems}
        for p in problems:
            if "parse" in checks:
                record("parse", p, p.gold, _parse_problem(parsed[p.id]))
            if "probe" in checks:
                bad = _probe_hits(p.gold, parsed[p.id])
                record("probe", p, ", ".join(bad) or None, f"wrong answer(s) {bad} scored as correct" if bad else None)

    ref = REFERENCES.get(name)
    if "solution" in checks and ref is not None:
        report.solution_source = f"{ref.field}: {ref.note}"
        report.solution_derived = ref.derived
        for p in problems:
            res = _reference_check(ref, raw[p.meta[where_key]], p, timeout_s)
            if res is not None:
                record("solution", p, res[0], res[1])

    if set(SELF_CHECKS) <= set(checks):
        bad_self = set().union(*(failed[c] for c in SELF_CHECKS))
        report.self_ok = sum(p.id not in bad_self for p in problems)
    report.failures.sort(key=lambda f: (CHECKS.index(f.check), int(f.id.rsplit("/", 1)[1])))
    failing = {(f.id, f.check) for f in report.failures}
    report.stale_exceptions = sorted(
        f"{pid} [{c}]"
        for (s, pid, c) in DOCUMENTED_EXCEPTIONS
        if s == name and c in checks and (pid, c) not in failing
    )
    report.seconds = round(time.monotonic() - t0, 2)
    return report


def run_checks(
    names: Sequence[str] = EVAL_SETS,
    data_root: str | os.PathLike | None = None,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> list[GoldReport]:
    return [check_gold(n, data_root, timeout_s=timeout_s) for n in names]


# --------------------------------------------------------------------------------------------------
# The same question twice: the golds must agree
# --------------------------------------------------------------------------------------------------

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
    names: Sequence[str] = EVAL_SETS,
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


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------


def _short(s: Any, n: int = 70) -> str:
    s = s if isinstance(s, str) else json.dumps(s, ensure_ascii=False)
    s = s.replace("\n", " ")
    return s if len(s) <= n else s[: n - 3] + "..."


def format_table(reports: Sequence[GoldReport]) -> str:
    """Per-set table, then every failure (id, file position, strings, documented reason or NEW)."""
    head = ["set", "records", "skipped", "loaded", "self ok", "response", "raw", "parse", "probe", "solution", "s"]
    rows = []
    for r in reports:
        cell = {c: f"{r.ok[c]}/{r.applicable[c]}" for c in CHECKS}
        sol = cell["solution"] + (" (derived)" if r.solution_derived else "") if r.solution_source else "n/a"
        rows.append(
            [r.name, str(r.total_records), str(r.n_skipped), str(r.loaded), f"{r.self_ok}/{r.loaded}",
             cell["response"], cell["raw"], cell["parse"], cell["probe"], sol, f"{r.seconds:.1f}"]
        )  # fmt: skip
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    for r in reports:
        if r.skipped:
            where = "line" if (r.path or "").endswith(".jsonl") else "record"
            lines.append(f"\n{r.name}: skipped (no usable gold): " + ", ".join(f"{where} {n}" for n, _ in r.skipped))
    lines.append("\nfailures:")
    for r in reports:
        for f in r.failures:
            tag = f"documented: {f.documented}" if f.documented else f"NEW: {f.reason}"
            lines.append(
                f"  {f.id} ({f.where}) [{f.check}] gold={_short(f.gold)} answer={_short(f.answer)} "
                f"stored={_short(f.raw_gold)}\n      {tag}"
            )
        for s in r.stale_exceptions:
            lines.append(f"  {s}: documented exception no longer fails (remove it from DOCUMENTED_EXCEPTIONS)")
    return "\n".join(lines)


def format_duplicates(groups: Sequence[DuplicateGroup]) -> str:
    n_agree = sum(g.agree for g in groups)
    lines = [f"\nrepeated questions: {len(groups)} groups, {n_agree} with agreeing golds"]
    for g in groups:
        state = "agree" if g.agree else (f"CONFLICT (documented: {g.documented})" if g.documented else "CONFLICT NEW")
        lines.append(f"  {' = '.join(g.ids)}: golds {' | '.join(_short(x, 30) for x in g.golds)} -- {state}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m verl_bench.evaluate.goldcheck",
        description="Check every gold answer of the benchmark sets against the grader and the references.",
    )
    ap.add_argument("--sets", nargs="+", default=list(EVAL_SETS), help="set names (default: the eval sets)")
    ap.add_argument("--out", type=Path, default=None, help="write the full report as JSON here")
    ap.add_argument("--data-root", default=None, help="benchmark data folder (default: $VERL_BENCH_DATA)")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="per-answer deadline, seconds")
    args = ap.parse_args(argv)
    reports = run_checks(args.sets, args.data_root, timeout_s=args.timeout)
    print(format_table(reports))
    dups = check_duplicates(args.sets, args.data_root, timeout_s=args.timeout)
    print(format_duplicates(dups))
    print("\ndata notes (found by reading):\n" + "\n".join(f"  - {n}" for n in DATA_NOTES))
    n_new = sum(len(r.new_failures) for r in reports) + sum(not g.agree and not g.documented for g in dups)
    conflicting = {frozenset(g.ids) for g in dups if not g.agree}
    stale_conflicts = [
        sorted(k) for k in DOCUMENTED_CONFLICTS if k <= {i for g in dups for i in g.ids} and k not in conflicting
    ]
    n_stale = sum(len(r.stale_exceptions) for r in reports) + len(stale_conflicts)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "checks": {
                "response": "gold boxed in a model response -> extract_answer -> verify: correct",
                "raw": "the answer as the file stores it, boxed in a model response: correct",
                "parse": "math-verify alone parses the gold to a math object equal to itself",
                "probe": "numbers taken from a non-numeric gold, and 0 and 1, score as wrong",
                "solution": "the reference's final answer (scored like a model response) verifies",
            },
            "timeout_s": args.timeout,
            "n_new_failures": n_new,
            "n_stale_exceptions": n_stale,
            "sets": [r.to_dict() for r in reports],
            "duplicates": [asdict(g) for g in dups],
            "stale_conflicts": stale_conflicts,
            "data_notes": DATA_NOTES,
        }
        args.out.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"\nwrote {args.out}")
    return 1 if n_new or n_stale else 0


if __name__ == "__main__":
    sys.exit(main())
