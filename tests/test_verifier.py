"""The verifier: math-verify in worker processes under per-answer and per-batch deadlines.

Mechanisms, not wall-clock bounds (those are measured in benchmarks/verifier_attack.py and printed by
tests/test_verifier_hostile.py): what times out is marked so, stragglers are cut together, killed workers
are replaced, memory bombs hit the address-space limit, nothing is evaluated, workers die with the parent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from verl_bench.verifier import (
    MAX_ANSWER_CHARS,
    Outcome,
    VerifierPool,
    check_many,
    shutdown_verifier,
    verify,
    verify_many,
)

TOWER = "9^{9^{9^{9}}}"  # sympy hangs on it
HEARD = 30.0  # per-answer deadline where a verdict (not a timeout) is the point: generous for a loaded machine


def data_root() -> Path:
    return Path(os.environ.get("VERL_BENCH_DATA") or "/work/shared/data/math")


@pytest.fixture(scope="module")
def pool():
    p = VerifierPool(n_workers=2, spares=1)
    p.warmup()  # worker start-up (sympy import) is not part of any deadline
    yield p
    p.close()


def _wait_for_workers(pool: VerifierPool, n: int, timeout_s: float = 120.0) -> list[int]:
    """Replacements start in the background: wait until ``n`` are ready (so a test starts from a warm pool)."""
    end = time.monotonic() + timeout_s
    while len(pool.worker_pids) < n and time.monotonic() < end:
        time.sleep(0.1)
    return pool.worker_pids


@pytest.mark.parametrize(
    "pred,gold",
    [
        ("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2"),
        ("(3, \\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("-q + p", "p - q"),
        ("2\\sqrt{3}", "\\sqrt{12}"),
        ("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}"),
        ("\\frac{9}{2}\\times 10^{33}", "4.5e33"),
        ("384, 48", "48, 384"),  # two answers in either order
        ("\\sqrt{٤}", "2"),  # other digit systems: read as ASCII on the math-verify path too
    ],
)
def test_equivalent_forms_math_verify(pred, gold, pool):
    calls = pool.stats["calls"]
    assert verify(pred, gold, HEARD, pool=pool, use_cache=False)
    assert pool.stats["calls"] == calls + 1  # needed sympy


@pytest.mark.parametrize(
    "pred,gold",
    [("\\frac{1}{3}", "0.5"), ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt{2}}{2}"), ("p + q", "p - q"),
     ("48384", "48, 384"), ("48, 384", "48384"), ("3", "2"), ("", "1"), ("1", "")],
)
def test_wrong_answers_fail(pred, gold, pool):
    assert not verify(pred, gold, HEARD, pool=pool, use_cache=False)


def test_fast_path_needs_no_worker(pool):
    calls = pool.stats["calls"]
    assert verify_many([("0.5", "\\frac{1}{2}"), ("(C)", "C"), ("3", "2")], pool=pool) == [True, True, False]
    assert pool.stats["calls"] == calls


def test_length_limits_refuse_without_parsing(pool):
    calls = pool.stats["calls"]
    long_pred = "1" * (MAX_ANSWER_CHARS + 1)
    assert not verify(long_pred, long_pred, pool=pool)  # even when identical
    assert not verify("\\sqrt{" * 600 + "2" + "}" * 600, "2", pool=pool)
    assert not verify("1", "x" * (MAX_ANSWER_CHARS + 5), pool=pool)
    assert not verify(None, "1", pool=pool)  # type: ignore[arg-type]
    assert pool.stats["calls"] == calls


def test_distinct_pairs_checked_once(pool):
    preds = [f"\\frac{{{k}\\sqrt{{2}}}}{{2}}" for k in range(1, 9)]
    golds = [f"{k}/\\sqrt{{2}}" for k in range(1, 9)]
    calls = pool.stats["calls"]
    assert verify_many(list(zip(preds, golds)) * 3, HEARD, pool=pool, use_cache=False) == [True] * 24
    assert pool.stats["calls"] - calls == 8


def test_timeout_off_the_main_thread_kills_and_replaces(pool):
    """From a worker thread (where signal-based timeouts do nothing) the hanging answer is a TIMEOUT, its
    worker is killed, a warm worker takes its place, and correct answers still verify."""
    before = _wait_for_workers(pool, 3)
    out = {}
    th = threading.Thread(target=lambda: out.update(r=check_many([(TOWER, "1")], 1.0, pool=pool, use_cache=False)))
    th.start()
    th.join(timeout=60)
    assert out["r"] == [Outcome.TIMEOUT]
    _, alive = psutil.wait_procs([psutil.Process(p) for p in before if psutil.pid_exists(p)], timeout=3)
    assert len(before) - len(alive) == 1  # exactly the stuck worker was killed
    assert verify("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2", HEARD, pool=pool, use_cache=False)
    assert len(set(before) & set(_wait_for_workers(pool, 3))) == 2  # and replaced


def test_batch_deadline_cuts_stragglers_together(pool):
    """Ten hanging answers and two good ones in one batch: each worker gets at most its own timeout, the
    batch ends at its deadline, and everything unanswered by then is CUT (not cached)."""
    _wait_for_workers(pool, 3)
    pairs = [("\\sqrt{8}", "2\\sqrt{2}"), ("\\frac{2}{\\sqrt{2}}", "\\sqrt{2}")] + [(TOWER, str(k)) for k in range(10)]
    out = check_many(pairs, timeout_s=1.0, batch_timeout_s=2.0, pool=pool)
    assert all(o is Outcome.EQUAL or o.timed_out for o in out[:2])  # right, unless a loaded machine is slower
    hostile = out[2:]
    assert set(hostile) <= {Outcome.TIMEOUT, Outcome.CUT}
    assert hostile.count(Outcome.TIMEOUT) <= 2 * 2  # each of the 2 slots can run at most 2 full timeouts
    assert hostile.count(Outcome.CUT) >= 10 - 4
    # a cut pair was never fully heard: the next batch checks it again; a full timeout is remembered
    cut = next(p for p, o in zip(pairs[2:], hostile) if o is Outcome.CUT)
    calls = pool.stats["calls"]
    assert check_many([cut], timeout_s=0.5, pool=pool) == [Outcome.TIMEOUT]
    assert pool.stats["calls"] == calls + 1
    assert check_many([cut], timeout_s=0.5, pool=pool) == [Outcome.TIMEOUT]
    assert pool.stats["calls"] == calls + 1  # cached


def test_pool_recovers_from_workers_killed_outside(pool):
    pids = _wait_for_workers(pool, 3)
    for pid in pids[:2]:
        os.kill(pid, signal.SIGKILL)
    psutil.wait_procs([psutil.Process(p) for p in pids[:2] if psutil.pid_exists(p)], timeout=10)
    pairs = [(f"\\frac{{{k}}}{{\\sqrt{{2}}}}", f"\\frac{{{k}\\sqrt{{2}}}}{{2}}") for k in range(1, 6)]
    assert verify_many(pairs, HEARD, pool=pool, use_cache=False) == [True] * 5  # dead workers noticed, pairs retried
    assert len(_wait_for_workers(pool, 3)) == 3


def test_hanging_answers_back_to_back_get_forked_workers():
    """Hanging answers one call after another on 1 worker + 1 spare: each kills its worker, and the
    replacement is forked by the zygote (milliseconds) instead of started (an import of seconds), so no call
    waits for a start. The bound is generous (a loaded machine); benchmarks/verifier_attack.py measures."""
    from verl_bench import verifier

    with VerifierPool(n_workers=1, spares=1) as small:
        small.warmup()
        zygote = verifier._ZYGOTE.pid
        for k in range(5):
            pids = small.worker_pids
            assert pids and all(psutil.Process(p).ppid() == zygote for p in pids)
            t0 = time.monotonic()
            assert check_many([(TOWER, f"b2b{k}")], timeout_s=1.0, pool=small, use_cache=False) == [Outcome.TIMEOUT]
            assert time.monotonic() - t0 < 1.0 + 5.0
        assert small.stats["restarts"] == 5  # every stuck worker killed
        replaced = _wait_for_workers(small, 2)  # and replaced by forks of the same zygote
        assert len(replaced) == 2 and all(psutil.Process(p).ppid() == zygote for p in replaced)
        assert verify("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2", HEARD, pool=small, use_cache=False)


def test_pool_survives_its_zygote_dying():
    """SIGKILL the zygote: its workers die with it; the pool notices, starts workers as processes of its
    own while a new zygote warms up in the background, and answers stay right."""
    from verl_bench import verifier

    with VerifierPool(n_workers=1, spares=1) as small:
        small.warmup()
        old = verifier._ZYGOTE.pid
        pids = small.worker_pids
        os.kill(old, signal.SIGKILL)
        _, alive = psutil.wait_procs([psutil.Process(p) for p in [old, *pids] if psutil.pid_exists(p)], timeout=30)
        assert not alive  # the workers died with their zygote
        assert verify("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2", HEARD, pool=small, use_cache=False)
        assert check_many([(TOWER, "zygote")], timeout_s=1.0, pool=small, use_cache=False) == [Outcome.TIMEOUT]
        assert verify("\\frac{2}{\\sqrt{2}}", "\\sqrt{2}", HEARD, pool=small, use_cache=False)
        assert verifier._ZYGOTE is not None and verifier._ZYGOTE.pid != old


def test_memory_bomb_hits_the_address_space_limit():
    """A worker limited to 320 MB (it needs about 150) expanding (x+1)^100000 gets MemoryError: the answer
    is wrong long before its (generous) timeout, the worker lives on, the caller's memory is untouched."""
    with VerifierPool(n_workers=1, spares=0, memory_limit_mb=320) as small:
        small.warmup()
        pid = small.worker_pids[0]
        limits = Path(f"/proc/{pid}/limits").read_text()
        assert any(line.startswith("Max address space") and str(320 * 2**20) in line for line in limits.splitlines())
        rss = psutil.Process().memory_info().rss
        assert check_many([("(x+1)^{100000}", "x^2+1")], timeout_s=60.0, pool=small, use_cache=False) == [
            Outcome.DIFFERENT]
        assert psutil.Process().memory_info().rss - rss < 50 * 2**20
        assert verify("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2", HEARD, pool=small, use_cache=False)


