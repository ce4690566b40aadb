"""Group advantage estimators and the clipped policy loss (METHOD.md sections 5-6).

Small pure torch functions in the style of verl's ``core_algos``:

* ``compute_advantage(name, rewards, group_ids)`` -> one advantage per response, from a registry of
  estimators ("grpo", "dr_grpo", "rloo"; add more with ``@register_estimator``).
* ``policy_loss(...)`` -> the PPO-clip surrogate with optional k3 KL and entropy terms.

Conventions: ``rewards`` is (B,) float, ``group_ids`` (B,) integer; responses to the same prompt share a group id,
groups need not be contiguous nor of equal size, and ids are arbitrary integers. Token tensors are (B, T) with a
``mask`` (B, T) marking response tokens; padding may be on either side and its values are never read.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = [
    "ESTIMATORS",
    "aggregate",
    "compute_advantage",
    "dr_grpo_advantage",
    "group_stats",
    "grpo_advantage",
    "kl_k3",
    "masked_mean",
    "masked_sum",
    "policy_loss",
    "register_estimator",
    "rloo_advantage",
]

GRPO_EPS = 1e-6  # METHOD.md: (r - mean) / (std + 1e-6)

AdvantageFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ESTIMATORS: dict[str, AdvantageFn] = {}


def register_estimator(name: str) -> Callable[[AdvantageFn], AdvantageFn]:
    """Decorator: make ``fn(rewards, group_ids) -> advantages`` available as ``compute_advantage(name, ...)``."""

    def deco(fn: AdvantageFn) -> AdvantageFn:
        if name in ESTIMATORS and ESTIMATORS[name] is not fn:
            # silently replacing a built-in would change every run that names it
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ESTIMATORS[name] = fn
        return fn

    return deco


def compute_advantage(name: str, rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Per-response advantages (B,) of the registered estimator ``name``; no gradient flows."""
    try:
        fn = ESTIMATORS[name]
    except KeyError:
        raise ValueError(f"unknown advantage estimator {name!r}; known: {sorted(ESTIMATORS)}") from None
    rewards, group_ids = _check_groups(rewards, group_ids)
    with torch.no_grad():  # advantages are targets, never differentiated
        return fn(rewards, group_ids)


