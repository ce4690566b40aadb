"""Multi-node sweeps: with ``address``, Ray places trials across the nodes of a cluster.

A real two-node Ray cluster is started on this machine (``ray.cluster_utils.Cluster``: a head and a second
node, each its own raylet with 1 CPU). A 2-trial sweep asking 1 CPU per trial and running both at once
cannot fit on one node, so each trial reports a different Ray node id. The storage is a local folder,
shared here because both nodes are processes on the same machine (a real cluster needs shared storage).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_sweep import TINY_BASE, _write


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sweep_trials_land_on_two_nodes(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    from verl_bench.sweep import check_resources, load_sweep, run_sweep

    if ray.is_initialized():
        ray.shutdown()
    base = {**TINY_BASE, "steps": 2, "checkpoint_every": 2, "keep_checkpoints": 1}
    space = _write(tmp_path, base=base, space={"shaping.mode": {"grid": ["meta", "sum"]}},
                   search={"algo": "grid"}, scheduler={"kind": "none"}, num_samples=1,
                   resources={"cpu": 1}, max_concurrent=2, name="multinode")
    # a cluster may be bigger than this machine: with an address the local CPU check is skipped
    big = load_sweep(_write(tmp_path, name="big.yaml", resources={"cpu": 10_000}))
    check_resources(big, address="127.0.0.1:6379")

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        grid = run_sweep(space, address=cluster.address)
        nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        assert len(nodes) == 2
    finally:
        ray.shutdown()
        cluster.shutdown()

    assert len(grid) == 2 and not grid.errors, [r.error for r in grid]
    assert sorted(r.config["shaping"]["mode"] for r in grid) == ["meta", "sum"]
    placed = []
    for r in grid:
        assert r.metrics["step"] == 2 and "rank/er" in r.metrics
        df = r.metrics_dataframe
        assert df["node_id"].nunique() == 1  # every report of a trial names the node it ran on
        placed.append(r.metrics["node_id"])
        assert r.metrics["hostname"]
        assert (Path(r.path) / "run" / "metrics.jsonl").is_file()  # written to the shared storage
    assert set(placed) <= nodes
    assert len(set(placed)) == 2, f"both trials ran on the same node: {placed}"
