"""Rollout layout and the one-pass policy forward against plain transformers references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from verl_bench.models import load_model
from verl_bench.policy import micro_batches, policy_backward, policy_forward
from verl_bench.rollout import (
    CachedSamplingEngine,
    HFGenerateEngine,
    SamplingParams,
    response_mask_from_ids,
    sample_tokens,
)


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_model("tiny:test")
    return model, tok


def _rollout(model, tok, n=3, max_new_tokens=10, temperature=1.0):
    torch.manual_seed(0)
    prompts = ["What is 2 + 2?", "A much longer prompt about apples, pears and several other fruits?"]
    chat = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts]
    return HFGenerateEngine(model, tok).generate(
        chat, SamplingParams(n=n, temperature=temperature, max_new_tokens=max_new_tokens))


def test_rollout_layout(tiny):
    model, tok = tiny
    roll = _rollout(model, tok)
    assert roll.response_ids.shape[0] == 6 and roll.group_ids.tolist() == [0, 0, 0, 1, 1, 1]
    # prompts are left-padded: the last prompt column is real for every row
    assert roll.prompt_mask[:, -1].all()
    assert not roll.prompt_mask[0].all()  # the short prompt is padded
    # responses are right-padded and contiguous from column 0
    m = roll.response_mask.int()
    assert torch.all(m[:, 1:] <= m[:, :-1])
    assert len(roll.texts) == 6


@pytest.mark.parametrize("share_prompt", [False, True])
def test_logprobs_and_hidden_match_full_forward(tiny, share_prompt):
    model, tok = tiny
    roll = _rollout(model, tok)
    out = policy_forward(model, roll, chunk_tokens=7, with_entropy=True,  # odd chunk size on purpose
                         micro_batch=4, share_prompt=share_prompt)
    # independent reference: the stock HF forward with every hidden state and full-vocabulary log_softmax
    ids, attn = roll.input_ids, roll.attention_mask
    pos = (attn.long().cumsum(1) - 1).clamp_min(0)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=attn, position_ids=pos, output_hidden_states=True)
    p, r = roll.prompt_ids.shape[1], roll.response_ids.shape[1]
    logits = ref.logits[:, p - 1 : p - 1 + r].double()
    full = torch.log_softmax(logits, dim=-1)
    ref_logp = full.gather(2, roll.response_ids[:, :, None]).squeeze(2) * roll.response_mask
    torch.testing.assert_close(out.logprobs.double(), ref_logp, rtol=1e-5, atol=1e-5)
    ref_ent = -(full.exp() * full).sum(-1) * roll.response_mask
    torch.testing.assert_close(out.entropy.double(), ref_ent, rtol=1e-5, atol=1e-5)
    # METHOD.md section 1: the LAST layer AFTER the final norm, row j = the state that sampled token j
    torch.testing.assert_close(out.hidden, ref.hidden_states[-1][:, p - 1 : p - 1 + r], rtol=1e-5, atol=1e-5)


def test_length_grouped_micro_batches_change_nothing(tiny):
    model, tok = tiny
    roll = _rollout(model, tok, n=4, max_new_tokens=12)
    # responses of very different lengths (as if EOS came early), so micro-batches get different widths
    lengths = torch.tensor([12, 3, 7, 1, 12, 5, 9, 2])
    roll.response_mask = torch.arange(roll.response_ids.shape[1])[None, :] < lengths[:, None]
    roll.response_ids = torch.where(roll.response_mask, roll.response_ids, tok.pad_token_id)
    whole = policy_forward(model, roll, with_entropy=True)
    parts = policy_forward(model, roll, with_entropy=True, micro_batch=3)
    torch.testing.assert_close(parts.logprobs, whole.logprobs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parts.entropy, whole.entropy, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parts.hidden, whole.hidden, rtol=1e-5, atol=1e-5)
    # gradients agree too: the micro-batches are one differentiable pass
    grads = []
    for mb in (None, 3):
        model.zero_grad(set_to_none=True)
        policy_forward(model, roll, micro_batch=mb).logprobs.sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)
    model.zero_grad(set_to_none=True)


def _ragged(model, tok):
    """A rollout whose responses have very different lengths (as if EOS came early)."""
    roll = _rollout(model, tok, n=4, max_new_tokens=10)
    lengths = torch.tensor([10, 3, 7, 1, 10, 5, 9, 2])
    roll.response_mask = torch.arange(roll.response_ids.shape[1])[None, :] < lengths[:, None]
    roll.response_ids = torch.where(roll.response_mask, roll.response_ids, tok.pad_token_id)
    return roll


def _grad(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("micro_batch", [None, 5])
def test_shared_prompt_scoring_is_exact(tiny, micro_batch):
    """Running each prompt once and sharing its KV cache changes no output and no gradient."""
    model, tok = tiny
    roll = _ragged(model, tok)
    results = []
    for share in (False, True):
        model.zero_grad(set_to_none=True)
        out = policy_forward(model, roll, with_entropy=True, micro_batch=micro_batch, share_prompt=share)
        (out.logprobs.sum() + out.entropy.sum()).backward()
        results.append((out, _grad(model)))
    (plain, g_plain), (shared, g_shared) = results
    torch.testing.assert_close(shared.logprobs, plain.logprobs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shared.entropy, plain.entropy, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shared.hidden, plain.hidden, rtol=1e-5, atol=1e-5)
    assert g_shared.shape == g_plain.shape  # every parameter got a gradient, the embeddings via the prompt too
    torch.testing.assert_close(g_shared, g_plain, rtol=1e-4, atol=1e-5)
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("micro_batch,share_prompt,max_tokens",
                         [(None, False, None), (3, False, None), (3, True, None), (5, True, None), (None, True, 12),
                          (None, False, 12)])
def test_backward_by_micro_batch_equals_one_backward(tiny, micro_batch, share_prompt, max_tokens):
    """The update's backward, one micro-batch at a time, gives the gradient of one pass over the whole rollout."""
    model, tok = tiny
    roll = _ragged(model, tok)
    torch.manual_seed(3)
    w_lp, w_ent = torch.randn(roll.response_ids.shape), torch.randn(roll.response_ids.shape)
    model.zero_grad(set_to_none=True)
    out = policy_forward(model, roll, with_entropy=True)
    whole = (w_lp * out.logprobs).sum() + (w_ent * out.entropy).sum()
    whole.backward()
    g_whole = _grad(model)
    model.zero_grad(set_to_none=True)
    calls = []

    def loss_fn(rows, logp, entropy):
        # every earlier micro-batch has been backpropagated already: its activations are gone
        calls.append(all(p.grad is not None for p in model.parameters()) if calls else None)
        torch.testing.assert_close(logp.detach(), out.logprobs.detach()[rows], rtol=1e-5, atol=1e-5)
        return (w_lp[rows] * logp).sum() + (w_ent[rows] * entropy).sum()

    total = policy_backward(model, roll, loss_fn, with_entropy=True, micro_batch=micro_batch,
                            share_prompt=share_prompt, micro_batch_tokens=max_tokens)
    lengths = roll.response_mask.sum(1)  # 10, 3, 7, 1, 10, 5, 9, 2
    expected = len(list(micro_batches(lengths, micro_batch, max_tokens)))
    assert expected == (6 if max_tokens else -(-8 // (micro_batch or 8)))  # 10|10|9|7|5,3|2,1 under 12 tokens
    assert len(calls) == expected and all(calls[1:])
    torch.testing.assert_close(total, whole.detach(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(_grad(model), g_whole, rtol=1e-4, atol=1e-5)
    model.zero_grad(set_to_none=True)


def test_sampling_logprobs_with_temperature(tiny):
    model, tok = tiny
    roll = _rollout(model, tok, temperature=0.5)
    out = policy_forward(model, roll, temperature=0.5)
    with torch.no_grad():
        cold = policy_forward(model, roll)
    # dividing the logits by T changes the log-probs of the sampled tokens (the sampling policy's, not T=1)
    assert not torch.allclose(out.logprobs, cold.logprobs)
    assert torch.all(out.logprobs <= 0)


def test_gradients_flow_through_logprobs_only(tiny):
    model, tok = tiny
    roll = _rollout(model, tok)
    out = policy_forward(model, roll)
    assert out.logprobs.requires_grad and not out.hidden.requires_grad
    out.logprobs.sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    model.zero_grad(set_to_none=True)


def test_response_mask_stops_after_first_eos():
    ids = torch.tensor([[5, 6, 2, 2, 2], [5, 2, 7, 2, 9], [5, 6, 7, 8, 9]])
    mask = response_mask_from_ids(ids, [2])
    assert mask.int().tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]  # EOS itself counts


def _chat(tok, prompts):
    return [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts]


def test_cached_engine_greedy_equals_hf_generate(tiny):
    model, tok = tiny
    prompts = _chat(tok, ["What is 2 + 2?", "A much longer prompt about apples, pears and other fruits?"])
    params = SamplingParams(n=2, temperature=0.0, max_new_tokens=12)
    ref = HFGenerateEngine(model, tok).generate(prompts, params)
    ours = CachedSamplingEngine(model, tok).generate(prompts, params)
    assert torch.equal(ours.prompt_ids, ref.prompt_ids) and torch.equal(ours.group_ids, ref.group_ids)
    assert torch.equal(ours.response_mask, ref.response_mask)
    assert torch.equal(ours.response_ids, ref.response_ids)


@pytest.mark.parametrize("engine", [CachedSamplingEngine, HFGenerateEngine])
@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_engines_record_the_scoring_hidden_states(tiny, engine, temperature):
    """The hidden states the sampler records are the rows a scoring pass gives (zero on padding)."""
    model, tok = tiny
    torch.manual_seed(2)
    prompts = _chat(tok, ["What is 2 + 2?", "A much longer prompt about apples, pears and other fruits?"])
    roll = engine(model, tok).generate(
        prompts, SamplingParams(n=3, temperature=temperature, max_new_tokens=12))
    assert roll.hidden.shape == (*roll.response_ids.shape, model.config.hidden_size)
    with torch.no_grad():
        ref = policy_forward(model, roll).hidden
    torch.testing.assert_close(roll.hidden, ref, rtol=1e-5, atol=1e-5)
    assert (roll.hidden[~roll.response_mask] == 0).all()


@pytest.mark.parametrize("engine", [CachedSamplingEngine, HFGenerateEngine])
def test_min_new_tokens_holds_eos_back(tiny, engine):
    """EOS is not sampled in the first min_new_tokens positions (HF's min_new_tokens); it may end a row after."""
    model, tok = tiny
    eos = tok.eos_token_id
    bias = torch.zeros(model.config.vocab_size)
    bias[eos] = 9.0  # EOS ~15% a step: without the floor some samples end within the first few tokens
    hook = model.get_output_embeddings().register_forward_hook(lambda mod, inp, out: out + bias)
    prompts = _chat(tok, ["hi", "hello there"])
    try:
        rolls = {}
        for floor in (0, 10):
            torch.manual_seed(1)
            rolls[floor] = engine(model, tok).generate(
                prompts, SamplingParams(n=8, temperature=1.0, max_new_tokens=24, min_new_tokens=floor))
    finally:
        hook.remove()
    assert rolls[0].response_lengths.min() < 10
    held = rolls[10]
    assert not torch.isin(held.response_ids[:, :10], torch.tensor([eos])).any()
    assert held.response_lengths.min() >= 10 and held.response_mask[:, :10].all()
    assert (held.response_lengths < 24).any()  # EOS can still end a sample after the floor


def test_cached_engine_drops_finished_samples_and_keeps_the_layout(tiny):
    model, tok = tiny
    # make EOS likely (~15% a step) so samples end at different lengths: a hook adds +9 to its logit
    eos = tok.eos_token_id
    bias = torch.zeros(model.config.vocab_size)
    bias[eos] = 9.0
    hook = model.get_output_embeddings().register_forward_hook(lambda mod, inp, out: out + bias)
    try:
        torch.manual_seed(1)
        roll = CachedSamplingEngine(model, tok).generate(_chat(tok, ["hi", "hello there"]),
                                                         SamplingParams(n=6, temperature=1.0, max_new_tokens=16))
    finally:
        hook.remove()
    lengths = roll.response_lengths
    assert lengths.min() < lengths.max()  # some samples ended early
    m = roll.response_mask.int()
    assert torch.all(m[:, 1:] <= m[:, :-1])  # right-padded, contiguous
    for ids, n in zip(roll.response_ids, lengths.tolist()):
        if n < 16:  # a sample shorter than the budget ended with EOS, then only padding
            assert ids[n - 1] == eos and (ids[n:] == tok.pad_token_id).all()
    out = policy_forward(model, roll)
    assert torch.isfinite(out.logprobs).all()


def test_top_p_nucleus_sampling():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(20000, 4)
    torch.manual_seed(0)
    draws = sample_tokens(logits, temperature=1.0, top_p=0.7)
    counts = torch.bincount(draws, minlength=4).float() / draws.numel()
    # the nucleus is {0, 1} (0.5 < 0.7 <= 0.8), renormalised to 0.625 / 0.375
    assert counts[2] == 0 and counts[3] == 0
    assert abs(counts[0].item() - 0.625) < 0.02
    full = torch.bincount(sample_tokens(logits, temperature=1.0), minlength=4).float() / 20000
    assert abs(full[2].item() - 0.15) < 0.02  # top_p = 1: the whole distribution
    assert torch.equal(sample_tokens(logits[:3], temperature=0.0), torch.zeros(3, dtype=torch.long))


def test_sampler_draws_the_exact_categorical_distribution():
    # zero-probability entries (also at both ends) are never drawn; the others at their probabilities
    probs = torch.tensor([0.0, 0.1, 0.0, 0.2, 0.3, 0.4, 0.0])
    torch.manual_seed(0)
    draws = sample_tokens(probs.log().expand(200000, 7), temperature=1.0)
    freq = torch.bincount(draws, minlength=7).double() / draws.numel()
    assert freq[[0, 2, 6]].sum() == 0
    torch.testing.assert_close(freq, probs.double(), rtol=0, atol=4e-3)
    # temperature divides the logits: T = 0.5 squares the odds
    logits = torch.tensor([[0.0, 1.0]]).expand(200000, 2)
    freq = torch.bincount(sample_tokens(logits, temperature=0.5), minlength=2).double() / 200000
    assert abs(freq[1].item() - torch.softmax(torch.tensor([0.0, 2.0]), 0)[1].item()) < 4e-3


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (1.0, 0.8), (1.3, 0.5)])
def test_sampler_matches_the_categorical_distribution_and_torch_multinomial(temperature, top_p):
    """Chi-square tests of the inverse-CDF sampler: against the exact nucleus distribution (built here
    independently in float64 numpy) and, two-sample, against torch.multinomial's draws from it."""
    from scipy import stats

    gen = np.random.default_rng(7)
    logits = gen.normal(0.0, 2.0, size=60)
    logits[[0, 13, 59]] = -np.inf  # impossible tokens, at both ends too
    z = logits / temperature
    p = np.exp(z - z[np.isfinite(z)].max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    before = np.cumsum(p[order]) - p[order]
    nucleus = np.zeros_like(p)
    nucleus[order[before <= top_p]] = p[order[before <= top_p]]  # the smallest prefix reaching top_p
    nucleus /= nucleus.sum()

    draws = 120_000
    torch.manual_seed(11)
    ours = sample_tokens(torch.tensor(logits, dtype=torch.float32).expand(draws, -1), temperature, top_p)
    ref = torch.multinomial(torch.tensor(nucleus).expand(draws, -1), 1).squeeze(1)
    ours_counts = np.bincount(ours.numpy(), minlength=60)
    ref_counts = np.bincount(ref.numpy(), minlength=60)
    assert ours_counts[nucleus == 0].sum() == 0  # nothing outside the nucleus, no impossible token
    support = nucleus > 0
    fit = stats.chisquare(ours_counts[support], draws * nucleus[support])
    assert fit.pvalue > 1e-3, fit
    table = np.stack([ours_counts[support], ref_counts[support]])
    table = table[:, table.sum(axis=0) > 0]
    same = stats.chi2_contingency(table)
    assert same.pvalue > 1e-3, same
    # the test has the power to see a wrong sampler: the same counts given to the neighbouring tokens fail it
    shifted = np.roll(ours_counts[support], 1)
    assert stats.chisquare(shifted, draws * nucleus[support]).pvalue < 1e-6


@pytest.mark.parametrize("max_rows,max_tokens", [(None, None), (4, None), (None, 40), (3, 25), (None, 1)])
def test_micro_batches_cover_every_row_within_budget(max_rows, max_tokens):
    gen = torch.Generator().manual_seed(5)
    lengths = torch.randint(0, 30, (37,), generator=gen)
    batches = list(micro_batches(lengths, max_rows, max_tokens))
    rows = torch.cat(batches)
    assert sorted(rows.tolist()) == list(range(37))  # every row exactly once
    assert torch.all(lengths[rows][1:] <= lengths[rows][:-1])  # longest first
    for b in batches:
        width = max(int(lengths[b].max()), 1)
        assert max_rows is None or len(b) <= max_rows
        assert max_tokens is None or len(b) == 1 or len(b) * width <= max_tokens
    if max_tokens is None and max_rows is None:
        assert len(batches) == 1
    if max_tokens:  # greedy: the next row would have broken the budget (or the rows ran out)
        for b in batches[:-1]:
            width = max(int(lengths[b[0]]), 1)
            assert (len(b) + 1) * width > max_tokens or (max_rows is not None and len(b) == max_rows)
