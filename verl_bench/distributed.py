"""The workers: their collectives (``World``), FSDP2 sharding, and the Ray Train wrapper (gloo on CPU, NCCL
on GPU).

``ray.strategy``: under ``ddp`` every worker holds the whole model and ``World.average_gradients`` averages
the gradients after backward. Under ``fsdp`` (``verl_bench.fsdp``) each decoder layer and the
scorer around the model are ``fully_shard``-ed: parameters, gradients and optimizer state are split over the
workers, FSDP reduce-scatters gradients in backward, and the World's collectives switch accordingly.

The loop is not changed for Ray: each worker rebuilds the config, asks Ray for the checkpoint to resume
from, and hands ``train`` a reporter that forwards metrics (and, from rank 0, the HF checkpoint folder) to
``ray.train.report``. A Train run with the same (storage_path, name) resumes from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from verl_bench.config import TrainConfig, from_dict


@dataclass
class World:
    """This process's place among the data-parallel workers (rank 0 of 1 when torch.distributed is off), and
    the few collectives the loop needs. The loop backpropagates micro-batch by micro-batch outside any module
    ``forward``, so DDP's hooks cannot average its gradients: ``average_gradients`` does it instead.
    ``sharded``: the model is FSDP-sharded (``verl_bench.fsdp``): gradients were reduce-scattered in backward,
    the gradient norm and the checkpointed state are gathered from every worker's shard."""

    rank: int = 0
    size: int = 1
    sharded: bool = False

    @classmethod
    def current(cls) -> World:
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate a 1-D/2-D tensor over workers (equal first dims), in rank order."""
        if self.size == 1:
            return t
        parts = [torch.empty_like(t) for _ in range(self.size)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    def gather_objects(self, obj) -> list:
        if self.size == 1:
            return [obj]
        out = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def average_gradients(self, params, bucket_elements: int = 1 << 24) -> None:
        """Replace each gradient by its mean over workers, as DDP would (a missing gradient counts as zero).

        One all-reduce per bucket of ~16M elements keeps the extra memory to one bucket. A no-op under FSDP,
        whose backward already left each worker the mean gradient of its shard.
        """
        if self.size == 1 or self.sharded:
            return
        params = [p for p in params if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        start = 0
        while start < len(params):
            end, elements = start, 0
            while end < len(params) and (end == start or elements + params[end].numel() <= bucket_elements):
                elements += params[end].numel()
                end += 1
            bucket = params[start:end]
            flat = torch.cat([p.grad.reshape(-1) for p in bucket])
            dist.all_reduce(flat)
            flat /= self.size
            for p, g in zip(bucket, flat.split([p.numel() for p in bucket])):
                p.grad.copy_(g.view_as(p))
            start = end

    def clip_grad_norm(self, params, max_norm: float) -> float:
        """Scale the gradients to a total 2-norm of at most ``max_norm``; returns the norm before scaling (of
        the whole gradient: under FSDP the shards' norms are combined over the workers)."""
        if self.sharded:
            from verl_bench.fsdp import clip_sharded_grad_norm

            return clip_sharded_grad_norm(params, max_norm)
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    def checkpoint_state(self, lm: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict | None, dict]:
        """(weights, optimizer state) to checkpoint, whole on rank 0. Weights None: ``lm``'s own (unsharded).
        Under FSDP every worker must call this (it gathers the shards) and the optimizer state is keyed by
        parameter name, so it loads on any number of workers."""
        if self.sharded:
            from verl_bench.fsdp import gathered_state

            return gathered_state(lm, optimizer)
        return None, optimizer.state_dict()

    def load_optimizer_state(self, lm: torch.nn.Module, optimizer: torch.optim.Optimizer, saved: dict) -> None:
        """Load a checkpoint's optimizer state, whichever strategy and number of workers wrote it."""
        from verl_bench.fsdp import load_optimizer_state

        load_optimizer_state(lm, optimizer, saved, sharded=self.sharded)

    def sum(self, values: list[float]) -> list[float]:
        if self.size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def _worker(config: dict) -> None:
    import ray.train

    from verl_bench.checkpoint import latest_checkpoint
    from verl_bench.train import train

    cfg = from_dict(TrainConfig, config["cfg"])
    ctx = ray.train.get_context()
    if not cfg.ray.use_gpu:
        torch.set_num_threads(max(1, cfg.ray.cpus_per_worker))
    checkpoint = ray.train.get_checkpoint()
    # what train() will resume from: Train's checkpoint (by its storage path), else the newest one in the
    # run's own folder
    carry = _sweep_carry(config.get("report_keys"),
                         checkpoint.path if checkpoint is not None else latest_checkpoint(cfg.run_dir))

    def report(metrics: dict, ckpt_dir: Path | None) -> None:
        if carry is not None:
            # the keys are the same on every rank, so all ranks skip (or send) the same reports
            row = carry(metrics)
            if row is None:
                return
            from verl_bench.sweep.report import clean

            metrics = clean(row)
        ckpt = ray.train.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir is not None else None
        ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=ckpt_dir.name if ckpt_dir else None)

    # a checkpoint on a local or shared disk is read in place; one in remote storage is downloaded first
    with checkpoint.as_directory() if checkpoint is not None else contextlib.nullcontext() as resume_from:
        if ctx.get_world_rank() == 0:
            print(f"[verl-bench] {ctx.get_world_size()} worker(s), resume_from={resume_from}", flush=True)
        train(cfg, report=report, resume_from=resume_from)


