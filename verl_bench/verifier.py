"""Is an extracted answer equal to the gold? math-verify in killable worker processes, under deadlines.

Public API::

    check_many(pairs, timeout_s=2.0, batch_timeout_s=None) -> list[Outcome]   # pairs: (pred, gold)
    verify_many(pairs, timeout_s=2.0) -> list[bool]
    verify(pred, gold, timeout_s=2.0) -> bool
    VerifierPool(n_workers=None, spares=1, memory_limit_mb=4096)   # .run(pairs, ...), .warmup(), .close()
    default_pool(), shutdown_verifier()

Order of checks: answers over ``MAX_ANSWER_CHARS`` are wrong without parsing (rejected, never cut: a cut
answer could become another, right-looking one); digits of other scripts become ASCII digits (for the fast
path and math-verify alike, so such answers are accepted consistently); then the fast path of ``verl_bench.answers`` (string,
exact-number and multiple-choice compares); then a cache; then math-verify in a worker process.

Why processes. math-verify's own timeouts use ``signal.alarm`` (main thread only: in Ray workers and
threads they do nothing) and sympy can hang or eat memory on hostile input (``9^{9^{9^{9}}}``, ``10000!``).
So math-verify runs with its timeouts off in plain ``python -c`` children (starting one never re-imports
the caller's ``__main__``), one (pred, gold) pair at a time over JSON lines on stdin/stdout. The guarantees:

* Per answer: an answer that has not finished ``timeout_s`` after it was sent is SIGKILLed with its
  worker and counts as wrong (``Outcome.TIMEOUT``). Waiting is ``poll`` on pipes: it works from any
  thread and any Ray worker.
* Per batch: all pairs of a ``run`` go to the pool at once; ``batch_timeout_s`` after the batch got its
  first worker, every pair still running or waiting is dropped together (``Outcome.CUT``, workers
  killed), so a batch of N hostile answers costs about ``batch_timeout_s``, not N x ``timeout_s``.
* No process start on the critical path: the pool keeps ``n_workers`` + ``spares`` workers (imports
  done); a batch uses at most ``n_workers`` at once, a killed worker's place is taken by a warm spare at
  once, and its replacement starts in the background (reaping the dead one too). Only a cold pool's
  first batch waits for start-up, before its clock starts. Workers are forked by a zygote: one ``python
  -c`` fork server per process (``verify_worker.zygote_main``) that imported and warmed math-verify once,
  so a replacement is ready in milliseconds, not after a python + sympy import (1.5 s quiet, 10-20 s on a
  loaded machine), and hostile answers back to back do not use up the warm spares. The limit: should the
  zygote fail, workers start as processes of their own (the zygote restarts in the background, up to
  3 times) and answers that kill workers faster than those start make the next pair wait for a start
  (within the batch deadline).
* Memory: each worker runs under an address-space limit (``memory_limit_mb``, RLIMIT_AS): a memory bomb
  ends in MemoryError (wrong) or the worker's death (retried once on another worker, then
  ``Outcome.CRASHED``); the caller's process is untouched.
* Death with the parent: PR_SET_PDEATHSIG (armed from one long-lived spawner thread, since the signal
  follows the thread that started the child) kills workers stuck in sympy, and the zygote, whose forked
  workers arm it against the zygote in turn; idle ones also exit on EOF.
* Workers killed from outside are noticed (EOF, broken pipe), replaced, and their pair retried once.
* Model output is never evaluated as code, here or in the worker: math-verify parses LaTeX with an ANTLR
  grammar, and the only ``eval`` on its path (sympy's ``parse_expr``) only ever receives text its regex
  limited to digits, spaces and ``+-*/^()×÷``.
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import json
import logging
import math
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence

from verl_bench.answers import ascii_digits, fast_check
from verl_bench.verify_worker import MEMORY_ENV, PARENT_ENV, ZYGOTE_FD_ENV

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "MAX_ANSWER_CHARS",
    "Outcome",
    "VerifierPool",
    "check_many",
    "default_pool",
    "shutdown_verifier",
    "verify",
    "verify_many",
]

MAX_ANSWER_CHARS = 1000
DEFAULT_TIMEOUT_S = 2.0


class Outcome(enum.Enum):
    EQUAL = "equal"
    DIFFERENT = "different"
    TIMEOUT = "timeout"  # math-verify ran its full timeout_s (cached: it would again)
    CUT = "cut"  # the batch deadline came first (not cached: the pair got no full hearing)
    CRASHED = "crashed"  # its worker died under it twice (not cached)

    @property
    def correct(self) -> bool:
        return self is Outcome.EQUAL

    @property
    def timed_out(self) -> bool:
        return self in (Outcome.TIMEOUT, Outcome.CUT)


_CACHED = (Outcome.EQUAL, Outcome.DIFFERENT, Outcome.TIMEOUT)

# --------------------------------------------------------------------------------------------------
# Worker processes (their side: verl_bench.verify_worker)
# --------------------------------------------------------------------------------------------------

_WORKER_CMD = "from verl_bench.verify_worker import main; main()"
_ZYGOTE_CMD = "from verl_bench.verify_worker import zygote_main; zygote_main()"


def _worker_env(memory_limit_mb: int | None) -> dict[str, str]:
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env[MEMORY_ENV] = str(int(memory_limit_mb or 0))
    env[PARENT_ENV] = str(os.getpid())
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(k, "1")
    return env


def _popen_worker(memory_limit_mb: int | None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _WORKER_CMD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=None, env=_worker_env(memory_limit_mb), bufsize=0, close_fds=True)


class _ForkedWorker:
    """A worker forked by the zygote, with the part of ``subprocess.Popen`` the pool uses. The parent cannot
    waitpid a grandchild (the zygote reaps it): a pidfd says when it is gone and kills without the risk of
    hitting a reused pid; without pidfds (Linux < 5.3), ``kill(pid, 0)``."""

    def __init__(self, pid: int, stdin_fd: int, stdout_fd: int):
        self.pid = pid
        self.stdin = os.fdopen(stdin_fd, "wb", buffering=0)
        self.stdout = os.fdopen(stdout_fd, "rb", buffering=0)
        self.returncode: int | None = None
        self._pidfd: int | None = None
        self._lock = threading.Lock()  # poll/kill (caller thread) against wait (spawner thread)
        try:
            self._pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            self.returncode = -signal.SIGKILL  # already gone; its exit status went to the zygote
        except (AttributeError, OSError):
            pass

    def poll(self) -> int | None:
        with self._lock:
            if self.returncode is None:
                if self._pidfd is not None:
                    gone = bool(_readable([self._pidfd], 0))
                else:
                    try:
                        os.kill(self.pid, 0)
                        gone = False
                    except ProcessLookupError:
                        gone = True
                    except OSError:
                        gone = False
                if gone:
                    self.returncode = -signal.SIGKILL  # the real status went to the zygote
            return self.returncode

    def kill(self) -> None:
        with self._lock:
            if self.returncode is None:
                if self._pidfd is not None:
                    signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
                else:
                    os.kill(self.pid, signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        end = math.inf if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() >= end:
                raise subprocess.TimeoutExpired(f"verify worker {self.pid}", timeout)
            time.sleep(0.01)
        with self._lock:
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
        return self.returncode


class _Zygote:
    """The fork server (``verify_worker.zygote_main``): one ``python -c`` process that imported and warmed
    math-verify once and forks a ready worker per request, over a Unix socketpair that carries the
    worker's two pipe ends. Started from the spawner thread (so PR_SET_PDEATHSIG ties it to this process)."""

    def __init__(self):
        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = _worker_env(None)
        env[ZYGOTE_FD_ENV] = str(theirs.fileno())
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", _ZYGOTE_CMD], stdin=subprocess.DEVNULL, stdout=None,
                                         stderr=None, env=env, close_fds=True, pass_fds=(theirs.fileno(),))
        finally:
            theirs.close()
        self.pid = self.proc.pid
        self.owner = os.getpid()  # a forked caller starts a zygote of its own
        self.ready = threading.Event()  # set when the warm-up is done (or failed: then ``alive`` is False)
        self.alive = True
        self._buf = b""
        threading.Thread(target=self._await_ready, name="verl-bench-verify-zygote", daemon=True).start()

    def _line(self, timeout_s: float) -> bytes | None:
        end = time.monotonic() + timeout_s
        while b"\n" not in self._buf:
            if not _readable([self._sock.fileno()], end - time.monotonic()):
                return None
            chunk = self._sock.recv(4096)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def _await_ready(self) -> None:
        try:
            line = self._line(_ZYGOTE_START_TIMEOUT_S)
        except OSError:
            line = None
        if line != b"ready":
            log.warning("verifier zygote did not start (%s); starting workers as processes", line)
            self.stop()
        self.ready.set()

    def fork(self, memory_limit_mb: int | None) -> _ForkedWorker | None:
        """A new worker (its ready line still to come), or None when the zygote failed (it is then stopped)."""
        if not self.alive:
            return None
        child_in, parent_out = os.pipe()  # the worker's stdin
        parent_in, child_out = os.pipe()  # its stdout
        try:
            socket.send_fds(self._sock, [json.dumps({"mem_mb": int(memory_limit_mb or 0)}).encode()],
                            [child_in, child_out])
            line = self._line(_ZYGOTE_FORK_TIMEOUT_S)
            pid = int(line) if line else None
        except (OSError, ValueError):
            pid = None
        finally:
            os.close(child_in)
            os.close(child_out)
        if pid is None:
            os.close(parent_out)
            os.close(parent_in)
            self.stop()
            return None
        return _ForkedWorker(pid, parent_out, parent_in)

    def stop(self) -> None:
        self.alive = False
        with contextlib.suppress(OSError):
            self._sock.close()
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            self.proc.wait(timeout=10.0)


