"""Answer extraction, answer checking (math-verify under a hard time bound) and reward schemes.

Public API::

    extract_boxed(text) -> str | None
    extract_answer(response) -> tuple[str | None, bool]          # (answer, boxed)
    verify(pred, gold, timeout_s=2.0) -> bool
    grade_response(response, gold, timeout_s=2.0) -> Grade
    grade_batch(responses, golds, timeout_s=2.0) -> list[Grade]
    score_response(response, gold, scheme="boxed", timeout_s=2.0) -> float
    score_batch(responses, golds, scheme="boxed", timeout_s=2.0) -> list[float]
    scheme_reward(correct, boxed, scheme) -> float
    reward_to_task_score(reward, scheme) -> float                 # in [-1, 1]

Time bound. math-verify's own timeouts use ``signal.alarm``, which only works in the main thread; in
Ray workers or threads they silently do nothing (or raise), and sympy can hang on adversarial input
(``9^{9^{9^{9}}}``). So math-verify runs in a small pool of persistent worker *processes* (plain
``python -c`` subprocesses, so starting one never re-imports the caller's ``__main__``) with its own
timeouts turned off (``parsing_timeout=None``, ``timeout_seconds=None``). The caller writes one
(pred, gold) pair to a worker's stdin and waits on its stdout with ``select`` until the deadline: if no
answer arrives in ``timeout_s`` the worker is SIGKILLed, a fresh one is started in its place, and the
pair counts as wrong. Waiting on a pipe works from any thread. Worker start-up (importing sympy, about
1 s) happens before the deadline starts. Workers run under an address-space limit
(``memory_limit_mb``) and die with their parent (PR_SET_PDEATHSIG on Linux, armed from one long-lived
spawner thread, since the signal follows the thread that started the child).

Model output is never evaluated: the fast path is regex and ``fractions.Fraction`` on digit strings only;
everything else goes to math-verify's parser in the worker. Answers longer than ``MAX_ANSWER_CHARS``
are wrong without parsing.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import logging
import os
import re
import select
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction

log = logging.getLogger(__name__)

__all__ = [
    "MAX_ANSWER_CHARS",
    "SCHEMES",
    "Grade",
    "VerifierPool",
    "configure_verifier",
    "extract_answer",
    "extract_boxed",
    "get_verifier_pool",
    "grade_batch",
    "grade_response",
    "normalize_answer",
    "reward_to_task_score",
    "scheme_reward",
    "score_batch",
    "score_response",
    "shutdown_verifier",
    "verify",
    "verify_many",
]

MAX_ANSWER_CHARS = 1000
DEFAULT_TIMEOUT_S = 2.0
SCHEMES = ("binary", "boxed")

# --------------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------------

_BOX_CMD_RE = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")


def _balanced_group(text: str, start: int) -> str | None:
    """Content of the {...} group whose '{' is at ``start``; None if it never closes.
    A backslash escapes the next character (so ``\\{`` and ``\\}`` do not count)."""
    depth = 0
    i = start
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
        i += 1
    return None


def extract_boxed(text: str) -> str | None:
    """Content of the last complete, non-empty ``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces).

    ``\\boxed 5`` (no braces) is also accepted. An unclosed or empty box is passed over in favour of an
    earlier complete one. Returns None when there is none.
    """
    if not isinstance(text, str) or "\\" not in text:
        return None
    for m in reversed(list(_BOX_CMD_RE.finditer(text))[-20:]):  # bounded work on adversarial text
        j = m.end()
        while j < len(text) and text[j] in " \t":
            j += 1
        if j < len(text) and text[j] == "{":
            content = _balanced_group(text, j)
        elif m.group(0) == "\\boxed" and j > m.end():  # "\boxed 5"
            tok = re.match(r"[^\s$]+", text[j:])
            content = tok.group(0) if tok else None
        else:
            content = None
        if content is not None and content.strip():
            return content.strip()
    return None


_ANSWER_IS_RE = re.compile(r"(?:final\s+answer|answer)\s*(?:is|:|=)\s*:?\s*(.+)", re.IGNORECASE)
_HASHES_RE = re.compile(r"####\s*(.+)")
_LAST_NUMBER_RE = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")


def _clean_fallback(s: str) -> str | None:
    s = s.strip().split("\n")[0].strip()
    m = re.search(r"\$+([^$]+)\$+", s) or re.search(r"\\\((.+?)\\\)", s)
    if m:
        s = m.group(1)
    else:
        s = re.split(r"\.(?:\s|$)", s)[0]
    s = s.strip().strip("*").strip().rstrip(".,;:!").strip()
    if not s or len(s) > 200:
        return None
    return s


def extract_answer(response: str) -> tuple[str | None, bool]:
    """(answer, boxed). The last ``\\boxed{}`` if any (boxed=True); otherwise a fallback: the last
    "answer is X" / "final answer: X", then a GSM8K-style "#### X", then the last number in the text
    (boxed=False). (None, False) when nothing is found."""
    if not isinstance(response, str) or not response:
        return None, False
    boxed = extract_boxed(response)
    if boxed is not None:
        return boxed, True
    for rx in (_ANSWER_IS_RE, _HASHES_RE):
        matches = list(rx.finditer(response))
        for m in reversed(matches):
            ans = _clean_fallback(m.group(1))
            if ans:
                return ans, False
    nums = _LAST_NUMBER_RE.findall(response)
    if nums:
        return nums[-1], False
    return None, False


# --------------------------------------------------------------------------------------------------
# Fast path: normalisation, exact and numeric compare (no eval, no sympy)
# --------------------------------------------------------------------------------------------------

_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|operatorname|mbox)\s*\{([^{}]*)\}")
_DEGREE_TAIL_RE = re.compile(r"(\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|°)\s*$")
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_INT_RE = re.compile(r"[+-]?\d+")
_DEC_RE = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+)")
_FRAC_RE = re.compile(r"([+-]?)\\frac\{([+-]?\d+)\}\{([+-]?\d+)\}")
_FRAC_SHORT_RE = re.compile(r"([+-]?)\\frac(\d)(\d)")
_SLASH_RE = re.compile(r"([+-]?\d+)/([+-]?\d+)")
_SCI_RE = re.compile(
    r"([+-]?(?:\d+\.?\d*|\.\d+))(?:[eE]([+-]?\d+)|(?:\\times|\\cdot|\*)10\^\{?([+-]?\d+)\}?)"
)
_ASSIGN_RE = re.compile(r"[a-zA-Z]=(.+)")
_CHOICE_GOLD_RE = re.compile(r"\(?([A-E]{1,5})\)?")


def normalize_answer(s: str) -> str:
    """Cheap canonical form for string comparison: no math delimiters, spacing commands, \\left/\\right,
    \\text{} wrappers, degree signs, percent signs, whitespace, trailing period; 1,000 -> 1000 (but a comma
    followed by a space separates answers: "48, 384" stays a list, as math-verify reads it);
    "x=5" -> "5" when the right side is a plain number."""
    s = s.strip().replace("\\$", "")  # \$18 (dollars) -> 18
    s = re.sub(r"^\$+|\$+$", "", s).strip()
    for left, right in (("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right):
            s = s[2:-2].strip()
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\\left(?![a-zA-Z])|\\right(?![a-zA-Z])", "", s)
    s = re.sub(r"\\[,;:! ]", "", s).replace("~", "")
    for _ in range(3):
        new = _TEXT_CMD_RE.sub(r"\1", s)
        if new == s:
            break
        s = new
    s = _DEGREE_TAIL_RE.sub("", s)
    s = re.sub(r"\\?%$", "", s.strip())
    # "48, 384" is a list of two answers (Gaokao 2023 EN #9), "48,384" a number: decide before the spaces go
    list_comma = re.search(r",\s", s) is not None
    s = re.sub(r"\s+", "", s)
    s = s.rstrip(".")
    m = _ASSIGN_RE.fullmatch(s)
    if m and _as_number(m.group(1)) is not None:
        s = m.group(1)
    if not list_comma and _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    return s


def _as_number(s: str) -> tuple[Fraction, str] | None:
    """(value, kind) for an integer, a finite decimal or a simple fraction of integers; else None.
    kind is "exact" for integers/decimals (literal values) and "frac" for fractions."""
    if len(s) > 60:
        return None
    if _INT_RE.fullmatch(s) or _DEC_RE.fullmatch(s):
        return Fraction(s), "exact"
    m = _SCI_RE.fullmatch(s)  # 4.5e33, 4.5\times10^{33}
    if m:
        exp = int(m.group(2) if m.group(2) is not None else m.group(3))
        if abs(exp) > 400:
            return None
        return Fraction(m.group(1)) * Fraction(10) ** exp, "exact"
    for rx in (_FRAC_RE, _FRAC_SHORT_RE):
        m = rx.fullmatch(s)
        if m:
            den = int(m.group(3))
            if den == 0:
                return None
            v = Fraction(int(m.group(2)), den)
            return (-v if m.group(1) == "-" else v), "frac"
    m = _SLASH_RE.fullmatch(s)
    if m and int(m.group(2)) != 0:
        return Fraction(int(m.group(1)), int(m.group(2))), "frac"
    return None


def _choice_letters(s: str) -> str | None:
    t = re.sub(r"[()\s,、;，]", "", s)
    if re.fullmatch(r"[A-E]{1,5}", t):
        return "".join(sorted(set(t)))
    m = re.match(r"^\(?([A-E])\)?(?:[.:：)]|$)", s.strip())
    return m.group(1) if m else None


def _fast_check(pred: str, gold: str) -> bool | None:
    """True / False when decidable without sympy, None to defer to math-verify."""
    p, g = normalize_answer(pred), normalize_answer(gold)
    if not p or not g:
        return False
    if p == g:
        return True
    cg = _CHOICE_GOLD_RE.fullmatch(g)
    if cg:  # multiple-choice gold: compare the chosen letters, nothing else
        letters = _choice_letters(p)
        return letters is not None and letters == "".join(sorted(set(cg.group(1))))
    pn, gn = _as_number(p), _as_number(g)
    if pn is not None and gn is not None:
        if pn[0] == gn[0]:
            return True
        if pn[1] == "exact" and gn[1] == "exact":
            return False
    return None


# --------------------------------------------------------------------------------------------------
# The worker process
# --------------------------------------------------------------------------------------------------

_MV_CONFIG = None
_E_NOTATION_RE = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))[eE]([+-]?\d+)$")


def _mv_equal(pred: str, gold: str) -> bool:
    """math-verify with its own (signal-based) timeouts off; runs inside a worker process only."""
    global _MV_CONFIG
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse
    from math_verify import verify as mv_verify

    if _MV_CONFIG is None:
        _MV_CONFIG = [LatexExtractionConfig(), ExprExtractionConfig()]
    # math-verify reads "4.5e33" as 4.5*E*33; give it LaTeX scientific notation instead.
    pred, gold = (_E_NOTATION_RE.sub(r"\1\\times10^{\2}", x.strip()) for x in (pred, gold))
    g = parse("\\boxed{" + gold + "}", extraction_config=_MV_CONFIG, parsing_timeout=None)
    p = parse("\\boxed{" + pred + "}", extraction_config=_MV_CONFIG, parsing_timeout=None)
    if not g or not p:
        return False
    return bool(mv_verify(g, p, timeout_seconds=None))


def _worker_main() -> None:  # pragma: no cover - runs in the child process
    """Worker loop: JSON lines in on stdin ({"id", "pred", "gold"}), JSON lines out ({"id", "ok"})."""
    import json
    import signal
    import sys

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we die
    with contextlib.suppress(Exception):  # die with the parent even while stuck inside sympy
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        parent = os.environ.get("VERL_BENCH_VERIFY_PARENT")
        if parent and os.getppid() != int(parent):  # the parent died before the signal was armed
            os._exit(0)
    # The protocol owns the original stdout; anything the libraries print goes to stderr.
    out = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    inp = sys.stdin
    mem_mb = int(os.environ.get("VERL_BENCH_VERIFY_MEM_MB", "0") or 0)
    if mem_mb > 0:
        with contextlib.suppress(Exception):
            import resource

            soft = mem_mb * 1024 * 1024
            _, hard = resource.getrlimit(resource.RLIMIT_AS)
            if hard != resource.RLIM_INFINITY:
                soft = min(soft, hard)
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    try:
        logging.getLogger("math_verify").setLevel(logging.CRITICAL)
        _mv_equal("1", "1")  # import sympy/latex2sympy and warm caches before reporting ready
    except BaseException as e:  # noqa: BLE001
        out.write(json.dumps({"error": repr(e)}) + "\n")
        return
    out.write(json.dumps({"ready": os.getpid()}) + "\n")
    for line in inp:
        try:
            msg = json.loads(line)
        except ValueError:
            return
        try:
            ok = _mv_equal(str(msg["pred"]), str(msg["gold"]))
        except BaseException:  # noqa: BLE001 - MemoryError, RecursionError, parser bugs: all "wrong"
            ok = False
        try:
            out.write(json.dumps({"id": msg.get("id"), "ok": bool(ok)}) + "\n")
        except (OSError, ValueError):
            return


_WORKER_CMD = "from verl_bench.reward import _worker_main; _worker_main()"


class _WorkerDied(RuntimeError):
    pass


class _Worker:
    """One ``python -c`` child running ``_worker_main``, talking JSON lines over its stdin/stdout.

    A plain subprocess (not multiprocessing) so that starting one never re-imports the caller's
    ``__main__`` module and works the same in threads, Ray actors and scripts without a main guard."""

    def __init__(self, memory_limit_mb: int | None):
        env = dict(os.environ)
        pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["VERL_BENCH_VERIFY_MEM_MB"] = str(int(memory_limit_mb or 0))
        env["VERL_BENCH_VERIFY_PARENT"] = str(os.getpid())
        for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(k, "1")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_CMD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,
            env=env,
            bufsize=0,
            close_fds=True,
        )
        self._fd = self.proc.stdout.fileno()
        self._buf = b""
        self.ready = False

    def _read_line(self, timeout_s: float) -> bytes | None:
        """One line from the worker, or None if none arrives within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([self._fd], [], [], left)
            if not r:
                return None
            chunk = os.read(self._fd, 65536)
            if not chunk:
                raise _WorkerDied("math-verify worker exited")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def send(self, obj: dict) -> None:
        try:
            self.proc.stdin.write((json.dumps(obj) + "\n").encode("utf-8"))
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError) as e:
            raise _WorkerDied(str(e)) from e

    def recv(self, timeout_s: float) -> dict | None:
        line = self._read_line(timeout_s)
        if line is None:
            return None
        try:
            return json.loads(line)
        except ValueError as e:
            raise _WorkerDied(f"bad line from worker: {line[:200]!r}") from e

    def wait_ready(self, timeout_s: float) -> None:
        if self.ready:
            return
        try:
            msg = self.recv(timeout_s)
        except _WorkerDied as e:
            raise RuntimeError(f"math-verify worker failed to start ({e}); is math-verify installed?") from e
        if msg is None:
            raise RuntimeError(f"math-verify worker did not start within {timeout_s:.0f} s")
        if "ready" not in msg:
            raise RuntimeError(f"math-verify worker failed to start: {msg.get('error')}")
        self.ready = True

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            self.proc.wait(timeout=5.0)
        for f in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError, ValueError):
                f.close()


