"""Rollout: sample n responses per prompt and lay them out for scoring and training.

A ``RolloutEngine`` turns prompt texts into a ``Rollout``: left-padded prompt ids next to right-padded
response ids, so that response token j of every row sits at column P + j and the hidden state that sampled it
at column P - 1 + j (METHOD.md section 1). The HF-generate engine is the reference engine; a vLLM engine
can implement the same interface where vLLM is installed.
"""

from __future__ import annotations

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
        )


@dataclass
class SamplingParams:
    n: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64


class RolloutEngine(Protocol):
    def generate(self, prompts: list[str], params: SamplingParams) -> Rollout: ...


class HFGenerateEngine:
    """Batched sampling with ``model.generate`` (the policy being trained, so always on-policy)."""

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
        pieces = []
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
                    eos_token_id=eos,
                    pad_token_id=tok.pad_token_id,
                )
                pieces.append(out[:, ids.shape[1] :].cpu())
        finally:
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
        return Rollout(prompt_ids, prompt_mask, response_ids, response_mask, group_ids, texts)


def response_mask_from_ids(response_ids: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    """True up to and including the first EOS of each row (the EOS token counts as a response token)."""
    is_eos = torch.isin(response_ids, torch.tensor(eos_ids, dtype=response_ids.dtype))
    after_eos = (torch.cumsum(is_eos.int(), dim=1) - is_eos.int()) > 0
    return ~after_eos


def _eos_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id if model.generation_config is not None else None
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("the model and tokenizer define no EOS token: responses could never end")
    return ids
