"""math-verify as the grader's worker sets it up (verl_bench.verifier), run in this process, so that each
gold is parsed once.

Gold answers and number probes are trusted input, unlike model output (which only ever goes to the
grader's worker pool), so math-verify runs here directly, with its own signal-based timeouts when in
the main thread.
"""

from __future__ import annotations

import logging
import threading

from verl_bench.answers import E_NOTATION_RE

__all__ = ["mv_equal", "mv_parse"]

_MV: list | None = None
# Generous: golds are trusted input, and a check should fail on the answer, not on a busy machine (5 s
# failed two of minerva_math's golds at a load average of 11 on 2 cores; each takes about 1 s alone).
MV_TIMEOUT_S = 30


def _mv_timeout() -> int | None:
    # math-verify's own timeouts use signal.alarm: main thread only
    return MV_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def mv_parse(answer: str) -> list:
    """math-verify's parse of ``\\boxed{answer}``, set up as in the grader's worker; [] when it raises."""
    global _MV
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    if _MV is None:
        logging.getLogger("math_verify").setLevel(logging.CRITICAL)
        _MV = [LatexExtractionConfig(), ExprExtractionConfig()]
    a = E_NOTATION_RE.sub(r"\1\\times10^{\2}", answer.strip())
    try:
        return parse("\\boxed{" + a + "}", extraction_config=_MV, parsing_timeout=_mv_timeout())
    except Exception:  # noqa: BLE001 - the worker counts any error as "wrong"
        return []


def mv_equal(gold_parsed: list, pred_parsed: list) -> bool:
    from math_verify import verify as mv_verify

    if not gold_parsed or not pred_parsed:
        return False
    try:
        return bool(mv_verify(gold_parsed, pred_parsed, timeout_seconds=_mv_timeout()))
    except Exception:  # noqa: BLE001
        return False