def _check_groups(rewards: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rewards = torch.as_tensor(rewards)
    group_ids = torch.as_tensor(group_ids, device=rewards.device)
    if rewards.dim() != 1 or group_ids.shape != rewards.shape:
        raise ValueError(
            f"rewards and group_ids must both be (B,), got {tuple(rewards.shape)} and {tuple(group_ids.shape)}"
        )
    if group_ids.dtype.is_floating_point or group_ids.dtype == torch.bool:
        raise ValueError(f"group_ids must be an integer tensor, got {group_ids.dtype}")
    if not rewards.dtype.is_floating_point:
        rewards = rewards.to(torch.float32)
    return rewards, group_ids


def group_stats(rewards: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-response statistics of its group, each (B,) float64: (size, sum, sum of squared deviations, constant).

    Vectorised with ``index_add_`` over dense group indices from ``torch.unique``, so ids may be any integers
    and groups may be scattered through the batch. float64 because the sum of n float32 copies of x is then
    exact and sum / n gives x back: in float32 a group of equal rewards such as 0.1 leaves a deviation of
    ~1e-8 that (r - mean) / (std + 1e-6) blows up to ~1e-2 instead of 0. ``constant`` (max == min) makes the
    zero exact for float64 rewards too. The two-pass (centred) variance avoids E[r^2] - E[r]^2 cancellation.
    """
    r = rewards.to(torch.float64)
    _, inv = torch.unique(group_ids, return_inverse=True)
    n_groups = int(inv.max()) + 1 if inv.numel() else 0
    counts = r.new_zeros(n_groups).index_add_(0, inv, torch.ones_like(r))
    sums = r.new_zeros(n_groups).index_add_(0, inv, r)
    dev = r - (sums / counts)[inv]
    sq = r.new_zeros(n_groups).index_add_(0, inv, dev * dev)
    hi = r.new_full((n_groups,), -math.inf).scatter_reduce(0, inv, r, "amax")
    lo = r.new_full((n_groups,), math.inf).scatter_reduce(0, inv, r, "amin")
    return counts[inv], sums[inv], sq[inv], (hi == lo)[inv]


def _finish(adv: torch.Tensor, keep: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Zero where there is no within-group signal, back in the rewards' dtype."""
    return torch.where(keep, adv, torch.zeros_like(adv)).to(like.dtype)


@register_estimator("grpo")
def grpo_advantage(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """(r - group mean) / (unbiased group std + 1e-6); 0 for groups of size 1 (their std is undefined)."""
    n, s, sq, const = group_stats(rewards, group_ids)
    multi = n > 1
    std = torch.sqrt(sq / torch.where(multi, n - 1, torch.ones_like(n)))
    adv = (rewards.to(torch.float64) - s / n) / (std + GRPO_EPS)
    return _finish(adv, multi & ~const, rewards)


@register_estimator("dr_grpo")
def dr_grpo_advantage(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO: r - group mean (no std division, which up-weights near-uniform groups)."""
    n, s, _, const = group_stats(rewards, group_ids)
    return _finish(rewards.to(torch.float64) - s / n, (n > 1) & ~const, rewards)


@register_estimator("rloo")
def rloo_advantage(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """RLOO: r_i - mean of the OTHER members of its group (an unbiased baseline); 0 for singletons."""
    n, s, _, const = group_stats(rewards, group_ids)
    multi = n > 1
    r = rewards.to(torch.float64)
    adv = r - (s - r) / torch.where(multi, n - 1, torch.ones_like(n))
    return _finish(adv, multi & ~const, rewards)


# ----------------------------------------------------------------------------------------------- losses


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of x where mask; ``torch.where`` (not x * mask) so inf/nan in padding cannot leak in as nan."""
    x = torch.where(mask.bool(), x, torch.zeros_like(x))
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over masked entries (over all of them when dim is None); 0 where nothing is masked."""
    count = mask.bool().sum() if dim is None else mask.bool().sum(dim)
    return masked_sum(x, mask, dim) / count.clamp_min(1).to(x.dtype)


def aggregate(x: torch.Tensor, mask: torch.Tensor, agg: str = "token_mean") -> torch.Tensor:
    """Reduce a (B, T) token quantity to a scalar.

    token_mean: every response token of the batch weighs the same (long responses weigh more).
    seq_mean: every non-empty response weighs the same (mean of per-response token means); empty responses are
    left out rather than counted as zero, which would shrink the loss by the fraction of empty responses.
    """
    if agg == "token_mean":
        return masked_mean(x, mask)
    if agg == "seq_mean":
        lengths = mask.bool().sum(dim=-1)
        per_seq = masked_sum(x, mask, dim=-1) / lengths.clamp_min(1).to(x.dtype)
        return masked_mean(per_seq, lengths > 0)
    raise ValueError(f"agg must be 'token_mean' or 'seq_mean', got {agg!r}")


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Low-variance k3 estimate of KL(pi || ref) per token: exp(ref - logp) - (ref - logp) - 1 (>= 0).

    The log-ratio is clamped to [-20, 20] and the result to [0, 10] as in verl's ``low_var_kl``: one token
    with a vanishing reference probability would otherwise overflow exp and dominate the batch.
    """
    d = (ref_logp - logp).clamp(-20.0, 20.0)
    return (torch.exp(d) - d - 1.0).clamp(max=10.0)


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    agg: str = "token_mean",
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clip loss: agg(max(-A r, -A clip(r, 1-cl, 1+ch))) + kl_coef agg(k3) - entropy_coef agg(H).

    logp/old_logp/ref_logp/entropy are (B, T); advantages (B, T) or (B,) (broadcast over tokens). Gradients
    flow through ``logp`` (and ``entropy``) only. Returns (loss, stats); stats are detached 0-d tensors
    (pg_loss, clip_frac, kl, entropy, ratio_mean, ratio_max) so logging does not force a device sync per
    micro-batch; call ``float()`` on them when logging.
    """
    if clip_high is None:
        clip_high = clip_low  # symmetric by default; DAPO-style "clip higher" sets it explicitly
    if clip_low < 0 or clip_high < 0:
        raise ValueError(f"clip_low ({clip_low}) and clip_high ({clip_high}) must be >= 0")
    if logp.shape != mask.shape or old_logp.shape != mask.shape:
        raise ValueError(
            f"logp {tuple(logp.shape)}, old_logp {tuple(old_logp.shape)} and mask {tuple(mask.shape)} must match"
        )
    m = mask.bool()
    adv = advantages.detach()
    if adv.dim() == 1:
        adv = adv[:, None]
    adv = torch.where(m, adv.to(logp.dtype), torch.zeros_like(logp))

    # padding positions get log-ratio 0 (ratio 1): whatever the model wrote there cannot overflow exp or
    # reach the loss or the gradient. The +-20 clamp is verl's guard against a single exploding ratio.
    # Cleaning the inputs (not just masking the outputs) also keeps nan out of the BACKWARD pass, where
    # 0 * nan would otherwise still be nan.
    logp = torch.where(m, logp, torch.zeros_like(logp))
    old = torch.where(m, old_logp.detach(), torch.zeros_like(logp))
    log_ratio = (logp - old).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    loss_unclipped = -adv * ratio
    loss_clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    # the max is the pessimistic bound: moving the ratio outside [1-cl, 1+ch] never earns more
    pg_tok = torch.maximum(loss_unclipped, loss_clipped)
    pg_loss = aggregate(pg_tok, m, agg)
    loss = pg_loss

    zero = pg_loss.new_zeros(())
    kl = zero
    if ref_logp is not None:
        ref = torch.where(m, ref_logp.detach(), torch.zeros_like(logp))  # padding: ref == logp == 0, k3 = 0
        kl = aggregate(kl_k3(logp, ref), m, agg)
        if kl_coef != 0.0:
            loss = loss + kl_coef * kl
    ent = zero
    if entropy is not None:
        ent = aggregate(torch.where(m, entropy, torch.zeros_like(entropy)), m, agg)
        if entropy_coef != 0.0:
            loss = loss - entropy_coef * ent  # a bonus: higher entropy lowers the loss

    with torch.no_grad():
        clipped = (loss_clipped > loss_unclipped).to(logp.dtype)  # the clipped branch was the active one
        stats = {
            "pg_loss": pg_loss.detach(),
            "clip_frac": masked_mean(clipped, m),
            "kl": kl.detach(),
            "entropy": ent.detach(),
            "ratio_mean": masked_mean(ratio, m),
            "ratio_max": torch.where(m, ratio, torch.zeros_like(ratio)).amax(),  # 0 if nothing is masked
        }
    return loss, stats