_ZYGOTE_START_TIMEOUT_S = 120.0
_ZYGOTE_FORK_TIMEOUT_S = 10.0
_ZYGOTE_MAX_FAILURES = 3  # then workers start as processes of their own
_ZYGOTE: _Zygote | None = None
_ZYGOTE_FAILURES = 0


def _start_worker(memory_limit_mb: int | None) -> subprocess.Popen | _ForkedWorker:
    """In the spawner thread: a worker forked by the zygote, else (the zygote failed, or a restarted one is
    still warming up) a worker process of its own. Only the first zygote is waited for."""
    global _ZYGOTE, _ZYGOTE_FAILURES
    z = _ZYGOTE
    if z is not None and z.owner != os.getpid():
        z = _ZYGOTE = None
    if z is None or z.proc.poll() is not None or (z.ready.is_set() and not z.alive):
        if z is not None:
            _ZYGOTE_FAILURES += 1
            z.stop()
        z = _ZYGOTE = None
        if _ZYGOTE_FAILURES <= _ZYGOTE_MAX_FAILURES:
            try:
                z = _ZYGOTE = _Zygote()
            except OSError as e:
                log.warning("cannot start the verifier zygote (%s); starting workers as processes", e)
                _ZYGOTE_FAILURES += 1
    if z is not None and z.ready.wait(_ZYGOTE_START_TIMEOUT_S if _ZYGOTE_FAILURES == 0 else 0):
        w = z.fork(memory_limit_mb)
        if w is not None:
            return w
    return _popen_worker(memory_limit_mb)



