"""Mixed precision that trains: fp32 master weights and optimizer state, compute in the config's ``dtype``.

bf16 keeps 8 mantissa bits: a weight of 0.02 moves in steps of ~1e-4, so an AdamW update at lr 5e-7 rounds
to nothing when the optimizer steps bf16 parameters (tests/test_precision.py measures it). The training loop
therefore loads the model in fp32 (:data:`MASTER_DTYPE`), runs the scorer's forward/backward and the sampler
under :func:`autocast` of :func:`compute_dtype`, and calls :func:`master_weights_check` on its optimizer.
Under FSDP2, ``MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=MASTER_DTYPE)`` plays autocast's role.
:func:`rollout_copy` / :func:`refresh_rollout_copy` give the sampler a bf16 copy of the weights instead
(its KV cache then is bf16: under autocast with fp32 weights RoPE upcasts the keys to fp32).
"""

from __future__ import annotations

import contextlib
import copy

import torch

from verl_bench.errors import UserError

MASTER_DTYPE = torch.float32
_NAMES = {"fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16, "half": torch.float16}


class PrecisionError(UserError):
    """The optimizer was given parameters it cannot update faithfully (not fp32)."""


def parse_dtype(name) -> torch.dtype:
    """A ``torch.dtype`` or a name (``"bf16"``, ``"bfloat16"``, ``"torch.float32"``, ...) -> ``torch.dtype``."""
    if isinstance(name, torch.dtype):
        return name
    dtype = _NAMES.get(str(name).lower().removeprefix("torch."))
    if dtype is None:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(_NAMES)} or a torch.dtype")
    return dtype


def compute_dtype(name, device) -> torch.dtype:
    """The dtype forward/backward compute in: ``"auto"`` (or None) is bf16 on CUDA and fp32 elsewhere."""
    if name is None or name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return parse_dtype(name)


def autocast(device, dtype):
    """A context computing in ``dtype`` over fp32 weights (``torch.autocast``); a no-op for fp32.

    Gradients still reach the fp32 parameters in fp32. Autocast keeps its bf16 cast of each weight until the
    context exits: wrap one micro-batch's forward and backward, not a whole step.
    """
    dtype = parse_dtype(dtype)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def master_weights_check(optimizer: torch.optim.Optimizer) -> None:
    """Raise :class:`PrecisionError` if the optimizer would step any parameter that is not fp32."""
    bad = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.dtype != MASTER_DTYPE:
                bad[p.dtype] = bad.get(p.dtype, 0) + p.numel()
    if bad:
        found = ", ".join(f"{n:,} {str(dt).removeprefix('torch.')}" for dt, n in bad.items())
        raise PrecisionError(
            f"the optimizer would step {found} parameters: master weights must be float32 (an AdamW update at "
            "lr 5e-7 rounds to zero in bf16). Load the model in float32 and compute in `dtype` under "
            "verl_bench.precision.autocast (or FSDP2's MixedPrecisionPolicy)")


def rollout_copy(model: torch.nn.Module, dtype) -> torch.nn.Module:
    """A frozen copy of ``model`` in ``dtype`` for sampling (the model itself when ``dtype`` is its own)."""
    dtype = parse_dtype(dtype)
    if all(p.dtype == dtype for p in model.parameters()):
        return model
    clone = copy.deepcopy(model).to(dtype).eval()
    return clone.requires_grad_(False)


@torch.no_grad()
def refresh_rollout_copy(clone: torch.nn.Module, model: torch.nn.Module) -> None:
    """Copy the (updated) master weights into the rollout copy, rounding to its dtype. FSDP shards (DTensors)
    are gathered from every worker, one parameter at a time (every worker must call this)."""
    if clone is model:
        return
    from torch.distributed.tensor import DTensor

    for c, m in zip(clone.parameters(), model.parameters(), strict=True):
        c.copy_(m.full_tensor() if isinstance(m, DTensor) else m)
