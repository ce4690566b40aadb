"""One forward pass of the policy over a rollout: response log-probs, entropies and hidden states.

The decoder body's output (``last_hidden_state``, i.e. the last layer AFTER the final norm: the LM head's
input) at the response rows is both what VERL's rank metrics read (METHOD.md section 1) and what the LM head
turns into log-probs, so one pass gives both. The LM head runs only on response rows and in chunks, and
log-probs come from ``logsumexp`` and a gather: there is never a full-vocabulary log_softmax over every
position (that tensor alone is N x T x 49k floats).
"""

from __future__ import annotations

import inspect
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
                with_entropy: bool = False, temperature: float = 1.0, micro_batch: int | None = None,
                group_ids=None):
        """(logprobs (N, R), entropy (N, R) or None, hidden (N, R, D) detached) for a whole rollout.

        Rows are scored in micro-batches of similar response length, each cut to its own widths, so a batch
        with one long response does not pay for padding everywhere; the LM head only sees real response rows.
        With ``group_ids`` (rows sharing a prompt share an id), each prompt is run once per micro-batch and
        its KV cache is shared by its samples: exact (gradients reach the prompt through every sample) and,
        with n samples per prompt, about n times less prompt work. The micro-batches live inside this one
        ``forward`` so that DDP sees a single pass.
        """
        n, r = targets.shape
        lengths = mask.sum(dim=1)
        step = micro_batch or n
        if group_ids is None:
            order = torch.argsort(lengths, descending=True, stable=True)
            batches = [order[i : i + step] for i in range(0, n, step)]
        else:  # whole groups per micro-batch, longest groups first
            uniq, inverse = torch.unique(group_ids, return_inverse=True)
            group_len = torch.zeros(len(uniq), dtype=lengths.dtype, device=lengths.device)
            group_len = group_len.scatter_reduce(0, inverse, lengths, reduce="amax")
            batches, current = [], []
            for g in torch.argsort(group_len, descending=True, stable=True).tolist():
                rows = (inverse == g).nonzero().squeeze(1)
                if current and sum(len(c) for c in current) + len(rows) > step:
                    batches.append(torch.cat(current))
                    current = []
                current.append(rows)
            if current:
                batches.append(torch.cat(current))
        logp_parts, ent_parts, hidden_parts = [], [], []
        for idx in batches:
            r_mb = max(int(lengths[idx].max()), 1)
            first = int(attention_mask[idx, :prompt_len].any(dim=0).int().argmax())  # drop all-pad prompt columns
            ids, attn = input_ids[idx, first : prompt_len + r_mb], attention_mask[idx, first : prompt_len + r_mb]
            p = prompt_len - first
            if group_ids is None:
                rows = self._rows(ids, attn, p, r_mb)
            else:
                rows = self._rows_shared_prompt(ids, attn, p, r_mb, group_ids[idx])
            lp, ent = self._head(rows, targets[idx, :r_mb], mask[idx, :r_mb], chunk_tokens, with_entropy,
                                 temperature)
            pad = r - r_mb
            logp_parts.append(torch.nn.functional.pad(lp, (0, pad)))
            ent_parts.append(torch.nn.functional.pad(ent, (0, pad)) if with_entropy else None)
            hidden = rows.detach() * mask[idx, :r_mb, None].to(rows.dtype)
            hidden_parts.append(torch.nn.functional.pad(hidden, (0, 0, 0, pad)))
        inverse_order = torch.argsort(torch.cat(batches))
        logprobs = torch.cat(logp_parts)[inverse_order]
        entropy = torch.cat(ent_parts)[inverse_order] if with_entropy else None
        return logprobs, entropy, torch.cat(hidden_parts)[inverse_order]

    def _rows(self, ids, attn, p, r):
        """Post-norm last-layer states that sampled response tokens 0..r-1 (row j at column p-1+j)."""
        body, _ = decoder_and_head(self.lm)
        # position ids count real tokens only, so left padding does not shift positions
        position_ids = (attn.long().cumsum(dim=1) - 1).clamp_min(0)
        out = body(input_ids=ids, attention_mask=attn, position_ids=position_ids, use_cache=False)
        return out.last_hidden_state[:, p - 1 : p - 1 + r]

    def _rows_shared_prompt(self, ids, attn, p, r, group_ids):
        """The same rows, running each distinct prompt once and sharing its KV cache with its samples."""
        body, _ = decoder_and_head(self.lm)
        uniq, row_group = torch.unique(group_ids, return_inverse=True)
        first_row = torch.zeros(len(uniq), dtype=torch.long, device=ids.device).scatter_(
            0, row_group, torch.arange(len(row_group), device=ids.device))
        p_ids, p_attn = ids[first_row, :p], attn[first_row, :p]
        p_pos = (p_attn.long().cumsum(dim=1) - 1).clamp_min(0)
        out = body(input_ids=p_ids, attention_mask=p_attn, position_ids=p_pos, use_cache=True)
        last = out.last_hidden_state[row_group, -1:]  # the state that sampled response token 0
        if r == 1:
            return last
        cache = out["cache"] if "cache" in out else out["past_key_values"]
        cache.batch_select_indices(row_group)  # gather: gradients flow back to the prompt once per sample
        r_pos = p_pos[row_group, -1:] + 1 + torch.arange(r - 1, device=ids.device)
        kw = {"cache" if "cache" in inspect.signature(body.forward).parameters else "past_key_values": cache}
        rest = body(input_ids=ids[:, p : p + r - 1], attention_mask=attn[:, : p + r - 1], position_ids=r_pos,
                    use_cache=True, **kw)
        return torch.cat([last, rest.last_hidden_state], dim=1)

    def _head(self, rows, targets, mask, chunk_tokens, with_entropy, temperature):
        _, head = decoder_and_head(self.lm)
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
        return logprobs.view_as(targets), entropy


def _cat(parts):
    return torch.cat(parts) if parts else torch.zeros(0)


def policy_forward(
    model, rollout: Rollout, *, chunk_tokens: int = 4096, with_entropy: bool = False,
    temperature: float = 1.0, micro_batch: int | None = None, share_prompt: bool = False,
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
        temperature, micro_batch, rollout.group_ids.to(device) if share_prompt else None,
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
