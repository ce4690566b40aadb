"""``python -m verl_bench.audit`` (``verl_bench.audit.cli.main``): check every gold answer of the benchmark sets; print a per-set table
and every failure, optionally write the full report as JSON. Exit status 1 when there is a NEW failure (or a
documented one no longer fails), else 0."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from verl_bench.audit.gold import CHECKS, DEFAULT_TIMEOUT_S, GoldReport, run_checks
from verl_bench.audit.known import DATA_NOTES, DOCUMENTED_CONFLICTS
from verl_bench.audit.repeats import DuplicateGroup, check_duplicates
from verl_bench.data import BENCHMARKS

__all__ = ["format_duplicates", "format_table", "main"]


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
        prog="python -m verl_bench.audit",
        description="Check every gold answer of the benchmark sets against the grader and the references.",
    )
    ap.add_argument("--sets", nargs="+", default=list(BENCHMARKS), help="set names (default: the benchmark sets)")
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