def test_answers_are_never_evaluated(pool, tmp_path):
    marker = tmp_path / "pwned"
    code = [f"__import__('os').system('touch {marker}')",
            f"(lambda: __import__('os').system('touch {marker}'))()",
            f"open('{marker}', 'w').write('x')",
            f"\\text{{{{__import__('os').system('touch {marker}')}}}}",
            f"1+__import__('os').system('touch {marker}')"]
    assert not any(verify_many([(c, "0") for c in code], timeout_s=5.0, pool=pool, use_cache=False))
    assert not marker.exists()


def test_default_pool_from_a_thread():
    """verify() without an explicit pool uses the process-wide pool and works off the main thread."""
    out = {}
    th = threading.Thread(target=lambda: out.update(ok=verify("\\frac{2}{\\sqrt{2}}", "\\sqrt{2}", HEARD, use_cache=False)))
    th.start()
    th.join(timeout=120)
    assert out.get("ok") is True
    shutdown_verifier()


def test_workers_die_with_their_parent(tmp_path):
    """SIGKILL the process that owns a pool while one worker is stuck in sympy: no worker outlives it."""
    script = textwrap.dedent(f"""
        import sys, threading
        from verl_bench.verifier import VerifierPool, check_many
        pool = VerifierPool(n_workers=1, spares=1)
        pool.warmup()
        print(" ".join(map(str, pool.worker_pids)), flush=True)
        threading.Thread(target=check_many, args=([("{TOWER}", "1")], 600.0), kwargs={{"pool": pool}}).start()
        sys.stdin.readline()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2
        time.sleep(1.0)  # the tower is now inside sympy in one of them
        proc.kill()
        proc.wait(timeout=30)
        _, alive = psutil.wait_procs([psutil.Process(p) for p in pids if psutil.pid_exists(p)], timeout=30)
        assert not alive
    finally:
        proc.kill()


@pytest.mark.skipif(not data_root().is_dir(), reason="benchmark data folder not found (set VERL_BENCH_DATA)")
def test_real_golds_verify_against_their_solutions(pool):
    from verl_bench.answers import extract_answer
    from verl_bench.data import load_problems

    m500 = load_problems("math500", data_root=data_root(), limit=40)
    answers = [extract_answer(p.solution) for p in m500]
    assert all(boxed for _, boxed in answers)
    assert all(verify_many([(a, p.gold) for (a, _), p in zip(answers, m500)], HEARD, pool=pool))
    gsm = load_problems("gsm8k", data_root=data_root(), limit=40)
    assert all(extract_answer(p.solution)[0].replace(",", "") == p.gold for p in gsm)
