"""One forward pass of the policy over a rollout: response log-probs, entropies and hidden states.

The decoder body's output (``last_hidden_state``, i.e. the last layer AFTER the final norm: the LM head's
input) at the response rows is both what VERL's rank metrics read (METHOD.md section 1) and what the LM head
turns into log-probs, so one pass gives both. The LM head runs only on response rows and in chunks, and
log-probs come from ``logsumexp`` and a gather: there is never a full-vocabulary log_softmax over every
position (that tensor alone is N x T x 49k floats).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from verl_bench.rollout import Rollout


@dataclass
class PolicyOutput:
    logprobs: torch.Tensor  # (N, R) log pi(response token j), zero on padding
    hidden: torch.Tensor  # (N, R, D) post-norm last-layer state that produced token j (detached)
    entropy: torch.Tensor | None  # (N, R) entropy of pi at that position, if asked (with grad)


def decoder_and_head(model):
    """The decoder body (returns post-norm hidden states) and the LM head of an HF causal LM."""
    body = getattr(model, model.base_model_prefix, None)
    head = model.get_output_embeddings()
    if body is None or head is None:
        raise TypeError(f"{type(model).__name__}: expected a causal LM with a base model and an LM head")
    return body, head


class ResponseScorer(torch.nn.Module):
    """Wraps a causal LM so that the response scoring pass is the module's ``forward``.

    DDP synchronises gradients only for passes made through its own ``forward``; scoring calls the decoder
    body and the LM head separately, so under DDP this module (not the bare LM) is what gets wrapped.
    """

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, attention_mask, prompt_len: int, targets, mask, chunk_tokens: int = 4096,
                with_entropy: bool = False, temperature: float = 1.0, micro_batch: int | None = None):
        """(logprobs (N, R), entropy (N, R) or None, hidden (N, R, D) detached) for a whole rollout.

        Rows are scored in micro-batches of similar response length, each cut to its own widths, so a batch
        with one long response does not pay for padding everywhere; the LM head only sees real response rows.
        The micro-batches live inside this one ``forward`` so that DDP sees a single pass.
        """
        n, r = targets.shape
        lengths = mask.sum(dim=1)
        order = torch.argsort(lengths, descending=True, stable=True)
        step = micro_batch or n
        logp_parts, ent_parts, hidden_parts = [], [], []
        for start in range(0, n, step):
            idx = order[start : start + step]
            r_mb = max(int(lengths[idx].max()), 1)
            first = int(attention_mask[idx, :prompt_len].any(dim=0).int().argmax())  # drop all-pad prompt columns
            cols = slice(first, prompt_len + r_mb)
            lp, ent, hid = self._score(input_ids[idx, cols], attention_mask[idx, cols], prompt_len - first,
                                       targets[idx, :r_mb], mask[idx, :r_mb], chunk_tokens, with_entropy, temperature)
            pad = r - r_mb
            logp_parts.append(torch.nn.functional.pad(lp, (0, pad)))
            ent_parts.append(torch.nn.functional.pad(ent, (0, pad)) if with_entropy else None)
            hidden_parts.append(torch.nn.functional.pad(hid, (0, 0, 0, pad)))
        inverse = torch.argsort(order)
        logprobs = torch.cat(logp_parts)[inverse]
        entropy = torch.cat(ent_parts)[inverse] if with_entropy else None
        return logprobs, entropy, torch.cat(hidden_parts)[inverse]

    def _score(self, input_ids, attention_mask, prompt_len, targets, mask, chunk_tokens, with_entropy,
               temperature):
        body, head = decoder_and_head(self.lm)
        # position ids count real tokens only, so left padding does not shift positions
        position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp_min(0)
        out = body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        r = targets.shape[1]
        rows = out.last_hidden_state[:, prompt_len - 1 : prompt_len - 1 + r]  # row j sampled token j
        keep = mask.reshape(-1).nonzero().squeeze(1)  # the LM head never runs on padding
        flat_rows = rows.reshape(-1, rows.shape[-1])[keep]
        flat_targets = targets.reshape(-1)[keep]
        logps, ents = [], []
        step = max(1, chunk_tokens)
        for start in range(0, flat_rows.shape[0], step):
            args = (head, flat_rows[start : start + step], flat_targets[start : start + step], temperature,
                    with_entropy)
            if torch.is_grad_enabled():
                # recompute the chunk's logits in backward instead of keeping (chunk x vocab) floats alive
                lp, ent = checkpoint(_head_logprobs, *args, use_reentrant=False)
            else:
                lp, ent = _head_logprobs(*args)
            logps.append(lp)
            ents.append(ent)
        logprobs = rows.new_zeros(targets.numel(), dtype=torch.float32).index_put((keep,), _cat(logps))
        entropy = None
        if with_entropy:
            entropy = rows.new_zeros(targets.numel(), dtype=torch.float32).index_put((keep,), _cat(ents))
            entropy = entropy.view_as(targets)
        return logprobs.view_as(targets), entropy, rows.detach() * mask[:, :, None].to(rows.dtype)


def _cat(parts):
    return torch.cat(parts) if parts else torch.zeros(0)


def policy_forward(
    model, rollout: Rollout, *, chunk_tokens: int = 4096, with_entropy: bool = False,
    temperature: float = 1.0, micro_batch: int | None = None,
) -> PolicyOutput:
    """Forward the policy over prompt+response. Gradients flow into ``logprobs`` when grad is enabled.

    ``model`` is a causal LM, a ``ResponseScorer`` or a DDP-wrapped ``ResponseScorer``. ``temperature``
    divides the logits the way sampling did, so the log-probs are those of the sampling policy.
    """
    scorer = model if isinstance(model, (ResponseScorer, torch.nn.parallel.DistributedDataParallel)) \
        else ResponseScorer(model)
    device = next(scorer.parameters()).device
    logprobs, entropy, hidden = scorer(
        rollout.input_ids.to(device), rollout.attention_mask.to(device), rollout.prompt_ids.shape[1],
        rollout.response_ids.to(device), rollout.response_mask.to(device), chunk_tokens, with_entropy,
        temperature, micro_batch,
    )
    return PolicyOutput(logprobs=logprobs, hidden=hidden, entropy=entropy)


def _head_logprobs(head, rows, targets, temperature: float, with_entropy: bool):
    logits = head(rows).float()
    if temperature != 1.0:
        logits = logits / temperature
    lse = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(1, targets[:, None]).squeeze(1) - lse
    entropy = lse - (torch.softmax(logits, dim=-1) * logits).sum(dim=-1) if with_entropy else logp.new_zeros(())
    return logp, entropy
