"""The grader under attack, inside a Ray worker (where signal-based timeouts do nothing).

The hostile completions of ``verl_bench.hostile`` (towers of powers, huge factorials and sums, deep nesting,
million-character answers, malformed LaTeX, unicode look-alikes, text that would be dangerous if evaluated,
answers that try to match every gold) go through ``grade_batch`` in a Ray task on a local cluster. Every
one must be graded as expected (wrong, except equal numbers in other digit systems), nothing may be
executed, and the test prints how many cases it tried and the worst wall times; the bounds themselves are
asserted with slack by benchmarks/verifier_attack.py, not here (this machine's load varies).

The same local cluster shows that Ray listens on the loopback interface only.
"""

from __future__ import annotations

import ipaddress
import os

import psutil
import pytest

pytestmark = pytest.mark.slow

TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def local_ray():
    import ray

    from verl_bench.distributed import init_ray

    init_ray(num_cpus=2, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_hostile_completions_in_a_ray_worker(local_ray, tmp_path, capsys):
    from verl_bench.hostile import attack

    ray = local_ray
    marker = tmp_path / "pwned"
    res = ray.get(ray.remote(num_cpus=1)(attack).remote(str(marker), TIMEOUT_S))
    single, batch = res["single"], res["batch"]
    with capsys.disabled():
        print(f"\n[hostile] {res['cases']} cases graded in a Ray worker (timeout_s={TIMEOUT_S}, 2 workers + a spare; "
              f"{res['decided_by_deadline']} decided by a deadline); one hostile answer: worst {single['worst_s']:.2f} s "
              f"({single['worst_kind']}, {single['cases']} kinds); {batch['size']} hostile completions in one "
              f"grade_batch: {batch['wall_s']:.2f} s ({batch['timed_out']} timed out)")
    assert res["pid"] != os.getpid()
    assert res["wrong"] == [] and single["wrong"] == [] and batch["wrong"] == []
    assert batch["timed_out"] > 0  # the deadlines, not luck, ended the batch
    assert not marker.exists()


def test_local_cluster_listens_on_loopback_only(local_ray):
    """Every listening TCP socket of the processes a local cluster started is bound to the loopback
    interface (127.0.0.1, or ::ffff:127.0.0.1 for Ray's dual-stack gRPC servers); without the loopback
    node address the GCS and raylet listen on every interface (``*``)."""
    ray = local_ray
    assert ray.get(ray.remote(lambda: 1).remote()) == 1  # a worker process exists too
    listening = []
    for p in psutil.Process().children(recursive=True):
        try:
            listening += [(p.name(), c.laddr.ip, c.laddr.port) for c in p.net_connections(kind="inet")
                          if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            continue
    assert listening, "no Ray process listens at all: the check would be empty"
    assert all(_loopback(ip) for _, ip, _ in listening), listening


def _loopback(ip: str) -> bool:
    a = ipaddress.ip_address(ip)
    return a.is_loopback or (a.version == 6 and a.ipv4_mapped is not None and a.ipv4_mapped.is_loopback)
