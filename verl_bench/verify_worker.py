"""The verifier's worker process: math-verify on (pred, gold) pairs read as JSON lines from stdin.

Started by ``verl_bench.verifier`` as ``python -c "from verl_bench.verify_worker import main; main()"`` (a
plain process: starting it never re-imports the caller's ``__main__``). It arms PR_SET_PDEATHSIG, limits its
address space (``VERL_BENCH_VERIFY_MEM_MB``), imports and warms math-verify, says ``{"ready": pid}``, then
answers ``{"id", "pred", "gold"}`` with ``{"id", "ok"}`` until stdin closes. Any exception (MemoryError,
RecursionError, a parser bug) is "not equal"; the deadlines are the parent's business.

``zygote_main`` is the fork server: the same warm-up once, then a ready worker per request in milliseconds.
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
ZYGOTE_FD_ENV = "VERL_BENCH_VERIFY_ZYGOTE_FD"

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


def _arm_pdeathsig(parent: int | None) -> None:
    """Die (SIGKILL) with the parent, even while stuck inside sympy; exit now if ``parent`` already died."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if parent and os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(0)


def _warm() -> str | None:
    """Import sympy/latex2sympy and warm math-verify's caches; the error, if that fails."""
    try:
        logging.getLogger("math_verify").setLevel(logging.CRITICAL)
        mv_equal("1", "1")
    except BaseException as e:  # noqa: BLE001
        return repr(e)
    return None


def _serve(inp, out) -> None:
    """Say ready, then answer {"id", "pred", "gold"} lines from ``inp`` with {"id", "ok"} lines until EOF."""
    out.write(json.dumps({"ready": os.getpid()}) + "\n")
    for line in inp:  # EOF: the parent closed our stdin or died
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


def main() -> None:  # pragma: no cover - runs in the child process
    """Worker loop: JSON lines in on stdin ({"id", "pred", "gold"}), JSON lines out ({"id", "ok"})."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we die
    _arm_pdeathsig(int(os.environ.get(PARENT_ENV) or 0))
    # The protocol owns the original stdout; anything the libraries print goes to stderr.
    out = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    mem_mb = int(os.environ.get(MEMORY_ENV, "0") or 0)
    if mem_mb > 0:
        with contextlib.suppress(Exception):
            _limit_memory(mem_mb)
    error = _warm()
    if error:
        out.write(json.dumps({"error": error}) + "\n")
        return
    _serve(sys.stdin, out)


def zygote_main() -> None:  # pragma: no cover - runs in the zygote process
    """Fork server: imports and warms math-verify once, then forks a ready worker per request.

    The parent's socket (fd ``$VERL_BENCH_VERIFY_ZYGOTE_FD``) carries ``{"mem_mb": N}`` with two fds (the
    worker's stdin read end, its stdout write end); the reply is ``"<pid>\\n"``. First line: ``ready`` or
    ``error ...``. EOF on the socket (the parent closed it or died): exit, taking the workers along
    (each arms PR_SET_PDEATHSIG against the zygote).
    """
    import socket

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _arm_pdeathsig(int(os.environ.get(PARENT_ENV) or 0))
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the workers: no zombies
    os.dup2(2, 1)  # the libraries' prints (ours and the workers') go to stderr
    sock = socket.socket(fileno=int(os.environ[ZYGOTE_FD_ENV]))
    error = _warm()
    sock.sendall((f"error {error}" if error else "ready").encode() + b"\n")
    if error:
        return
    me = os.getpid()
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 1024, 2)
        except OSError:
            return
        if not msg or len(fds) != 2:
            return
        pid = os.fork()
        if pid == 0:  # the worker
            try:
                sock.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                _arm_pdeathsig(me)
                mem_mb = int(json.loads(msg).get("mem_mb") or 0)
                if mem_mb > 0:
                    with contextlib.suppress(Exception):
                        _limit_memory(mem_mb)
                _serve(os.fdopen(fds[0], "r", encoding="utf-8"), os.fdopen(fds[1], "w", encoding="utf-8", buffering=1))
            finally:
                os._exit(0)
        for fd in fds:
            os.close(fd)
        sock.sendall(f"{pid}\n".encode())


if __name__ == "__main__":  # pragma: no cover
    main()