def _reap(proc: subprocess.Popen | _ForkedWorker) -> None:
    with contextlib.suppress(OSError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired, OSError):
        proc.wait(timeout=10.0)
    for f in (proc.stdin, proc.stdout):
        with contextlib.suppress(OSError, ValueError):
            f.close()


class _Worker:
    """A started worker process seen from the parent: its pipes, a read buffer, the pair it is on."""

    def __init__(self, proc: subprocess.Popen | _ForkedWorker):
        self.proc = proc
        self.pid = proc.pid
        self.fd = proc.stdout.fileno()
        self._buf = b""
        self.job: int | None = None  # index of the pair it is checking
        self.sent_at = 0.0

    def send(self, job: int, pred: str, gold: str) -> bool:
        """False when the worker is gone (its stdin is closed)."""
        try:
            self.proc.stdin.write((json.dumps({"id": job, "pred": pred, "gold": gold}) + "\n").encode("utf-8"))
        except (OSError, ValueError):
            return False
        self.job, self.sent_at = job, time.monotonic()
        return True

    def read(self) -> list[dict] | None:
        """The complete messages readable now (call after select said so); None when the worker died or
        wrote something that is not a message."""
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:
            return None
        if not chunk:
            return None
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        try:
            return [json.loads(line) for line in lines]
        except ValueError:
            return None

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()


