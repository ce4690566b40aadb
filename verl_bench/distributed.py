"""Ray Train wrapper: the plain ``train`` loop on N workers with DDP (gloo on CPU, NCCL on GPU).

The loop is not changed for Ray: each worker rebuilds the config, asks Ray for the checkpoint to resume
from, and hands ``train`` a reporter that forwards metrics (and, from rank 0, the HF checkpoint folder) to
``ray.train.report``. A Train run with the same (storage_path, name) resumes from its last checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

from verl_bench.config import TrainConfig, from_dict


def _worker(config: dict) -> None:
    import ray.train
    import torch

    from verl_bench.train import train

    cfg = from_dict(TrainConfig, config["cfg"])
    ctx = ray.train.get_context()
    if not cfg.ray.use_gpu:
        torch.set_num_threads(max(1, cfg.ray.cpus_per_worker))
    resume_from = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        resume_from = checkpoint.to_directory()

    def report(metrics: dict, ckpt_dir: Path | None) -> None:
        ckpt = ray.train.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir is not None else None
        ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=ckpt_dir.name if ckpt_dir else None)

    if ctx.get_world_rank() == 0:
        print(f"[verl-bench] {ctx.get_world_size()} worker(s), resume_from={resume_from}", flush=True)
    train(cfg, report=report, resume_from=resume_from)


def train_with_ray(cfg: TrainConfig, *, storage_path: str | None = None, name: str | None = None,
                   callbacks: list | None = None, max_failures: int = 0):
    """Fit a TorchTrainer running ``train`` on ``cfg.ray.num_workers`` workers. Returns the Ray Result."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    run_dir = Path(cfg.run_dir).resolve()  # workers may start in another cwd
    cfg_dict = cfg.to_dict()
    cfg_dict["run_dir"] = str(run_dir)
    init_ray(cfg.ray.address)
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"cfg": cfg_dict},
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


def init_ray(address: str | None = None, **kwargs) -> None:
    """Join the Ray cluster at ``address``, or start a local one, unless Ray is already up.

    The driver's offline switches, data root and model cache travel to every worker.
    """
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=kwargs.pop("log_to_driver", True),
                 runtime_env={"env_vars": {k: os.environ[k] for k in PASSED_ENV if k in os.environ}}, **kwargs)


# set on the driver, needed in workers (offline mode, data root, model cache)
PASSED_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "VERL_BENCH_DATA", "VERL_BENCH_CACHE",
               "TOKENIZERS_PARALLELISM", "HF_HOME")
