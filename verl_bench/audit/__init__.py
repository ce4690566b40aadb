"""The gold audit: does every gold answer of a benchmark score as it should?

A benchmark number is only as good as its gold answers and the grader that compares against them. For
every record of a set :func:`check_gold` runs these checks (names as in :data:`CHECKS`):

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
* ``solution``: where a set has a reference with a final answer (:func:`reference_of`: the registry's
  ``solution_key``), that reference,
  scored like a model response, verifies against the gold. For gsm8k and minerva_math the gold is itself
  taken from that text (``derived``), so there it only confirms extraction and normalisation agree. For
  gaokao2024_mix the reference is the ``answer`` text, checked against the option that the gold letter
  (``choice_answer``) names in the question.

Records that ``verl_bench.data`` skips (no usable gold) are counted with their reason. Failures that
are data problems or known grader limits (not bugs in our code) are listed with their reason in
:data:`DOCUMENTED_EXCEPTIONS` (``known.py``, the one list; the tests read it); the report marks every
other failure NEW. :func:`check_duplicates` finds questions stored twice and whether their golds agree.

Modules, along the data flow: ``forms`` (model responses, stored answers, probes, options), ``grader``
(the grader's pieces run in this process), ``references``, ``gold`` (the per-record checks and report),
``repeats`` (questions stored twice), ``known`` (documented failures), ``cli`` (table, JSON, exit status).

Command line::

    python -m verl_bench.audit [--sets gsm8k math500 ...] [--out FILE] [--data-root DIR]

prints a per-set table and every failure, and writes the full report as JSON. Exit status 1 when there
is a NEW failure (or a documented one no longer fails), else 0.

The ``parse`` and ``probe`` checks run math-verify in this process, with the grader's worker set-up
and each gold parsed once (signal-based timeouts in the main thread): gold answers and number probes are
trusted input, unlike model output, which only ever goes to the worker pool of ``verl_bench.reward``.
The ``response``, ``raw`` and ``solution`` checks go through :func:`verl_bench.reward.verify` itself.
"""

from verl_bench.audit.cli import format_duplicates, format_table, main
from verl_bench.audit.forms import choice_options, model_response, probe_answers, raw_answer, stored_gold
from verl_bench.audit.gold import (
    CHECKS,
    DEFAULT_TIMEOUT_S,
    SELF_CHECKS,
    Failure,
    GoldReport,
    check_gold,
    run_checks,
)
from verl_bench.audit.known import DATA_NOTES, DOCUMENTED_CONFLICTS, DOCUMENTED_EXCEPTIONS
from verl_bench.audit.references import Reference, check_reference, reference_of
from verl_bench.audit.repeats import DuplicateGroup, check_duplicates, question_key

__all__ = [
    "CHECKS",
    "DATA_NOTES",
    "DEFAULT_TIMEOUT_S",
    "DOCUMENTED_CONFLICTS",
    "DOCUMENTED_EXCEPTIONS",
    "SELF_CHECKS",
    "DuplicateGroup",
    "Failure",
    "GoldReport",
    "Reference",
    "check_duplicates",
    "check_gold",
    "check_reference",
    "choice_options",
    "format_duplicates",
    "format_table",
    "main",
    "model_response",
    "probe_answers",
    "question_key",
    "raw_answer",
    "reference_of",
    "run_checks",
    "stored_gold",
]