def _sweep_carry(report_keys: list[str] | None, resume_from):
    """In a sweep trial (``report_keys`` set), reports go to Tune as one running row (see
    ``verl_bench.sweep.report.Carry``) that also says where rank 0 runs, what it resumed from and the size of
    the torch process group the loop trains in."""
    if report_keys is None:
        return None
    import socket

    import ray

    from verl_bench.sweep.report import Carry

    return Carry(report_keys, extra={
        "world_size": dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1,
        "node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname(),
        "restored_from": str(resume_from or ""),
    })


def train_with_ray(cfg: TrainConfig, *, storage_path: str | None = None, name: str | None = None,
                   callbacks: list | None = None, max_failures: int = 0, report_keys: list[str] | None = None):
    """Fit a TorchTrainer running ``train`` on ``cfg.ray.num_workers`` workers. Returns the Ray Result.

    ``report_keys``: inside a sweep trial, the metrics Tune needs in every report (see ``_sweep_carry``).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    run_dir = Path(cfg.run_dir).resolve()  # workers may start in another cwd
    cfg_dict = cfg.to_dict()
    cfg_dict["run_dir"] = str(run_dir)
    init_ray(cfg.ray.address)
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"cfg": cfg_dict, "report_keys": report_keys},
        scaling_config=ScalingConfig(num_workers=cfg.ray.num_workers, use_gpu=cfg.ray.use_gpu,
                                     resources_per_worker={"CPU": cfg.ray.cpus_per_worker}),
        run_config=RunConfig(
            name=name or run_dir.name,
            storage_path=str(Path(storage_path).resolve()) if storage_path else str(run_dir.parent / "ray"),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints or None),
            callbacks=callbacks or None,
        ),
    )
    return trainer.fit()


def init_ray(address: str | None = None, dashboard: bool = False, **kwargs) -> None:
    """Join the Ray cluster at ``address``, or start a local one, unless Ray is already up.

    The driver's offline switches, data root and model cache travel to every worker. ``dashboard``: start
    the dashboard head, which serves Ray's state API; Ray Train V2 needs it to free the workers' placement
    group when a Train run's controller is killed (Tune stopping a Train-backed trial: ASHA, max_t), else
    that group's CPUs stay reserved and the next trial waits for its workers forever.

    A local cluster (no ``address``) is reachable from this machine only: its node address is 127.0.0.1, so
    its servers (GCS, raylet, object manager, workers, agents, dashboard, metrics) listen on the loopback
    interface. Ray maps a loopback node address to the machine's routable one unless it runs in its
    no-cluster mode (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, Ray's default on macOS and Windows): that mode is
    set while the cluster starts (its processes inherit it) and restored afterwards.
    """
    import ray

    if ray.is_initialized():
        return
    local = address is None
    if local:
        kwargs.setdefault("_node_ip_address", "127.0.0.1")
        kwargs.setdefault("dashboard_host", "127.0.0.1")
    with _loopback_only(local):
        ray.init(address=address, include_dashboard=dashboard, log_to_driver=kwargs.pop("log_to_driver", True),
                 runtime_env={"env_vars": {k: os.environ[k] for k in PASSED_ENV if k in os.environ}}, **kwargs)


@contextlib.contextmanager
def _loopback_only(on: bool):
    if not on:
        yield
        return
    from ray._private import ray_constants

    env, const = os.environ.get(_NO_CLUSTER_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_NO_CLUSTER_ENV], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = const
        if env is None:
            os.environ.pop(_NO_CLUSTER_ENV, None)
        else:
            os.environ[_NO_CLUSTER_ENV] = env


_NO_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


# set on the driver, needed in workers (offline mode, data root, model cache)
PASSED_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "VERL_BENCH_DATA", "VERL_BENCH_CACHE",
               "TOKENIZERS_PARALLELISM", "HF_HOME")
