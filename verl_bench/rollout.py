"""Rollout: sample n responses per prompt and lay them out for scoring and training.

A ``RolloutEngine`` turns prompt texts into a ``Rollout``: left-padded prompt ids next to right-padded
response ids, so that response token j of every row sits at column P + j and the hidden state that sampled it
at column P - 1 + j (METHOD.md section 1). The HF-generate engine is the reference engine; the vLLM engine
(``verl_bench.rollout_vllm``, an optional dependency) implements the same interface.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # (N, P) left-padded
    prompt_mask: torch.Tensor  # (N, P) bool
    response_ids: torch.Tensor  # (N, R) right-padded; EOS included when sampled
    response_mask: torch.Tensor  # (N, R) bool
    group_ids: torch.Tensor  # (N,) index of the prompt each response answers
    texts: list[str] = field(default_factory=list)  # decoded responses (special tokens removed)
    # (N, R, D) post-norm last-layer state that sampled response token j (zero on padding), when the engine
    # records it: the same rows a scoring pass gives (verl_bench.policy), so the rank metrics need no pass.
    # It stays on the model's device (the rank metrics run there); the ids are on the CPU
    hidden: torch.Tensor | None = None
    # (N, R) log-prob the sampler gave each sampled token (zero on padding), when it is not the policy being
    # trained (vLLM: verl_bench.rollout_vllm); the loop compares it with the policy's own (mismatch, TIS)
    sampler_logprobs: torch.Tensor | None = None

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(dim=1)

    def to(self, device) -> Rollout:
        return Rollout(
            self.prompt_ids.to(device), self.prompt_mask.to(device), self.response_ids.to(device),
            self.response_mask.to(device), self.group_ids.to(device), self.texts,
            None if self.hidden is None else self.hidden.to(device),
            None if self.sampler_logprobs is None else self.sampler_logprobs.to(device),
        )

    def select(self, rows: torch.Tensor) -> Rollout:
        """The responses ``rows`` (indices), in that order."""
        r = rows.to(self.prompt_ids.device)
        return Rollout(self.prompt_ids[r], self.prompt_mask[r], self.response_ids[r], self.response_mask[r],
                       self.group_ids[r], [self.texts[i] for i in rows.tolist()],
                       None if self.hidden is None else self.hidden[r],
                       None if self.sampler_logprobs is None else self.sampler_logprobs[r])


@dataclass
class SamplingParams:
    n: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    min_new_tokens: int = 0  # EOS is masked out of the first min_new_tokens samples


class RolloutEngine(Protocol):
    def generate(self, prompts: list[str], params: SamplingParams) -> Rollout: ...


class HFGenerateEngine:
    """Batched sampling with ``model.generate`` (the policy being trained, so always on-policy).

    It also keeps the last layer's (post-norm) hidden state that sampled each token (``Rollout.hidden``): a
    hook on the LM head catches its input row, so only that layer is kept (``output_hidden_states`` would hold
    every layer of every step until generation ends: ~29 x a 7B model's memory for these rows).
    """

    def __init__(self, model, tokenizer, *, generation_batch_size: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.generation_batch_size = generation_batch_size

    @torch.no_grad()
    def generate(self, prompts: list[str], params: SamplingParams) -> Rollout:
        tok = self.tokenizer
        device = next(self.model.parameters()).device
        enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        prompt_ids = enc["input_ids"].repeat_interleave(params.n, dim=0)
        prompt_mask = enc["attention_mask"].bool().repeat_interleave(params.n, dim=0)
        group_ids = torch.arange(len(prompts)).repeat_interleave(params.n)
        step = self.generation_batch_size or prompt_ids.shape[0]
        eos = _eos_ids(self.model, tok)
        pieces, states = [], []
        caught: list[torch.Tensor] = []  # the LM head's input row per generated token of the current batch
        _, head = decoder_and_head(self.model)
        hook = head.register_forward_hook(lambda mod, args, out: caught.append(args[0][:, -1].detach()))
        was_training = self.model.training
        self.model.eval()  # no dropout while sampling
        try:
            for start in range(0, prompt_ids.shape[0], step):
                ids = prompt_ids[start : start + step].to(device)
                out = self.model.generate(
                    input_ids=ids,
                    attention_mask=prompt_mask[start : start + step].to(device),
                    do_sample=params.temperature > 0,
                    temperature=params.temperature if params.temperature > 0 else None,
                    top_p=params.top_p if params.temperature > 0 else None,
                    top_k=0 if params.temperature > 0 else None,  # no hidden top-k from generation_config
                    max_new_tokens=params.max_new_tokens,
                    min_new_tokens=params.min_new_tokens or None,
                    eos_token_id=eos,
                    pad_token_id=tok.pad_token_id,
                )
                pieces.append(out[:, ids.shape[1] :].cpu())
                # one head call per generated token (the last one's token was never needed: drop extras)
                states.append(torch.stack(caught[: pieces[-1].shape[1]], dim=1))
                caught.clear()
        finally:
            hook.remove()
            self.model.train(was_training)
        width = max(p.shape[1] for p in pieces)
        response_ids = torch.cat(
            [torch.nn.functional.pad(p, (0, width - p.shape[1]), value=tok.pad_token_id) for p in pieces]
        )
        response_mask = response_mask_from_ids(response_ids, eos)
        response_ids = torch.where(response_mask, response_ids, tok.pad_token_id)
        texts = tok.batch_decode(
            [ids[m] for ids, m in zip(response_ids, response_mask)], skip_special_tokens=True
        )
        hidden = torch.cat([torch.nn.functional.pad(h, (0, 0, 0, width - h.shape[1])) for h in states])
        hidden = hidden * response_mask[:, :, None].to(hidden.device, hidden.dtype)
        return Rollout(prompt_ids, prompt_mask, response_ids, response_mask, group_ids, texts, hidden)


class CachedSamplingEngine:
    """A lean sampler: each prompt is prefilled once for its n samples, finished samples leave the batch.

    ``model.generate`` prefills every copy of a prompt and keeps decoding finished rows until the longest
    sample ends; on a CPU, where a decode step costs about the same for 1 or 32 rows plus a per-row share,
    dropping finished rows and sharing the prefill is most of the rollout time (benchmarks/grpo_step.py).
    Sampling is plain temperature + top-p (nucleus) over the model's logits, like the HF engine with
    ``top_k=0``. It runs the decoder body and the LM head itself, so it also records the hidden state that
    sampled each token (``Rollout.hidden``).
    """

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer

    @torch.no_grad()
    def generate(self, prompts: list[str], params: SamplingParams) -> Rollout:
        tok, model = self.tokenizer, self.model
        body, head = decoder_and_head(model)
        device = next(model.parameters()).device
        enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        ids, attn = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        eos = torch.tensor(_eos_ids(model, tok), device=device)
        was_training = model.training
        model.eval()
        try:
            pos = (attn.cumsum(dim=1) - 1).clamp_min(0)
            out = body(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True)
            rows = torch.arange(len(prompts), device=device).repeat_interleave(params.n)
            cache, cache_kw = cache_of(out), cache_argument(body)
            cache.batch_select_indices(rows)  # one prefill per prompt, shared by its n samples
            state = out.last_hidden_state[rows, -1]
            attn, next_pos = attn[rows], pos[rows, -1] + 1
            total = rows.numel()
            tokens = torch.full((total, params.max_new_tokens), tok.pad_token_id, dtype=ids.dtype, device=device)
            hidden = state.new_zeros(total, params.max_new_tokens, state.shape[-1])
            active = torch.arange(total, device=device)  # which samples are still being generated
            width = 0
            for t in range(params.max_new_tokens):
                logits = head(state)
                if t < params.min_new_tokens:
                    logits[:, eos] = -math.inf  # as HF's min_new_tokens: renormalised over the other tokens
                nxt = sample_tokens(logits, params.temperature, params.top_p)
                tokens[active, t] = nxt
                hidden[active, t] = state
                width = t + 1
                keep = ~torch.isin(nxt, eos)
                if t == params.max_new_tokens - 1 or not keep.any():
                    break
                if not keep.all():  # finished samples leave the batch (and the KV cache)
                    kept = keep.nonzero().squeeze(1)
                    active, nxt, attn, next_pos = active[kept], nxt[kept], attn[kept], next_pos[kept]
                    cache.batch_select_indices(kept)
                attn = torch.cat([attn, attn.new_ones(attn.shape[0], 1)], dim=1)
                out = body(input_ids=nxt[:, None], attention_mask=attn, position_ids=next_pos[:, None],
                           use_cache=True, **{cache_kw: cache})
                state = out.last_hidden_state[:, -1]
                next_pos = next_pos + 1
        finally:
            model.train(was_training)
        response_ids = tokens[:, :width].cpu()
        response_mask = response_mask_from_ids(response_ids, eos.tolist())
        response_ids = torch.where(response_mask, response_ids, tok.pad_token_id)
        prompt_ids = enc["input_ids"].repeat_interleave(params.n, dim=0)
        prompt_mask = enc["attention_mask"].bool().repeat_interleave(params.n, dim=0)
        group_ids = torch.arange(len(prompts)).repeat_interleave(params.n)
        texts = tok.batch_decode([r[m] for r, m in zip(response_ids, response_mask)], skip_special_tokens=True)
        return Rollout(prompt_ids, prompt_mask, response_ids, response_mask, group_ids, texts, hidden[:, :width])


def sample_tokens(logits: torch.Tensor, temperature: float, top_p: float = 1.0) -> torch.Tensor:
    """One token per row: argmax at temperature 0, else softmax(logits / T) restricted to the top-p nucleus.

    A row is drawn by inverting its cumulative distribution (float64) at one uniform number: the same
    categorical distribution as ``torch.multinomial``, which draws one exponential number per vocabulary
    entry (about 20 ms a decode step for 32 rows x 49k tokens on 2 CPU cores).
    """
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1.0:
        return _inverse_cdf(probs)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    outside = sorted_p.cumsum(dim=-1) - sorted_p > top_p  # keep the smallest prefix reaching top_p
    sorted_p = sorted_p.masked_fill(outside, 0.0)
    return order.gather(1, _inverse_cdf(sorted_p)[:, None]).squeeze(1)


def _inverse_cdf(probs: torch.Tensor) -> torch.Tensor:
    """Row i draws index j with probability probs[i, j] / probs[i].sum(); zero-probability entries never."""
    cdf = probs.double().cumsum(dim=-1)
    u = torch.rand(probs.shape[0], 1, dtype=torch.float64, device=probs.device) * cdf[:, -1:]
    # right=True: the first j with cdf[j] > u, so cdf[j] - cdf[j-1] > 0
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_max(probs.shape[1] - 1)


ENGINES = {"hf": HFGenerateEngine, "cached": CachedSamplingEngine}


def response_mask_from_ids(response_ids: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    """True up to and including the first EOS of each row (the EOS token counts as a response token)."""
    is_eos = torch.isin(response_ids, torch.tensor(eos_ids, dtype=response_ids.dtype))
    after_eos = (torch.cumsum(is_eos.int(), dim=1) - is_eos.int()) > 0
    return ~after_eos


def decoder_and_head(model):
    """The decoder body (returns post-norm hidden states) and the LM head of an HF causal LM."""
    body = getattr(model, model.base_model_prefix, None)
    head = model.get_output_embeddings()
    if body is None or head is None:
        raise TypeError(f"{type(model).__name__}: expected a causal LM with a base model and an LM head")
    return body, head


# transformers renamed the decoder's KV-cache output and forward argument past_key_values -> cache (5.2x)
def cache_of(out):
    """The KV cache a decoder forward returned."""
    return out["cache"] if "cache" in out else out["past_key_values"]


def cache_argument(body) -> str:
    """The name under which ``body.forward`` takes a KV cache."""
    return "cache" if "cache" in inspect.signature(body.forward).parameters else "past_key_values"


def _eos_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id if model.generation_config is not None else None
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("the model and tokenizer define no EOS token: responses could never end")
    return ids
