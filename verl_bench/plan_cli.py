"""``verl-bench plan`` and the check ``train`` and ``sweep`` run before launch (see verl_bench/plan.py).

    verl-bench plan CONFIG.yaml [--gpus N] [--gpu-memory GB] [--strategy ddp|fsdp|both] [--set key=value]

prints the per-GPU memory table and whether it fits; exit status 1 when no shown strategy fits.
:func:`check_plan` raises a ConfigError naming the biggest term and what to change when a config cannot fit
the GPUs it will run on; on a machine without CUDA it does nothing unless told the GPUs.
"""

from __future__ import annotations

import sys

from verl_bench.config import ConfigError
from verl_bench.plan import GB, STRATEGIES, format_plans, plan_memory, verdict, workload
from verl_bench.plan_arch import UnknownArchitecture, model_arch

DEFAULT_GPU_GB = 80.0  # the paper's GPUs; used by `plan` when no GPU is visible and no --gpu-memory given
PROMPT_TOKENS = 512  # padded prompt length the plan assumes (not in the config)


def plans_for(cfg, gpus: int | None = None, strategies=STRATEGIES, prompt_tokens: int = PROMPT_TOKENS):
    arch = model_arch(cfg.model)
    work = workload(cfg, gpus, prompt_tokens)
    return [plan_memory(arch, work, s) for s in strategies]


def local_gpu_bytes() -> float | None:
    """Total memory of the first visible CUDA device, or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    return float(torch.cuda.get_device_properties(0).total_memory)


def _runs_on_gpu(cfg) -> bool:
    return cfg.device.startswith("cuda") or (cfg.device == "auto" and local_gpu_bytes() is not None)


def check_plan(cfg, gpus: int | None = None, gpu_memory_gb: float | None = None, strategy: str | None = None):
    """Refuse (ConfigError) a config whose memory plan cannot fit its GPUs; returns the plan, or None when
    there is nothing to check (no CUDA here and neither ``gpus`` nor ``gpu_memory_gb`` given).

    ``strategy``: default ``cfg.ray.strategy`` when the config has that key, else ``ddp``. ``gpus``: default
    ``ray.num_workers``. ``gpu_memory_gb``: default the local GPU's memory.
    """
    if gpus is None and gpu_memory_gb is None and not _runs_on_gpu(cfg):
        return None
    capacity = gpu_memory_gb * GB if gpu_memory_gb else local_gpu_bytes() or DEFAULT_GPU_GB * GB
    strategy = strategy or getattr(cfg.ray, "strategy", "ddp")
    try:
        plans = plans_for(cfg, gpus)
    except UnknownArchitecture as e:  # a model the plan cannot count is not refused for it
        print(f"warning: no memory plan: {e}", file=sys.stderr)
        return None
    plan = next(p for p in plans if p.strategy == strategy)
    if not plan.fits(capacity):
        raise ConfigError(f"memory plan for {cfg.model} on {plan.work.gpus} GPU(s): {verdict(plan, capacity, plans)} "
                          "(details: verl-bench plan CONFIG.yaml)")
    return plan


def check_sweep_plan(spec) -> None:
    """``check_plan`` for a sweep's base config and, one dimension at a time, each choice / upper bound of
    its space (memory grows with every numeric key a space holds: rollout sizes, micro-batches). A trial
    asking for a fraction of a GPU gets that fraction of its memory."""
    have = local_gpu_bytes()
    if have is None:
        return
    gpus = spec.workers if spec.workers > 1 else 1
    fraction = 1.0 if spec.workers > 1 else min(spec.gpu, 1.0)
    if fraction <= 0:
        return  # CPU trials
    candidates = [{}] + [{d.key: v} for d in spec.space
                         for v in (d.args if d.kind in ("choice", "grid") else d.args[1:2])]
    for sampled in candidates:
        try:
            check_plan(spec.trial_config(sampled), gpus=gpus, gpu_memory_gb=have * fraction / GB)
        except ConfigError as e:
            where = f" with {sampled}" if sampled else ""
            raise ConfigError(f"{spec.source}: a trial{where}: {e}") from None


def _cmd_plan(args) -> int:
    from verl_bench.config import load_config

    for flag, value, low in (("--gpus", args.gpus, 1), ("--gpu-memory", args.gpu_memory, 1e-9),
                             ("--prompt-tokens", args.prompt_tokens, 1)):
        if value is not None and value < low:
            raise ConfigError(f"{flag}: must be positive, got {value}")
    cfg = load_config(args.config, args.set)
    strategies = STRATEGIES if args.strategy == "both" else (args.strategy,)
    capacity = args.gpu_memory * GB if args.gpu_memory else local_gpu_bytes()
    note = ""
    if capacity is None:
        capacity, note = DEFAULT_GPU_GB * GB, f" (no GPU here and no --gpu-memory: assuming {DEFAULT_GPU_GB:.0f} GB)"
    plans = plans_for(cfg, args.gpus, strategies, args.prompt_tokens)
    print(f"memory plan for {args.config} on {plans[0].work.gpus} GPU(s) x {capacity / GB:.0f} GB{note}")
    print(format_plans(plans, capacity))
    return 0 if any(p.fits(capacity) for p in plans) else 1


def add_plan_parser(subparsers) -> None:
    """Register ``verl-bench plan`` on an argparse subparsers object."""
    p = subparsers.add_parser("plan", help="per-GPU memory plan of a config (ddp and fsdp) and whether it fits")
    p.add_argument("config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--gpus", type=int, default=None, help="GPUs (default: ray.num_workers)")
    p.add_argument("--gpu-memory", type=float, default=None, metavar="GB",
                   help=f"memory per GPU in GB (default: the local GPU's, else {DEFAULT_GPU_GB:.0f})")
    p.add_argument("--strategy", choices=[*STRATEGIES, "both"], default="both")
    p.add_argument("--prompt-tokens", type=int, default=PROMPT_TOKENS,
                   help=f"padded prompt length to assume (default {PROMPT_TOKENS})")
    p.set_defaults(fn=_cmd_plan)

