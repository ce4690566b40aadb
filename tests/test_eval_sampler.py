"""The ``sampler`` lm-eval backend (the training sampler behind lm-eval's LM interface)."""

from __future__ import annotations

import pytest
import torch

from verl_bench.evaluate.sampler_lm import SamplerLM, _cut, _settings
from verl_bench.models import load_model, resolve_model


class _Req:
    def __init__(self, prompt, kw):
        self.args = (prompt, kw)


@pytest.fixture(scope="module")
def tiny():
    return resolve_model("tiny:test")


def test_greedy_matches_hf_generate_and_repeats_share_a_prompt(tiny):
    lm = SamplerLM(tiny, device="cpu")
    prompts = ["What is 2 + 3?", "Compute 7 times 6, please.", "Hi"]
    kw = {"until": ["<|im_end|>"], "do_sample": False, "temperature": 0.0, "max_gen_toks": 7}
    reqs = [_Req(p, kw) for p in prompts for _ in range(2)]  # lm-eval passes a problem's repeats as copies
    out = lm.generate_until(reqs)
    assert len(out) == 6 and out[0::2] == out[1::2]  # greedy: both copies of a prompt agree
    model, tok = load_model(tiny, device="cpu")
    for p, text in zip(prompts, out[0::2]):
        ids = tok(p, return_tensors="pt", add_special_tokens=False)
        ref = model.generate(**ids, do_sample=False, max_new_tokens=7, pad_token_id=tok.pad_token_id)
        want = tok.decode(ref[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        assert text == _cut(want, ("<|im_end|>",))


def test_sampled_copies_differ_and_are_reproducible(tiny):
    lm = SamplerLM(tiny, device="cpu")
    kw = {"until": [], "do_sample": True, "temperature": 1.0, "top_p": 1.0, "max_gen_toks": 6}
    torch.manual_seed(0)
    a = lm.generate_until([_Req("Tell me a number", kw) for _ in range(4)])
    torch.manual_seed(0)
    b = lm.generate_until([_Req("Tell me a number", kw) for _ in range(4)])
    assert a == b and len(set(a)) > 1


def test_settings_and_stop_strings():
    assert _settings({"until": "\nQ:", "do_sample": True, "temperature": 0.6, "top_p": 0.95, "max_gen_toks": 9}) \
        == (("\nQ:",), 0.6, 0.95, 9)
    assert _settings({"until": ["x"], "do_sample": False, "temperature": 0.6, "max_gen_toks": 9}) == (("x",), 0.0, 1.0, 9)
    assert _cut("ab\nQuestion: c", ("\nQuestion:",)) == "ab" and _cut("abc", ()) == "abc"
