"""``verl-bench plan`` and the check ``train`` and ``sweep`` run before launch (see verl_bench/plan.py).

    verl-bench plan CONFIG.yaml [--gpus N] [--gpu-memory GB] [--strategy ddp|fsdp|both] [--set key=value]

prints the per-GPU memory table and whether it fits; exit status 1 when no shown strategy fits.
:func:`check_plan` raises a ConfigError naming the biggest term and what to change when a config cannot fit
the GPUs it will run on; on a machine without CUDA it does nothing unless told the GPUs.
"""

from __future__ import annotations

import sys

from verl_bench.config import ConfigError
from verl_bench.plan import (
    GB,
    HEADROOM,
    RESERVED_BYTES,
    STRATEGIES,
    MemoryPlan,
    dtype_name,
    param_count,
    plan_memory,
    usable_bytes,
    workload,
)
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
    gpus = max(1, spec.workers)
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


# ------------------------------------------------------------------------------------------ presentation
ADVICE = {
    "weights": "shard with fsdp over more GPUs, or use a smaller model",
    "gradients": "shard with fsdp over more GPUs, or use a smaller model",
    "optimizer": "shard with fsdp over more GPUs, or use a smaller model",
    "reference": "set algo.kl_coef: 0 (no reference model) or shard with fsdp",
    "rollout_copy": "use fewer / smaller parameters (a smaller model) or more GPUs with fsdp",
    "kv_cache": "lower rollout.prompts_per_step or rollout.max_new_tokens, or use more GPUs",
    "kv_cache_eval": "lower data.eval_size or rollout.eval_max_new_tokens, or use more GPUs",
    "sampler": "lower rollout.prompts_per_step or rollout.max_new_tokens",
    "compute_copy": "shard with fsdp (it gathers two layers at a time)",
    "activations": "set gradient_checkpointing: true, or lower micro_batch / set micro_batch_tokens",
    "activations_ckpt": "lower micro_batch or set micro_batch_tokens",
    "lm_head": "lower logits_chunk_tokens",
    "rollout_tensors": "lower rollout.prompts_per_step or rollout.max_new_tokens",
}


def verdict(plan: MemoryPlan, capacity_bytes: float, others: list[MemoryPlan] = ()) -> str:
    """One line: fits, or the biggest term, what to change, and whether another strategy would fit."""
    need, have = plan.peak / GB, usable_bytes(capacity_bytes) / GB
    if plan.fits(capacity_bytes):
        return f"{plan.strategy}: fits ({need:.1f} GB of {have:.1f} GB usable per GPU)"
    big = plan.biggest()
    msg = (f"{plan.strategy}: does not fit: {need:.1f} GB per GPU needed, {have:.1f} GB usable "
           f"({capacity_bytes / GB:.0f} GB GPUs); the biggest term is {big.label} ({big.bytes / GB:.1f} GB): "
           f"{ADVICE[big.key]}")
    alt = [o for o in others if o.strategy != plan.strategy and o.fits(capacity_bytes)]
    if alt:
        msg += f"; {alt[0].strategy} would fit ({alt[0].peak / GB:.1f} GB)"
    return msg


def format_plans(plans: list[MemoryPlan], capacity_bytes: float | None) -> str:
    """The table ``verl-bench plan`` prints: one column per strategy, GB per GPU."""
    a, w = plans[0].arch, plans[0].work
    seq = w.prompt_tokens + w.max_new_tokens
    lines = [
        (f"model: {a.name} ({param_count(a) / 1e9:.3g} B parameters, {a.layers} layers, hidden {a.hidden}, "
         f"vocab {a.vocab}{', tied embeddings' if a.tied else ''}; from {a.source})"),
        (f"per GPU of {w.gpus}: {w.prompts} prompts x {w.rollout_rows // max(w.prompts, 1)} samples = "
         f"{w.rollout_rows} rollout rows of {w.prompt_tokens} prompt (assumed) + {w.max_new_tokens} new tokens; "
         f"scoring micro-batch {w.micro_rows} rows x {seq} tokens; compute {dtype_name(w.compute_bytes)}"),
        "",
        f"{'GB per GPU':<62}" + "".join(f"{p.strategy:>10}" for p in plans),
    ]
    for phase, title in (("persistent", "held all run"), ("rollout", "rollout phase"),
                         ("update", "update phase"), ("info", "shown, not in the peak")):
        lines.append(f" {title}:")
        for i, t in enumerate(plans[0].terms):
            if t.phase == phase:
                lines.append(f"   {t.label:<59}" + "".join(f"{p.terms[i].bytes / GB:>10.2f}" for p in plans))
    lines.append(f" {'peak = held + max(rollout, update)':<61}" + "".join(f"{p.peak / GB:>10.2f}" for p in plans))
    if capacity_bytes:
        lines.append(f" {'usable of ' + f'{capacity_bytes / GB:.0f} GB':<61}"
                     + "".join(f"{usable_bytes(capacity_bytes) / GB:>10.2f}" for _ in plans))
        lines.append(f" {'fits':<61}" + "".join(f"{'yes' if p.fits(capacity_bytes) else 'NO':>10}" for p in plans))
        lines += ["", *(verdict(p, capacity_bytes, plans) for p in plans)]
    assumptions = (
        "assumptions: fp32 master weights, fp32 gradients, fp32 AdamW m and v; "
        f"compute in {dtype_name(w.compute_bytes)} (ddp: autocast, its bf16 weight casts alive through a micro-batch; fsdp: FSDP2 MixedPrecisionPolicy, "
        "~2 layers unsharded at a time + embeddings/LM head); rollouts sample a bf16 weight copy held all run; "
        "the reference model is bf16 (sharded under fsdp); "
        f"usable = (capacity - {RESERVED_BYTES / 2**30:.0f} GiB) x {1 - HEADROOM:.2f}; GB = 1e9 bytes")
    lines += ["", "* the other gradient_checkpointing setting, for comparison", assumptions]
    return "\n".join(lines)


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

