"""The verifier's worker process: math-verify on (pred, gold) pairs read as JSON lines from stdin.

Started by ``verl_bench.verifier`` as ``python -c "from verl_bench.verify_worker import main; main()"`` (a
plain process: starting it never re-imports the caller's ``__main__``). It arms PR_SET_PDEATHSIG, limits its
address space (``VERL_BENCH_VERIFY_MEM_MB``), imports and warms math-verify, says ``{"ready": pid}``, then
answers ``{"id", "pred", "gold"}`` with ``{"id", "ok"}`` until stdin closes. Any exception (MemoryError,
RecursionError, a parser bug) is "not equal"; the deadlines are the parent's business.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys

from verl_bench.answers import E_NOTATION_RE

MEMORY_ENV = "VERL_BENCH_VERIFY_MEM_MB"
PARENT_ENV = "VERL_BENCH_VERIFY_PARENT"

_MV_CONFIG = None


def mv_equal(pred: str, gold: str) -> bool:
    """math-verify with its own (signal-based) timeouts off; runs inside a worker process only."""
    global _MV_CONFIG
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse
    from math_verify import verify as mv_verify

    if _MV_CONFIG is None:
        _MV_CONFIG = [LatexExtractionConfig(), ExprExtractionConfig()]
    # math-verify reads "4.5e33" as 4.5*E*33; give it LaTeX scientific notation instead.
    pred, gold = (E_NOTATION_RE.sub(r"\1\\times10^{\2}", x.strip()) for x in (pred, gold))
    g = parse("\\boxed{" + gold + "}", extraction_config=_MV_CONFIG, parsing_timeout=None)
    p = parse("\\boxed{" + pred + "}", extraction_config=_MV_CONFIG, parsing_timeout=None)
    if not g or not p:
        return False
    return bool(mv_verify(g, p, timeout_seconds=None))


def _limit_memory(mem_mb: int) -> None:
    import resource

    soft = mem_mb * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def main() -> None:  # pragma: no cover - runs in the child process
    """Worker loop: JSON lines in on stdin ({"id", "pred", "gold"}), JSON lines out ({"id", "ok"})."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we die
    with contextlib.suppress(Exception):  # die with the parent even while stuck inside sympy
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        parent = os.environ.get(PARENT_ENV)
        if parent and os.getppid() != int(parent):  # the parent died before the signal was armed
            os._exit(0)
    # The protocol owns the original stdout; anything the libraries print goes to stderr.
    out = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    mem_mb = int(os.environ.get(MEMORY_ENV, "0") or 0)
    if mem_mb > 0:
        with contextlib.suppress(Exception):
            _limit_memory(mem_mb)
    try:
        logging.getLogger("math_verify").setLevel(logging.CRITICAL)
        mv_equal("1", "1")  # import sympy/latex2sympy and warm caches before reporting ready
    except BaseException as e:  # noqa: BLE001
        out.write(json.dumps({"error": repr(e)}) + "\n")
        return
    out.write(json.dumps({"ready": os.getpid()}) + "\n")
    for line in sys.stdin:  # EOF: the parent closed our stdin or died
        try:
            msg = json.loads(line)
        except ValueError:
            return
        try:
            ok = mv_equal(str(msg["pred"]), str(msg["gold"]))
        except BaseException:  # noqa: BLE001 - MemoryError, RecursionError, parser bugs: all "wrong"
            ok = False
        try:
            out.write(json.dumps({"id": msg.get("id"), "ok": bool(ok)}) + "\n")
        except (OSError, ValueError):
            return


if __name__ == "__main__":  # pragma: no cover
    main()
