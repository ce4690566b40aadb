"""The gold checks of one set, record by record (see :mod:`verl_bench.audit` for what each checks)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from verl_bench.answers import extract_answer, fast_check
from verl_bench.audit.forms import model_response, probe_answers, raw_answer, stored_gold
from verl_bench.audit.grader import mv_equal, mv_parse
from verl_bench.audit.known import DOCUMENTED_EXCEPTIONS
from verl_bench.audit.references import check_reference, reference_of
from verl_bench.data import (
    BENCHMARKS,
    DATASETS,
    Problem,
    iter_records,
    load_problems_with_stats,
    resolve_data_root,
)
from verl_bench.verifier import verify_many

__all__ = ["CHECKS", "DEFAULT_TIMEOUT_S", "SELF_CHECKS", "Failure", "GoldReport", "check_gold", "run_checks"]

CHECKS = ("response", "raw", "parse", "probe", "solution")
SELF_CHECKS = ("response", "raw", "parse")  # a record passing all three counts as "self ok"

# Generous per-answer deadline: a gold check should fail on the answer, not on a busy machine.
DEFAULT_TIMEOUT_S = 10.0


def _parse_problem(parsed: list) -> str | None:
    """None if math-verify parsed the gold to a math object equal to itself; else the reason."""
    if not parsed:
        return "math-verify extracts nothing"
    if isinstance(parsed[0], str):
        return f"math-verify cannot parse it (string fallback {parsed[0]!r})"
    if not mv_equal(parsed, parsed):
        return f"math-verify finds the parsed gold ({parsed[0]}) unequal to itself"
    return None


def _probe_hits(gold: str, parsed: list) -> list[str]:
    """The probes that score as correct: the grader's fast path first, then math-verify on the gold
    parsed once (what the worker would compute, without re-parsing the gold for every probe)."""
    hits = []
    for probe in probe_answers(gold):
        ok = fast_check(probe, gold)
        if ok is None:
            ok = mv_equal(parsed, mv_parse(probe))
        if ok:
            hits.append(probe)
    return hits


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
    raw = dict(iter_records(path))
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
                raw_gold=stored_gold(spec, raw[n]),
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
        todo = [(p, raw_answer(spec, raw[p.meta[where_key]])) for p in problems]
        for p, a, ext, _, ok in graded([(p, a) for p, a in todo if a is not None]):
            record("raw", p, a, None if ok else f"the stored answer (extracted as {ext!r}) is scored wrong")

    if "parse" in checks or "probe" in checks:
        parsed = {p.id: mv_parse(p.gold) for p in problems}
        for p in problems:
            if "parse" in checks:
                record("parse", p, p.gold, _parse_problem(parsed[p.id]))
            if "probe" in checks:
                bad = _probe_hits(p.gold, parsed[p.id])
                record("probe", p, ", ".join(bad) or None, f"wrong answer(s) {bad} scored as correct" if bad else None)

    ref = reference_of(spec)
    if "solution" in checks and ref is not None:
        report.solution_source = f"{ref.field}: {ref.note}"
        report.solution_derived = ref.derived
        for p in problems:
            res = check_reference(ref, raw[p.meta[where_key]], p, timeout_s)
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
    names: Sequence[str] = BENCHMARKS,
    data_root: str | os.PathLike | None = None,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> list[GoldReport]:
    return [check_gold(n, data_root, timeout_s=timeout_s) for n in names]