class VerifierPool:
    """Persistent math-verify worker processes with a hard per-answer deadline. Thread-safe.

    n_workers: at most this many worker processes (started lazily). memory_limit_mb: RLIMIT_AS per
    worker (None: no limit). startup_timeout_s: how long to wait for a worker to import math-verify (not
    counted in per-answer deadlines).
    """

    def __init__(
        self,
        n_workers: int | None = None,
        memory_limit_mb: int | None = 4096,
        startup_timeout_s: float = 120.0,
    ):
        self.n_workers = max(1, int(n_workers or min(8, os.cpu_count() or 1)))
        self.memory_limit_mb = memory_limit_mb
        self.startup_timeout_s = startup_timeout_s
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._n_live = 0
        self._closed = False
        self._pid = os.getpid()
        self._tids = itertools.count()
        self._stats_lock = threading.Lock()
        # Workers are started from one long-lived thread: PR_SET_PDEATHSIG fires when the *thread* that
        # started a child exits, so starting them from short-lived caller threads would kill them early.
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="verl-bench-verify-spawner")
        self.stats = {"calls": 0, "timeouts": 0, "worker_errors": 0, "restarts": 0}

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] += 1

    # -- worker bookkeeping -------------------------------------------------------------------------
    def _new_worker(self) -> _Worker:
        return self._spawner.submit(_Worker, self.memory_limit_mb).result()

    def _check_fork(self) -> None:
        if os.getpid() != self._pid:  # forked child: the workers belong to the parent, start afresh
            self._cond = threading.Condition()
            self._stats_lock = threading.Lock()
            self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="verl-bench-verify-spawner")
            self._idle = []
            self._n_live = 0
            self._pid = os.getpid()

    def _acquire(self) -> _Worker:
        self._check_fork()
        w = None
        with self._cond:
            while True:
                if self._closed:
                    raise RuntimeError("VerifierPool is closed")
                if self._idle:
                    w = self._idle.pop()
                    break
                if self._n_live < self.n_workers:
                    self._n_live += 1
                    break
                self._cond.wait(timeout=1.0)
        if w is None:
            try:
                w = self._new_worker()
            except BaseException:
                with self._cond:
                    self._n_live -= 1
                    self._cond.notify()
                raise
        try:
            w.wait_ready(self.startup_timeout_s)
        except BaseException:
            self._discard(w, respawn=False)
            raise
        return w

    def _release(self, w: _Worker) -> None:
        with self._cond:
            closed = self._closed
            if closed:
                self._n_live -= 1
            else:
                self._idle.append(w)
            self._cond.notify()
        if closed:
            w.kill()

    def _discard(self, w: _Worker, respawn: bool) -> None:
        w.kill()
        spare = None
        if respawn and not self._closed:
            self._count("restarts")
            try:
                spare = self._new_worker()  # imports math-verify in the background meanwhile
            except (OSError, RuntimeError):
                spare = None
        with self._cond:
            if spare is not None and not self._closed:
                self._idle.append(spare)
                spare = None
            else:
                self._n_live -= 1
            self._cond.notify()
        if spare is not None:
            spare.kill()

    # -- public -------------------------------------------------------------------------------------
    def warmup(self, n: int | None = None) -> None:
        """Start ``n`` (default all) workers and wait until they are ready."""
        n = min(self.n_workers, n or self.n_workers)
        with ThreadPoolExecutor(max_workers=n, thread_name_prefix="verl-bench-verify-warmup") as ex:
            futs = [ex.submit(self._acquire) for _ in range(n)]  # all start importing at once
            got, err = [], None
            for f in futs:
                try:
                    got.append(f.result())
                except BaseException as e:  # noqa: BLE001
                    err = e
        for w in got:
            self._release(w)
        if err is not None:
            raise err

    def check(self, pred: str, gold: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
        """math-verify(gold, pred) in a worker; False if it takes longer than ``timeout_s`` seconds."""
        self._count("calls")
        w = self._acquire()
        tid = next(self._tids)
        try:
            w.send({"id": tid, "pred": pred, "gold": gold})
            msg = w.recv(timeout_s)
        except _WorkerDied:  # crashed (memory limit, killed from outside)
            self._count("worker_errors")
            self._discard(w, respawn=True)
            return False
        except BaseException:
            self._discard(w, respawn=True)
            raise
        if msg is None:
            self._count("timeouts")
            log.debug("math-verify timed out after %.2f s; restarting worker", timeout_s)
            self._discard(w, respawn=True)
            return False
        if msg.get("id") != tid:
            self._count("worker_errors")
            self._discard(w, respawn=True)
            return False
        self._release(w)
        return bool(msg.get("ok"))

    def check_many(
        self, pairs: Sequence[tuple[str, str]], timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> list[bool]:
        """``check`` for many (pred, gold) pairs, in parallel over the workers."""
        if not pairs:
            return []
        if len(pairs) == 1:
            return [self.check(pairs[0][0], pairs[0][1], timeout_s)]
        with ThreadPoolExecutor(
            max_workers=min(self.n_workers, len(pairs)), thread_name_prefix="verl-bench-verify"
        ) as ex:
            return list(ex.map(lambda pg: self.check(pg[0], pg[1], timeout_s), pairs))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._n_live -= len(idle)
            self._cond.notify_all()
        if os.getpid() == self._pid:
            for w in idle:
                w.kill()
            self._spawner.shutdown(wait=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_DEFAULT_POOL: VerifierPool | None = None
_POOL_LOCK = threading.Lock()


def get_verifier_pool() -> VerifierPool:
    """The process-wide pool (created on first use; worker count from ``VERL_BENCH_VERIFY_WORKERS``)."""
    global _DEFAULT_POOL
    with _POOL_LOCK:
        if _DEFAULT_POOL is None or _DEFAULT_POOL._closed:
            n = os.environ.get("VERL_BENCH_VERIFY_WORKERS")
            _DEFAULT_POOL = VerifierPool(n_workers=int(n) if n else None)
        return _DEFAULT_POOL


def configure_verifier(n_workers: int | None = None, memory_limit_mb: int | None = 4096) -> VerifierPool:
    """Replace the process-wide pool (closing the old one)."""
    global _DEFAULT_POOL
    with _POOL_LOCK:
        old, _DEFAULT_POOL = _DEFAULT_POOL, VerifierPool(n_workers, memory_limit_mb)
    if old is not None:
        old.close()
    return _DEFAULT_POOL


def shutdown_verifier() -> None:
    global _DEFAULT_POOL
    with _POOL_LOCK:
        old, _DEFAULT_POOL = _DEFAULT_POOL, None
    if old is not None:
        old.close()


atexit.register(shutdown_verifier)

# --------------------------------------------------------------------------------------------------
# verify / grading
# --------------------------------------------------------------------------------------------------

_CACHE: OrderedDict[tuple[str, str], bool] = OrderedDict()
_CACHE_MAX = 100_000
_CACHE_LOCK = threading.Lock()


def _cache_get(key):
    with _CACHE_LOCK:
        v = _CACHE.get(key)
        if v is not None:
            _CACHE.move_to_end(key)
        return v


def _cache_put(key, value: bool) -> None:
    with _CACHE_LOCK:
        _CACHE[key] = value
        if len(_CACHE) > _CACHE_MAX:
            _CACHE.popitem(last=False)


def _precheck(pred, gold, max_chars: int) -> bool | None:
    if not isinstance(pred, str) or not isinstance(gold, str):
        return False
    pred, gold = pred.strip(), gold.strip()
    if not pred or not gold or len(pred) > max_chars or len(gold) > max_chars:
        return False
    return _fast_check(pred, gold)


def verify(
    pred: str,
    gold: str,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    *,
    pool: VerifierPool | None = None,
    max_chars: int = MAX_ANSWER_CHARS,
    use_cache: bool = True,
) -> bool:
    """Is the extracted answer ``pred`` equivalent to ``gold``?

    Length limit, then a fast path (normalised string equality, exact numeric compare, multiple-choice
    letters), then math-verify in a worker process with a hard ``timeout_s`` deadline (timeout = False).
    Safe to call from any thread. Results from math-verify (including timeouts) are cached per pair.
    """
    fast = _precheck(pred, gold, max_chars)
    if fast is not None:
        return fast
    key = (pred.strip(), gold.strip())
    if use_cache:
        hit = _cache_get(key)
        if hit is not None:
            return hit
    ok = (pool or get_verifier_pool()).check(key[0], key[1], timeout_s)
    if use_cache:
        _cache_put(key, ok)
    return ok


def verify_many(
    pairs: Sequence[tuple[str, str]],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    *,
    pool: VerifierPool | None = None,
    max_chars: int = MAX_ANSWER_CHARS,
    use_cache: bool = True,
) -> list[bool]:
    """``verify`` for many (pred, gold) pairs; pairs that need math-verify run in parallel, each distinct
    pair once."""
    out: list[bool | None] = []
    todo: dict[tuple[str, str], list[int]] = {}
    for i, (pred, gold) in enumerate(pairs):
        fast = _precheck(pred, gold, max_chars)
        if fast is None:
            key = (pred.strip(), gold.strip())
            hit = _cache_get(key) if use_cache else None
            if hit is None:
                todo.setdefault(key, []).append(i)
            fast = hit
        out.append(fast)
    if todo:
        keys = list(todo)
        results = (pool or get_verifier_pool()).check_many(keys, timeout_s)
        for key, ok in zip(keys, results):
            if use_cache:
                _cache_put(key, ok)
            for i in todo[key]:
                out[i] = ok
    return [bool(x) for x in out]


@dataclass(frozen=True)
class Grade:
    answer: str | None  # extracted answer (None: nothing found)
    boxed: bool  # the answer came from a \boxed{}
    correct: bool


def grade_response(
    response: str, gold: str, timeout_s: float = DEFAULT_TIMEOUT_S, *, pool: VerifierPool | None = None
) -> Grade:
    ans, boxed = extract_answer(response)
    ok = ans is not None and verify(ans, gold, timeout_s, pool=pool)
    return Grade(ans, boxed, ok)


def grade_batch(
    responses: Sequence[str],
    golds: Sequence[str],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    *,
    pool: VerifierPool | None = None,
) -> list[Grade]:
    if len(responses) != len(golds):
        raise ValueError(f"{len(responses)} responses but {len(golds)} golds")
    extracted = [extract_answer(r) for r in responses]
    idx = [i for i, (a, _) in enumerate(extracted) if a is not None]
    oks = verify_many([(extracted[i][0], golds[i]) for i in idx], timeout_s, pool=pool)
    correct = [False] * len(responses)
    for i, ok in zip(idx, oks):
        correct[i] = ok
    return [Grade(a, b, c) for (a, b), c in zip(extracted, correct)]


# --------------------------------------------------------------------------------------------------
# Reward schemes
# --------------------------------------------------------------------------------------------------


def scheme_reward(correct: bool, boxed: bool, scheme: str = "boxed") -> float:
    """binary: 1 correct / 0 otherwise. boxed (the VERL paper's): +1 correct and boxed, +0.5 correct
    but not boxed, -0.5 boxed but wrong, -1 no boxed answer (and not correct)."""
    if scheme == "binary":
        return 1.0 if correct else 0.0
    if scheme == "boxed":
        if correct:
            return 1.0 if boxed else 0.5
        return -0.5 if boxed else -1.0
    raise ValueError(f"unknown reward scheme {scheme!r}; known: {', '.join(SCHEMES)}")


def reward_to_task_score(reward: float, scheme: str = "boxed") -> float:
    """Map a scheme's reward to a task score in [-1, 1]: binary 2r-1, boxed r itself."""
    if scheme == "binary":
        return 2.0 * float(reward) - 1.0
    if scheme == "boxed":
        return float(reward)
    raise ValueError(f"unknown reward scheme {scheme!r}; known: {', '.join(SCHEMES)}")


def score_response(
    response: str,
    gold: str,
    scheme: str = "boxed",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    *,
    pool: VerifierPool | None = None,
) -> float:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown reward scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    g = grade_response(response, gold, timeout_s, pool=pool)
    return scheme_reward(g.correct, g.boxed, scheme)


def score_batch(
    responses: Sequence[str],
    golds: Sequence[str],
    scheme: str = "boxed",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    *,
    pool: VerifierPool | None = None,
) -> list[float]:
    """Rewards for many responses; the math-verify checks run in parallel in the worker pool."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown reward scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    return [
        scheme_reward(g.correct, g.boxed, scheme) for g in grade_batch(responses, golds, timeout_s, pool=pool)
    ]
