"""The policy over a rollout: response log-probs, entropies and hidden states, and the update's backward.

The decoder body's output (``last_hidden_state``, i.e. the last layer AFTER the final norm: the LM head's
input) at the response rows is both what VERL's rank metrics read (METHOD.md section 1) and what the LM head
turns into log-probs, so one pass gives both. The LM head runs only on response rows, and log-probs come from
``logsumexp`` and a gather: there is never a full-vocabulary log_softmax over every position (that tensor
alone is N x T x 49k floats).

``policy_forward`` scores a whole rollout (no-grad passes: old and reference log-probs, hidden states);
``policy_backward`` is the update: it scores one micro-batch at a time and backpropagates its share of the
loss at once, so only one micro-batch's activations are ever alive and nothing is recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache

from verl_bench.rollout import Rollout, cache_argument, cache_of, decoder_and_head


@dataclass
class PolicyOutput:
    logprobs: torch.Tensor  # (N, R) log pi(response token j), zero on padding
    hidden: torch.Tensor  # (N, R, D) post-norm last-layer state that produced token j (detached)
    entropy: torch.Tensor | None  # (N, R) entropy of pi at that position, if asked (with grad)


class ResponseScorer(torch.nn.Module):
    """Wraps a causal LM: ``forward`` scores a rollout, ``backward_by_micro_batch`` runs the update's backward.

    Rows are scored in micro-batches of similar response length (longest first), each cut to its own widths,
    so a batch with one long response does not pay for padding everywhere. With ``group_ids`` (rows sharing a
    prompt share an id), each distinct prompt is run once for the whole rollout and its KV cache is shared by
    its samples in every micro-batch: exact (gradients reach the prompt through every sample) and, with n
    samples per prompt, about n times less prompt work.
    """

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, attention_mask, prompt_len: int, targets, mask, chunk_tokens: int = 4096,
                with_entropy: bool = False, temperature: float = 1.0, micro_batch: int | None = None,
                group_ids=None, micro_batch_tokens: int | None = None):
        """(logprobs (N, R), entropy (N, R) or None, hidden (N, R, D) detached) for a whole rollout.

        With grad, every micro-batch's activations stay alive until backward; the LM head then runs in
        checkpointed chunks of ``chunk_tokens`` rows (their logits are recomputed in backward).
        """
        prompt = None
        if group_ids is not None:
            prompt = self._prompt_states(input_ids[:, :prompt_len], attention_mask[:, :prompt_len], group_ids)
        logp_parts, ent_parts, hidden_parts, order = [], [], [], []
        for idx, rows, lp, ent in self._micro_batches(input_ids, attention_mask, prompt_len, targets, mask,
                                                       chunk_tokens, with_entropy, temperature, micro_batch,
                                                       prompt, checkpoint_head=torch.is_grad_enabled(),
                                                       max_tokens=micro_batch_tokens):
            logp_parts.append(lp)
            ent_parts.append(ent)
            hidden = rows.detach() * mask[idx, : rows.shape[1], None].to(rows.dtype)
            hidden_parts.append(torch.nn.functional.pad(hidden, (0, 0, 0, targets.shape[1] - rows.shape[1])))
            order.append(idx)
        inverse_order = torch.argsort(torch.cat(order))
        logprobs = torch.cat(logp_parts)[inverse_order]
        entropy = torch.cat(ent_parts)[inverse_order] if with_entropy else None
        return logprobs, entropy, torch.cat(hidden_parts)[inverse_order]

    def backward_by_micro_batch(self, input_ids, attention_mask, prompt_len: int, targets, mask, loss_fn,
                                chunk_tokens: int = 4096, with_entropy: bool = False, temperature: float = 1.0,
                                micro_batch: int | None = None, group_ids=None,
                                micro_batch_tokens: int | None = None) -> torch.Tensor:
        """Score and backpropagate one micro-batch at a time; returns the summed loss (detached).

        ``loss_fn(rows, logprobs, entropy)`` gets the rollout rows of a micro-batch and their (m, R) log-probs
        (and entropies, or None) and returns that micro-batch's share of the loss, which is backpropagated
        before the next micro-batch is scored. The gradients are those of the summed loss over one
        ``forward`` (exact), but only one micro-batch's activations are ever alive and nothing is recomputed:
        the loss must not need the other micro-batches, so advantages have to be known before scoring. A
        micro-batch holds at most ``micro_batch`` rows and ``micro_batch_tokens`` response positions (rows x
        its padded width), so its LM-head logits are kept, not recomputed.
        With ``group_ids`` the shared prompt pass is backpropagated last, with its KV gradients summed over
        every micro-batch.
        """
        prompt = states = leaves = None
        if group_ids is not None:
            prompt = self._prompt_states(input_ids[:, :prompt_len], attention_mask[:, :prompt_len], group_ids)
            states = prompt[3]
            leaves = tuple(t.detach().requires_grad_() for t in states)  # micro-batches backpropagate to here
            prompt = (*prompt[:3], leaves)
        total = torch.zeros(())
        for idx, _, lp, ent in self._micro_batches(input_ids, attention_mask, prompt_len, targets, mask,
                                                   chunk_tokens, with_entropy, temperature, micro_batch, prompt,
                                                   checkpoint_head=False, max_tokens=micro_batch_tokens):
            loss = loss_fn(idx, lp, ent)
            loss.backward()
            total = total + loss.detach().cpu()
        if states is not None:
            pairs = [(t, leaf.grad) for t, leaf in zip(states, leaves) if leaf.grad is not None]
            torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])
        return total

    def _micro_batches(self, input_ids, attention_mask, prompt_len, targets, mask, chunk_tokens, with_entropy,
                       temperature, micro_batch, prompt, checkpoint_head, max_tokens=None):
        """Yield (rows of the rollout, hidden (m, r_mb, D), logprobs (m, R), entropy (m, R) or None) per
        micro-batch, longest responses first, each cut to its own width."""
        r = targets.shape[1]
        lengths = mask.sum(dim=1)
        for idx in self.plan_micro_batches(lengths, micro_batch, max_tokens):
            r_mb = max(int(lengths[idx].max()), 1)
            if prompt is None:
                first = int(attention_mask[idx, :prompt_len].any(dim=0).int().argmax())  # drop all-pad columns
                ids = input_ids[idx, first : prompt_len + r_mb]
                attn = attention_mask[idx, first : prompt_len + r_mb]
                rows = self._rows(ids, attn, prompt_len - first, r_mb)
            else:
                rows = self._rows_after_prompt(prompt, idx, input_ids[idx, prompt_len : prompt_len + r_mb - 1],
                                               mask[idx, : r_mb - 1])
            lp, ent = self._head(rows, targets[idx, :r_mb], mask[idx, :r_mb], chunk_tokens, with_entropy,
                                 temperature, checkpoint_head)
            lp = torch.nn.functional.pad(lp, (0, r - r_mb))
            ent = torch.nn.functional.pad(ent, (0, r - r_mb)) if with_entropy else None
            yield idx, rows, lp, ent

    def plan_micro_batches(self, lengths, max_rows, max_tokens) -> list[torch.Tensor]:
        """The rows of each micro-batch (``micro_batches``; ``verl_bench.fsdp`` evens the count over workers)."""
        return list(micro_batches(lengths, max_rows, max_tokens))

    def _rows(self, ids, attn, p, r):
        """Post-norm last-layer states that sampled response tokens 0..r-1 (row j at column p-1+j)."""
        body, _ = decoder_and_head(self.lm)
        # position ids count real tokens only, so left padding does not shift positions
        position_ids = (attn.long().cumsum(dim=1) - 1).clamp_min(0)
        out = body(input_ids=ids, attention_mask=attn, position_ids=position_ids, use_cache=False)
        return out.last_hidden_state[:, p - 1 : p - 1 + r]

    def _prompt_states(self, prompt_ids, prompt_mask, group_ids):
        """Run each distinct prompt once: (row -> prompt index, prompt mask, last position, (last state, *KV))."""
        uniq, row_group = torch.unique(group_ids, return_inverse=True)
        first_row = torch.zeros(len(uniq), dtype=torch.long, device=group_ids.device).scatter_(
            0, row_group, torch.arange(len(row_group), device=group_ids.device))
        p_attn = prompt_mask[first_row]
        first = int(p_attn.any(dim=0).int().argmax())  # drop all-pad prompt columns
        p_ids, p_attn = prompt_ids[first_row, first:], p_attn[:, first:]
        p_pos = (p_attn.long().cumsum(dim=1) - 1).clamp_min(0)
        states = self._prompt_pass(p_ids, p_attn, p_pos)
        return row_group, p_attn, p_pos[:, -1], states

    def _prompt_pass(self, ids, attn, pos):
        """(state that sampled response token 0 (G, D), then each layer's keys and values)."""
        body, _ = decoder_and_head(self.lm)
        out = body(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True)
        return (out.last_hidden_state[:, -1], *[t for layer in cache_of(out) for t in layer[:2]])

    def _rows_after_prompt(self, prompt, idx, response_in, response_mask_in):
        """The rows of ``idx``: the prompt's last state, then response tokens 0..r-2 run on its KV cache."""
        row_group, p_attn, p_last, states = prompt
        groups = row_group[idx]
        last = states[0][groups, None]
        if response_in.shape[1] == 0:
            return last
        attn = torch.cat([p_attn[groups], response_mask_in.to(p_attn.dtype)], dim=1)
        pos = p_last[groups, None] + 1 + torch.arange(response_in.shape[1], device=response_in.device)
        rest = self._response_pass(response_in, attn, pos, groups, *states[1:])
        return torch.cat([last, rest], dim=1)

    def _response_pass(self, ids, attn, pos, groups, *kv):
        body, _ = decoder_and_head(self.lm)
        # each row gets its prompt's keys and values (a gather: gradients flow back to the prompt per sample)
        cache = DynamicCache(ddp_cache_data=[(k[groups], v[groups]) for k, v in zip(kv[0::2], kv[1::2])],
                             config=self.lm.config)
        out = body(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True,
                   **{cache_argument(body): cache})
        return out.last_hidden_state

    def _head(self, rows, targets, mask, chunk_tokens, with_entropy, temperature, checkpoint_chunks):
        _, head = decoder_and_head(self.lm)
        keep = mask.reshape(-1).nonzero().squeeze(1)  # the LM head never runs on padding
        flat_rows = rows.reshape(-1, rows.shape[-1])[keep]
        flat_targets = targets.reshape(-1)[keep]
        logps, ents = [], []
        step = max(1, chunk_tokens)
        for start in range(0, flat_rows.shape[0], step):
            args = (head, flat_rows[start : start + step], flat_targets[start : start + step], temperature,
                    with_entropy)
            if checkpoint_chunks:
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


def _scoring_inputs(model, rollout: Rollout, share_prompt: bool):
    """The scorer for ``model`` (a causal LM or a ``ResponseScorer``) and the rollout's tensors on its device:
    (input_ids, attention_mask, prompt_len, targets, mask) and the group ids when prompts are shared."""
    scorer = model if isinstance(model, ResponseScorer) else ResponseScorer(model)
    device = next(scorer.parameters()).device
    tensors = (rollout.input_ids.to(device), rollout.attention_mask.to(device), rollout.prompt_ids.shape[1],
               rollout.response_ids.to(device), rollout.response_mask.to(device))
    return scorer, tensors, rollout.group_ids.to(device) if share_prompt else None


def policy_forward(
    model, rollout: Rollout, *, chunk_tokens: int = 4096, with_entropy: bool = False,
    temperature: float = 1.0, micro_batch: int | None = None, share_prompt: bool = False,
    micro_batch_tokens: int | None = None,
) -> PolicyOutput:
    """Forward the policy over prompt+response. Gradients flow into ``logprobs`` when grad is enabled.

    ``model`` is a causal LM or a ``ResponseScorer``. ``temperature`` divides the logits the way sampling
    did, so the log-probs are those of the sampling policy.
    """
    scorer, tensors, groups = _scoring_inputs(model, rollout, share_prompt)
    logprobs, entropy, hidden = scorer(*tensors, chunk_tokens, with_entropy, temperature, micro_batch, groups,
                                       micro_batch_tokens)
    return PolicyOutput(logprobs=logprobs, hidden=hidden, entropy=entropy)


def policy_backward(
    model, rollout: Rollout, loss_fn, *, chunk_tokens: int = 4096, with_entropy: bool = False,
    temperature: float = 1.0, micro_batch: int | None = None, share_prompt: bool = False,
    micro_batch_tokens: int | None = None,
) -> torch.Tensor:
    """Backpropagate ``loss_fn`` micro-batch by micro-batch (see ``ResponseScorer.backward_by_micro_batch``).

    ``model`` is a causal LM or a ``ResponseScorer``. Gradients accumulate in the parameters as they would
    from one backward of the summed loss; returns that sum (detached).
    """
    scorer, tensors, groups = _scoring_inputs(model, rollout, share_prompt)
    return scorer.backward_by_micro_batch(*tensors, loss_fn, chunk_tokens, with_entropy, temperature, micro_batch,
                                          groups, micro_batch_tokens)


def micro_batches(lengths: torch.Tensor, max_rows: int | None = None, max_tokens: int | None = None):
    """Split rows into micro-batches, longest first: each holds at most ``max_rows`` rows and, when it holds
    more than one, at most ``max_tokens`` padded positions (rows x its longest length). A token budget bounds
    a micro-batch's activation memory whatever the lengths, and lets many short responses share one pass."""
    order = torch.argsort(lengths, descending=True, stable=True)
    n, start = len(order), 0
    while start < n:
        take = min(max_rows or n, n - start)
        if max_tokens:
            width = max(int(lengths[order[start]]), 1)  # the first row is the micro-batch's longest
            take = max(1, min(take, max_tokens // width))
        yield order[start : start + take]
        start += take


def _head_logprobs(head, rows, targets, temperature: float, with_entropy: bool):
    logits = head(rows).float()
    if temperature != 1.0:
        logits = logits / temperature
    lse = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(1, targets[:, None]).squeeze(1) - lse
    entropy = lse - (torch.softmax(logits, dim=-1) * logits).sum(dim=-1) if with_entropy else logp.new_zeros(())
    return logp, entropy
