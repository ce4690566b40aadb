"""FSDP2 (``ray.strategy: fsdp``): the policy's weights, gradients and AdamW state sharded over the workers.

``shard_models`` wraps each decoder layer with ``fully_shard``, then the ``ResponseScorer`` around the model
(the root unit: embeddings, final norm and LM head, so tied embeddings stay one parameter). The scorer runs
the decoder body and the LM head itself, never the model's ``forward``, so FSDP would not see when the
root's parameters are needed: :class:`ShardedScorer` makes each scoring micro-batch (and the shared-prompt
pass) one FSDP forward (``register_fsdp_forward_method``): gathered before it, resharded after it, and its
backward ends with a reduce-scatter into the sharded gradients. Those sum over micro-batches, so
accumulating micro-batches equals one pass, and the reduce-scatter averages over workers as DDP does
(tests/test_fsdp.py measures both).

Below fp32 the ``MixedPrecisionPolicy`` gathers the parameters in the compute dtype and reduces gradients in
fp32, in place of autocast; the master weights and AdamW's state stay fp32 shards. The engines sample from
a whole copy of the weights in the compute dtype, refreshed from the shards after each update
(``precision.refresh_rollout_copy``), so the sampler and the rank metrics read the same hidden states as
under ddp. Checkpoints hold the full state dict gathered on rank 0 (a plain HF folder) and the full
optimizer state keyed by parameter name, which loads on any number of workers, or under ddp.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings

import torch
import torch.distributed as dist

from verl_bench.policy import ResponseScorer
from verl_bench.precision import MASTER_DTYPE
from verl_bench.rollout import decoder_and_head


class ShardedScorer(ResponseScorer):
    """A ``ResponseScorer`` whose every micro-batch is one FSDP forward of the root unit (see the module doc)."""

    def _micro_batches(self, *args, **kwargs):
        batches = super()._micro_batches(*args, **kwargs)
        while (scored := self._score_next(batches)) is not None:
            yield scored

    def _score_next(self, batches):
        """Score the next micro-batch (body and LM head); None when there is none."""
        return next(batches, None)

    def plan_micro_batches(self, lengths, max_rows, max_tokens) -> list[torch.Tensor]:
        """Every worker runs as many micro-batches as the one with the most (each is a gather of every layer,
        a collective): the local plan's largest micro-batches are halved until it has that many. Workers hold
        equal numbers of rows, so it always can."""
        batches = super().plan_micro_batches(lengths, max_rows, max_tokens)
        count = torch.tensor([len(batches)], device=lengths.device)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        while len(batches) < int(count):
            i = max(range(len(batches)), key=lambda j: len(batches[j]))
            rows = batches.pop(i)
            batches[i:i] = [rows[: (len(rows) + 1) // 2], rows[(len(rows) + 1) // 2 :]]
        return batches


def shard_models(world, lm: torch.nn.Module, sampler: torch.nn.Module, ref_scorer: ResponseScorer | None,
                 compute: torch.dtype, device: torch.device):
    """Shard ``lm`` (fp32 master weights) and the frozen reference over every worker; returns
    ``(world marked sharded, scorer, reference scorer or None, sampler)``. The sampler stays whole: ``sampler``
    itself when it is a copy (``precision.rollout_copy``), else (it is ``lm``) a copy of ``lm`` in
    ``compute``. Build the optimizer after this, over ``lm.parameters()`` (now shards)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy

    ensure_process_group(device)
    if sampler is lm:
        sampler = copy.deepcopy(lm).to(compute).eval().requires_grad_(False)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=None if compute == MASTER_DTYPE else compute, reduce_dtype=MASTER_DTYPE)
    scorer = shard_scorer(lm, mesh, policy)
    if ref_scorer is not None:  # already in the compute dtype: gathered as it is
        ref_scorer = shard_scorer(ref_scorer.lm, mesh, MixedPrecisionPolicy())
    return dataclasses.replace(world, sharded=True), scorer, ref_scorer, sampler


def shard_scorer(lm: torch.nn.Module, mesh, mp_policy) -> ShardedScorer:
    """``fully_shard`` each decoder layer of ``lm``, then a ``ShardedScorer`` around it (the root unit)."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    for layer in decoder_layers(lm):
        fully_shard(layer, mesh=mesh, mp_policy=mp_policy)
    scorer = ShardedScorer(lm)
    # the root is resharded after each forward too, so a no-grad pass never leaves gathered copies that an
    # optimizer step would make stale
    fully_shard(scorer, mesh=mesh, mp_policy=mp_policy, reshard_after_forward=True)
    for method in ("_score_next", "_prompt_pass"):
        register_fsdp_forward_method(scorer, method)
    # a micro-batch's hidden states are a slice of the body's output; nothing modifies them in place
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    return scorer


def decoder_layers(lm: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder layers (the classes HF's ``_no_split_modules`` names), each one FSDP unit."""
    names = set(getattr(lm, "_no_split_modules", None) or ())
    layers = [m for m in decoder_and_head(lm)[0].modules() if type(m).__name__ in names]
    if not layers:
        raise TypeError(f"{type(lm).__name__}: no decoder layers to shard (_no_split_modules: {sorted(names)})")
    return layers


def ensure_process_group(device: torch.device) -> None:
    """FSDP needs a process group, even for one worker outside Ray Train: a private single-process one."""
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0,
                                world_size=1)


def clip_sharded_grad_norm(params, max_norm: float) -> float:
    """``clip_grad_norm_`` over sharded (DTensor) gradients: the shards' norms combined over the workers
    first, so every worker scales by, and reports, the norm of the whole gradient."""
    from torch.distributed.tensor import DTensor

    params = [p for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm([p.grad for p in params])
    if isinstance(total, DTensor):
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return float(total)


def gathered_state(lm: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(full state dict, full optimizer state keyed by parameter name) on rank 0's CPU, {} on the others.
    Every worker must call it (the shards are gathered one tensor at a time)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    whole = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(lm, options=whole)
    for names in tied_names(lm):  # one tensor again, so save_pretrained writes a tied weight once
        if names[0] in weights:
            for alias in names[1:]:
                weights[alias] = weights[names[0]]
    return weights, get_optimizer_state_dict(lm, optimizer, options=whole)


def tied_names(lm: torch.nn.Module) -> list[list[str]]:
    """Names that share one parameter (tied input and output embeddings), each group in ``lm``'s order."""
    groups: dict[int, list[str]] = {}
    for name, p in lm.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def load_optimizer_state(lm: torch.nn.Module, optimizer: torch.optim.Optimizer, saved: dict, *, sharded: bool) -> None:
    """Load ``saved`` into ``optimizer`` (over ``lm``'s parameters, sharded or not). ``saved`` is either a
    ddp checkpoint's ``optimizer.state_dict()`` (parameters numbered in ``lm.parameters()`` order) or an fsdp
    checkpoint's full state keyed by name; each worker keeps its own shard of it."""
    by_name = any(isinstance(p, str) for group in saved["param_groups"] for p in group["params"])
    if not by_name and not sharded:
        optimizer.load_state_dict(saved)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    if not by_name:
        names = [name for name, _ in lm.named_parameters()]
        saved = {"state": {names[i]: s for i, s in saved["state"].items()},
                 "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in saved["param_groups"]]}
    set_optimizer_state_dict(lm, optimizer, saved, options=StateDictOptions(full_state_dict=True))