def _readable(fds: Sequence[int], timeout_s: float) -> list[int]:
    """The fds with data or EOF within ``timeout_s`` (poll, not select: fds above 1024 are common in
    processes that hold a model, a Ray worker's sockets and a pool)."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    return [fd for fd, _ in poller.poll(max(0, math.ceil(timeout_s * 1000)))]


class _Spawner:
    """One long-lived thread per process that starts workers (PR_SET_PDEATHSIG follows the *thread* that
    forked a child, so short-lived caller threads would take their workers with them) and reaps them."""

    def __init__(self):
        self._tasks: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._pid = os.getpid()
        threading.Thread(target=self._loop, name="verl-bench-verify-spawner", daemon=True).start()

    def _loop(self) -> None:
        while True:
            task = self._tasks.get()
            try:
                task()
            except Exception:  # a failed task must not stop later starts
                log.exception("verifier spawner task failed")

    def submit(self, task: Callable[[], None]) -> None:
        self._tasks.put(task)


_SPAWNER: _Spawner | None = None
_SPAWNER_LOCK = threading.Lock()


def _spawner() -> _Spawner:
    global _SPAWNER
    with _SPAWNER_LOCK:
        if _SPAWNER is None or _SPAWNER._pid != os.getpid():  # none yet, or inherited through fork
            _SPAWNER = _Spawner()
        return _SPAWNER


# --------------------------------------------------------------------------------------------------
# The pool
# --------------------------------------------------------------------------------------------------


class VerifierPool:
    """Warm math-verify worker processes; ``run`` checks a batch under per-pair and per-batch deadlines.
    Thread-safe: concurrent batches share the workers.

    n_workers: at most this many pairs of one batch run at once (default: CPUs, at most 8). spares: warm
    workers kept beyond that, so a killed worker is replaced without waiting for a start. memory_limit_mb:
    RLIMIT_AS per worker (None: no limit). startup_timeout_s: how long a worker may take to import
    math-verify (not counted in any deadline).
    """

    def __init__(self, n_workers: int | None = None, *, spares: int = 1, memory_limit_mb: int | None = 4096,
                 startup_timeout_s: float = 120.0):
        self.n_workers = max(1, int(n_workers or min(8, os.cpu_count() or 1)))
        self.spares = max(0, int(spares))
        self.memory_limit_mb = memory_limit_mb
        self.startup_timeout_s = startup_timeout_s
        self.stats = {"calls": 0, "timeouts": 0, "cut": 0, "crashes": 0, "restarts": 0}
        self._reset_state()

    def _reset_state(self) -> None:
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._live = 0  # idle + in use + starting
        self._closed = False
        self._start_error: str | None = None
        self._pid = os.getpid()

    def _check_fork(self) -> None:
        if os.getpid() != self._pid:  # a forked child: the workers are the parent's; start afresh
            self._reset_state()

    @property
    def worker_pids(self) -> list[int]:
        """Pids of the idle, ready workers (for tests and diagnostics)."""
        with self._cond:
            return [w.pid for w in self._idle]

    def _count(self, key: str, n: int = 1) -> None:
        with self._cond:
            self.stats[key] += n

    # -- starting, taking, giving back ---------------------------------------------------------------
    def _top_up(self) -> None:  # under self._cond
        while not self._closed and self._live < self.n_workers + self.spares:
            self._live += 1
            _spawner().submit(self._start_one)

    def _start_one(self) -> None:  # in the spawner thread
        if self._closed:
            return self._lost(None)
        try:
            proc = _start_worker(self.memory_limit_mb)
        except OSError as e:
            return self._lost(f"cannot start a math-verify worker: {e}")
        threading.Thread(target=self._await_ready, args=(proc,), name="verl-bench-verify-start",
                         daemon=True).start()

    def _await_ready(self, proc: subprocess.Popen | _ForkedWorker) -> None:
        w = _Worker(proc)
        error = f"math-verify worker did not start within {self.startup_timeout_s:.0f} s"
        ready = False
        deadline = time.monotonic() + self.startup_timeout_s
        msgs: list[dict] | None = []
        while msgs == [] and _readable([w.fd], deadline - time.monotonic()):
            msgs = w.read()  # [] until the first line is complete
        if msgs:
            ready = "ready" in msgs[0]
            error = f"math-verify worker failed to start: {msgs[0].get('error')}"
        elif msgs is None:
            error = "math-verify worker exited during start-up; is math-verify installed?"
        with self._cond:
            if ready and not self._closed:
                self._idle.append(w)
                self._cond.notify_all()
                return
        _spawner().submit(lambda: _reap(proc))
        self._lost(None if ready else error)

    def _lost(self, error: str | None) -> None:
        with self._cond:
            self._live -= 1
            if error:
                self._start_error = error
            self._cond.notify_all()

    def _take(self, k: int, *, wait: bool, until: float) -> list[_Worker]:
        """Up to ``k`` idle workers. With ``wait``, block for at least one: until ``until`` (then []), or
        at most ``startup_timeout_s`` when ``until`` is infinite (then RuntimeError)."""
        with self._cond:
            self._top_up()
            limit = until if until < math.inf else time.monotonic() + self.startup_timeout_s
            while wait and not self._idle and not self._closed:
                if self._live == 0 and self._start_error:
                    raise RuntimeError(self._start_error)
                left = limit - time.monotonic()
                if left <= 0:
                    if until < math.inf:
                        return []
                    raise RuntimeError(self._start_error or f"no math-verify worker became ready within "
                                                            f"{self.startup_timeout_s:.0f} s")
                self._cond.wait(min(left, 1.0))
            if self._closed:
                raise RuntimeError("VerifierPool is closed")
            got = self._idle[len(self._idle) - min(k, len(self._idle)):]
            del self._idle[len(self._idle) - len(got):]
            return got

    def _give_back(self, w: _Worker) -> None:
        with self._cond:
            if not self._closed:
                self._idle.append(w)
                self._cond.notify_all()
                return
            self._live -= 1
        w.kill()
        _spawner().submit(lambda: _reap(w.proc))

    def _discard(self, w: _Worker) -> None:
        """Kill now (the only step on the caller's critical path); reap and replace in the background."""
        w.kill()
        with self._cond:
            self._live -= 1
            self.stats["restarts"] += 1
            self._top_up()
            self._cond.notify_all()
        _spawner().submit(lambda: _reap(w.proc))

    # -- public -------------------------------------------------------------------------------------
    def warmup(self) -> None:
        """Start every worker (spares included) and wait until they are all ready."""
        self._check_fork()
        deadline = time.monotonic() + self.startup_timeout_s
        with self._cond:
            self._top_up()
            while len(self._idle) < self.n_workers + self.spares:
                if self._closed:
                    raise RuntimeError("VerifierPool is closed")
                if self._start_error and self._live < self.n_workers + self.spares:
                    raise RuntimeError(self._start_error)
                if time.monotonic() > deadline:
                    raise RuntimeError(f"math-verify workers did not start within {self.startup_timeout_s:.0f} s")
                self._cond.wait(0.5)

    def run(self, pairs: Sequence[tuple[str, str]], timeout_s: float = DEFAULT_TIMEOUT_S,
            batch_timeout_s: float | None = None) -> list[Outcome]:
        """math-verify(gold, pred) for every pair, in parallel over the workers.

        A pair still unanswered ``timeout_s`` after it was sent: TIMEOUT (worker killed). Everything
        unanswered ``batch_timeout_s`` (None: no batch deadline) after the batch got its first worker:
        CUT (workers killed together). A pair whose worker dies is retried once on another.
        """
        self._check_fork()
        n = len(pairs)
        out: list[Outcome | None] = [None] * n
        if n == 0:
            return []
        todo = deque(range(n))
        tries = [0] * n
        held: list[_Worker] = []
        busy: dict[int, _Worker] = {}  # stdout fd -> worker checking a pair
        limit = min(self.n_workers, n)
        batch_end = math.inf
        self._count("calls", n)

        def died(w: _Worker) -> None:
            i = w.job
            held.remove(w)
            busy.pop(w.fd, None)
            self._discard(w)
            if i is not None:
                tries[i] += 1
                if tries[i] < 2:
                    todo.appendleft(i)
                else:
                    out[i] = Outcome.CRASHED
                    self._count("crashes")

        try:
            while todo or busy:
                if todo and len(held) < limit:
                    held += self._take(limit - len(held), wait=not held, until=batch_end)
                    if held and batch_end == math.inf and batch_timeout_s is not None:
                        batch_end = time.monotonic() + batch_timeout_s
                for w in list(held):  # died() takes a worker out of held
                    if w.job is None and todo:
                        i = todo.popleft()
                        if w.send(i, *pairs[i]):
                            busy[w.fd] = w
                        else:
                            todo.appendleft(i)
                            died(w)
                if busy:
                    wake = min(min(w.sent_at for w in busy.values()) + timeout_s, batch_end)
                    for fd in _readable(list(busy), wake - time.monotonic()):
                        w = busy[fd]
                        msgs = w.read()
                        if msgs is None or any(m.get("id") != w.job for m in msgs):
                            died(w)
                        elif msgs:
                            out[w.job] = Outcome.EQUAL if msgs[-1].get("ok") else Outcome.DIFFERENT
                            busy.pop(fd)
                            w.job = None
                now = time.monotonic()
                for w in [w for w in busy.values() if now >= w.sent_at + timeout_s]:
                    out[w.job] = Outcome.TIMEOUT
                    self._count("timeouts")
                    held.remove(w)
                    busy.pop(w.fd)
                    self._discard(w)
                if now >= batch_end:  # stragglers and the never started: dropped together
                    for w in list(busy.values()):
                        held.remove(w)
                        self._discard(w)
                    cut = [w.job for w in busy.values()] + list(todo)
                    busy.clear()
                    todo.clear()
                    for i in cut:
                        out[i] = Outcome.CUT
                    self._count("cut", len(cut))
        finally:
            for w in held:
                if w.fd in busy:  # interrupted mid-pair (an exception): its state is unknown
                    self._discard(w)
                else:
                    w.job = None
                    self._give_back(w)
        return [o if o is not None else Outcome.CRASHED for o in out]

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._live -= len(idle)
            self._cond.notify_all()
        if os.getpid() == self._pid:
            for w in idle:
                w.kill()
                _spawner().submit(lambda p=w.proc: _reap(p))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_DEFAULT_POOL: VerifierPool | None = None
_POOL_LOCK = threading.Lock()


def default_pool() -> VerifierPool:
    """The process-wide pool (created on first use; worker count from ``VERL_BENCH_VERIFY_WORKERS``)."""
    global _DEFAULT_POOL
    with _POOL_LOCK:
        if _DEFAULT_POOL is None or _DEFAULT_POOL._closed:
            n = os.environ.get("VERL_BENCH_VERIFY_WORKERS")
            _DEFAULT_POOL = VerifierPool(n_workers=int(n) if n else None)
        return _DEFAULT_POOL


def shutdown_verifier() -> None:
    global _DEFAULT_POOL
    with _POOL_LOCK:
        old, _DEFAULT_POOL = _DEFAULT_POOL, None
    if old is not None:
        old.close()


atexit.register(shutdown_verifier)

# --------------------------------------------------------------------------------------------------
# verify: limits, fast path, cache, pool
# --------------------------------------------------------------------------------------------------


class _Cache:
    """Thread-safe LRU of math-verify outcomes per (pred, gold)."""

    def __init__(self, size: int):
        self.size = size
        self._d: OrderedDict[tuple[str, str], Outcome] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> Outcome | None:
        with self._lock:
            v = self._d.get(key)
            if v is not None:
                self._d.move_to_end(key)
            return v

    def put(self, key: tuple[str, str], value: Outcome) -> None:
        with self._lock:
            self._d[key] = value
            if len(self._d) > self.size:
                self._d.popitem(last=False)


_CACHE = _Cache(100_000)


def _prepared(pred, gold, max_chars: int) -> tuple[str, str] | None:
    """The pair as math-verify will see it (stripped, ASCII digits), or None when it is wrong as it stands:
    not text, empty, or longer than ``max_chars``."""
    if not isinstance(pred, str) or not isinstance(gold, str):
        return None
    pred, gold = pred.strip(), gold.strip()
    if not pred or not gold or len(pred) > max_chars or len(gold) > max_chars:
        return None
    return ascii_digits(pred), ascii_digits(gold)


def check_many(pairs: Sequence[tuple[str, str]], timeout_s: float = DEFAULT_TIMEOUT_S,
               batch_timeout_s: float | None = None, *, pool: VerifierPool | None = None,
               max_chars: int = MAX_ANSWER_CHARS, use_cache: bool = True) -> list[Outcome]:
    """The outcome for each (pred, gold): length limit, fast path, cache, then math-verify for the rest in
    one pool batch (each distinct pair once) under ``timeout_s`` per pair and ``batch_timeout_s`` (None:
    none) for the batch. Safe to call from any thread."""
    out: list[Outcome | None] = []
    todo: dict[tuple[str, str], list[int]] = {}
    for i, (pred, gold) in enumerate(pairs):
        key = _prepared(pred, gold, max_chars)
        fast = False if key is None else fast_check(*key)
        if fast is not None:
            out.append(Outcome.EQUAL if fast else Outcome.DIFFERENT)
            continue
        hit = _CACHE.get(key) if use_cache else None
        if hit is None:
            todo.setdefault(key, []).append(i)
        out.append(hit)
    if todo:
        keys = list(todo)
        for key, outcome in zip(keys, (pool or default_pool()).run(keys, timeout_s, batch_timeout_s)):
            if use_cache and outcome in _CACHED:
                _CACHE.put(key, outcome)
            for i in todo[key]:
                out[i] = outcome
    return out  # type: ignore[return-value]


def verify_many(pairs: Sequence[tuple[str, str]], timeout_s: float = DEFAULT_TIMEOUT_S, *,
                pool: VerifierPool | None = None, max_chars: int = MAX_ANSWER_CHARS,
                use_cache: bool = True) -> list[bool]:
    """Is each extracted answer equivalent to its gold? (``check_many`` without a batch deadline.)"""
    return [o.correct for o in check_many(pairs, timeout_s, None, pool=pool, max_chars=max_chars,
                                          use_cache=use_cache)]


def verify(pred: str, gold: str, timeout_s: float = DEFAULT_TIMEOUT_S, *, pool: VerifierPool | None = None,
           max_chars: int = MAX_ANSWER_CHARS, use_cache: bool = True) -> bool:
    """Is the extracted answer ``pred`` equivalent to ``gold``? False on a timeout."""
    return verify_many([(pred, gold)], timeout_s, pool=pool, max_chars=max_chars, use_cache=use_cache)[0]
