"""The GRPO/VERL loop end to end on a tiny model: plain, resumed, shaped vs unshaped, under Ray Train."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from verl_bench import reward as reward_lib
from verl_bench import train as train_lib
from verl_bench.checkpoint import STATE_FILE, latest_checkpoint, load_trainer_state
from verl_bench.config import ConfigError, load_config
from verl_bench.metrics import METRIC_NAMES, STEP_METRICS
from verl_bench.train import train

TINY = "tiny:test"


def _cfg(tmp_path: Path, name: str, *sets: str):
    base = {
        "model": TINY, "run_dir": str(tmp_path / name), "steps": 3, "checkpoint_every": 1,
        "keep_checkpoints": 0, "threads": 2,
        "data": {"train": "arithmetic_l1", "eval": "arithmetic_test_l1", "eval_size": 4},
        "rollout": {"prompts_per_step": 2, "n": 4, "max_new_tokens": 12},
        "rank": {"stride": 3, "window": 64},
        "algo": {"lr": 1e-3},
    }
    return load_config(None, list(sets), base=base)


def alternating(texts, golds, **kw):
    """A random tiny model never answers right: mark every other response correct so groups have signal."""
    grades = reward_lib.grade_batch(texts, golds, **kw)
    return [reward_lib.Grade(answer=g.answer, boxed=g.boxed, correct=(i % 2 == 0)) for i, g in enumerate(grades)]


def _weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    model = AutoModelForCausalLM.from_pretrained(run_dir / "checkpoints" / f"step_{step:06d}")
    return {k: v.clone() for k, v in model.state_dict().items()}


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_three_steps_write_hf_checkpoints_and_metrics(tmp_path):
    cfg = _cfg(tmp_path, "plain")
    seen = []
    last = train(cfg, report=lambda m, c: seen.append((m, c)), grader=alternating)
    assert last["step"] == 3
    steps = [m["step"] for m, _ in seen]
    assert steps == [0, 1, 2, 3]  # step 0 is the validation before training
    # the row holds every step metric of the one list the sweep checks names against, and nothing else
    assert set(seen[-1][0]) <= set(METRIC_NAMES)
    assert set(STEP_METRICS) <= set(seen[1][0])
    # no KL or entropy term: not computed, so not reported (a 0.0 entropy would read as collapse)
    assert "kl" not in seen[1][0] and "entropy" not in seen[1][0]
    assert {"verl/mu_ERA", "verl/mu_ERV", "verl/mu_ER"} <= set(seen[2][0])  # the baselines, once they exist
    assert seen[-1][0]["rank/er"] > 1.0
    assert seen[1][0]["verl/frac_shaped"] == 0.0  # first step: no baseline, no shaping
    ckpt = latest_checkpoint(cfg.run_dir)
    assert ckpt == seen[-1][1] and ckpt.name == "step_000003"
    # the checkpoint is a plain HF folder: transformers loads model and tokenizer as they are
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    tok = AutoTokenizer.from_pretrained(ckpt)
    ids = tok("2 + 2 =", return_tensors="pt").input_ids
    assert model(ids).logits.shape[-1] == model.config.vocab_size
    assert (ckpt / STATE_FILE).is_file()
    assert [r["step"] for r in _rows(Path(cfg.run_dir))] == [0, 1, 2, 3]


def test_resume_continues_exactly(tmp_path):
    full = _cfg(tmp_path, "full")
    train(full, grader=alternating)
    part = _cfg(tmp_path, "part")
    train(part, stop_after=1, grader=alternating)  # "killed" after step 1 (its checkpoint is on disk)
    assert latest_checkpoint(part.run_dir).name == "step_000001"
    state = load_trainer_state(latest_checkpoint(part.run_dir))  # weights_only: no pickle
    assert state["shaper"]["step"] == 1
    train(part, grader=alternating)  # resumes at step 2 from the newest checkpoint
    a, b = _rows(Path(full.run_dir)), _rows(Path(part.run_dir))
    assert [r["step"] for r in b] == [0, 1, 2, 3]
    # the same config twice: one entry in the run's config history, every row says it produced it
    assert sorted(p.name for p in (Path(part.run_dir) / "configs").iterdir()) == ["config_000.yaml"]
    assert {r["config_version"] for r in b} == {0}
    for key in ("reward/mean", "rank/er", "verl/phi_mean", "loss", "grad_norm"):
        assert a[-1][key] == b[-1][key], key
    wa, wb = _weights(Path(full.run_dir), 3), _weights(Path(part.run_dir), 3)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_shaping_changes_the_update_only_after_the_first_step(tmp_path):
    on = _cfg(tmp_path, "on", "steps=2", "shaping.enabled=true", "shaping.baseline_init=bias_corrected")
    off = _cfg(tmp_path, "off", "steps=2", "shaping.enabled=false")
    train(on, grader=alternating)
    train(off, grader=alternating)
    w_on1, w_off1 = _weights(Path(on.run_dir), 1), _weights(Path(off.run_dir), 1)
    assert all(torch.equal(w_on1[k], w_off1[k]) for k in w_on1)  # step 1: Phi is off, updates identical
    rows_on = _rows(Path(on.run_dir))
    assert rows_on[-1]["verl/frac_shaped"] > 0
    w_on2, w_off2 = _weights(Path(on.run_dir), 2), _weights(Path(off.run_dir), 2)
    assert any(not torch.equal(w_on2[k], w_off2[k]) for k in w_on2)


def test_bad_config_file_names_file_line_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: tiny:test\nrollout:\n  n: 4\n  temprature: 0.7\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:4: rollout.temprature: unknown key \(did you mean 'temperature'\?\)"):
        load_config(bad)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("sets,match", [
    (["shaping.kappa=-1"], r"--set shaping.kappa"),
    (["rollout.n=four"], r"rollout.n: expected an integer"),
    (["algo.estimator=ppo2"], r"algo.estimator: unknown estimator 'ppo2'"),
    (["micro_batch_tokens=0"], r"micro_batch_tokens: must be >= 1 or null \(got 0\)"),
    (["rollout.max_new_tokens=64", "rollout.min_new_tokens=65"],
     r"rollout.min_new_tokens: must be in \[0, rollout.max_new_tokens\] \(got 65\)"),
    # the prompt template and the data sets are checked with the rest, not after the model loaded
    (["data.template=qwen_boxed"], r"data.template: unknown prompt template 'qwen_boxed'"),
    (["data.eval=arithmetic_tst_l1"], r"data.eval: unknown dataset 'arithmetic_tst_l1' \(did you mean"),
    (["max_nonfinite_steps=0"], r"max_nonfinite_steps: must be >= 1"),
])
def test_bad_config_is_rejected_before_any_work(sets, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, sets)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_ray_train_torchtrainer(tmp_path, workers):
    ray = pytest.importorskip("ray")
    from verl_bench.distributed import train_with_ray

    cfg = _cfg(tmp_path, f"ray{workers}", "steps=2", f"ray.num_workers={workers}", "rollout.prompts_per_step=2",
               "threads=1")
    try:
        result = train_with_ray(cfg, storage_path=str(tmp_path / "ray_storage"))
    finally:
        ray.shutdown()
    assert result.error is None
    assert result.metrics["step"] == 2
    assert result.checkpoint is not None
    with result.checkpoint.as_directory() as d:
        model = AutoModelForCausalLM.from_pretrained(d)
        assert (Path(d) / STATE_FILE).is_file()
    assert model.config.num_hidden_layers >= 1
    # every worker sampled its own shard: the global batch holds prompts_per_step * n responses
    rows = _rows(Path(cfg.run_dir))
    assert rows[-1]["step"] == 2


def test_prompt_stream_epochs_and_resume_position():
    from verl_bench.data import PromptStream

    stream = PromptStream(7, seed=3)
    first = stream.take(7)
    assert sorted(first) == list(range(7))  # one epoch = a permutation: every problem once
    second = stream.take(7)
    assert sorted(second) == list(range(7)) and second != first  # a fresh shuffle per epoch
    resumed = PromptStream(7, seed=3, position=5)  # a checkpoint stores only the position
    assert resumed.take(9) == (first + second)[5:14]


@pytest.mark.parametrize("mini_batches,engine", [(1, "hf"), (2, "cached")])
def test_kl_entropy_minibatches_and_shared_prompt_path(tmp_path, monkeypatch, mini_batches, engine):
    # both engines record the hidden states; several mini-batches still need one no-grad pass for the old
    # log-probs (and its hidden states are used then)
    cfg = _cfg(tmp_path, "kl", "steps=2", "share_prompt=true", "micro_batch=3", f"rollout.engine={engine}",
               "algo.kl_coef=0.05", "algo.entropy_coef=0.01", f"algo.mini_batches={mini_batches}")
    losses, norms = [], []  # every mini-batch's loss and gradient norm, as the update computed them
    backward, clip = train_lib.policy_backward, torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(train_lib, "policy_backward", lambda *a, **k: losses.append(float(backward(*a, **k))) or
                        torch.tensor(losses[-1]))
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: norms.append(float(clip(*a, **k))) or
                        norms[-1])
    rows = []
    train(cfg, report=lambda m, c: rows.append(m), grader=alternating)
    first, second = rows[1], rows[2]
    assert len(losses) == len(norms) == 2 * mini_batches
    # the step reports the mean over its mini-batches, not the last one
    assert first["loss"] == pytest.approx(sum(losses[:mini_batches]) / mini_batches, rel=1e-12)
    assert second["grad_norm"] == pytest.approx(sum(norms[mini_batches:]) / mini_batches, rel=1e-12)
    if mini_batches == 1:
        assert first["kl"] == pytest.approx(0.0, abs=1e-6)  # one update per batch: it IS the reference
    else:
        assert first["kl"] > 0  # the second mini-batch is scored after the first optimizer step
    assert second["kl"] > 0  # after an update the policy has moved away from the frozen reference
    assert second["entropy"] > 0
    with pytest.raises(ConfigError, match="share_prompt: cannot be combined with gradient_checkpointing"):
        load_config(None, ["share_prompt=true", "gradient_checkpointing=true"])


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean"])
def test_micro_batched_shared_prompt_update_equals_one_pass(tmp_path, agg):
    """The demo's path (shared prompt KV, micro-batches of 3 backpropagated one by one) trains like scoring the
    whole rollout in one micro-batch without sharing: same first step."""
    plain = _cfg(tmp_path, "plain", "steps=1", "share_prompt=false", "micro_batch=null", f"algo.loss_agg={agg}",
                 "algo.entropy_coef=0.01")
    fast = _cfg(tmp_path, "fast", "steps=1", "share_prompt=true", "micro_batch=3", "micro_batch_tokens=12",
                f"algo.loss_agg={agg}", "algo.entropy_coef=0.01")
    a, b = train(plain, grader=alternating), train(fast, grader=alternating)
    assert a["response_length"] == b["response_length"]  # the same rollout (sampling comes first)
    for key in ("loss", "grad_norm", "rank/er", "rank/erv", "rank/era", "entropy", "clip_frac"):
        assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key


def _average_worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    from verl_bench.distributed import World

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        net = _grad_net()
        x = torch.randn(5, 4, generator=torch.Generator().manual_seed(100 + rank))
        loss = net[1](net[0](x)).square().sum()
        if rank == 0:  # the extra layer gets a gradient on rank 0 only (rank 1 must count as zero)
            loss = loss + net[2](x).sum()
        loss.backward()
        World.current().average_gradients(net.parameters(), bucket_elements=7)  # several buckets
        torch.save([p.grad for p in net.parameters()], f"{out_dir}/grads{rank}.pt")
    finally:
        dist.destroy_process_group()


def _grad_net():
    torch.manual_seed(0)
    return torch.nn.ModuleList([torch.nn.Linear(4, 3), torch.nn.Linear(3, 2), torch.nn.Linear(4, 1)])


def test_average_gradients_over_two_gloo_workers_is_the_mean(tmp_path):
    """Data parallelism without DDP's hooks: after the all-reduce every worker holds the mean gradient."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_average_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    expected = []
    for rank in (0, 1):  # independent reference: each worker's gradient computed here, then averaged
        net = _grad_net()
        x = torch.randn(5, 4, generator=torch.Generator().manual_seed(100 + rank))
        loss = net[1](net[0](x)).square().sum() + (net[2](x).sum() if rank == 0 else 0.0)
        expected.append(torch.autograd.grad(loss, list(net.parameters()), allow_unused=True))
    mean = [((a if a is not None else 0) + (b if b is not None else 0)) / 2 for a, b in zip(*expected)]
    for rank in (0, 1):
        got = torch.load(tmp_path / f"grads{rank}.pt")
        for g, m in zip(got, mean):
            torch.testing.assert_close(g, m, rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("keep", [False, True])
def test_keep_freed_memory_keeps_large_blocks_for_reuse(keep):
    """With keep_freed_memory a freed 256 MB tensor stays in the process for the next micro-batch; without it,
    glibc hands it back to the OS at once (so the next one page-faults again)."""
    import subprocess
    import sys

    code = f"""
import os, torch
from verl_bench.sysutil import keep_freed_memory
page = os.sysconf("SC_PAGE_SIZE")
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * page
assert keep_freed_memory() if {keep} else True
before = rss()
x = torch.ones(64 << 20)  # 256 MB, touched
during = rss()
del x
print(during - before, rss() - before)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    grown, kept = int(out[0]), int(out[1])
    assert grown > 200 << 20
    if keep:
        assert kept > 200 << 20
    else:
        assert kept < 50 << 20


def test_step_metrics_read_rank_metrics_by_name_and_only_computed_terms():
    """ER, ERV, ERA reach the row by name (no column numbers), and kl/entropy appear only when their
    coefficient makes the loss compute them."""
    from types import SimpleNamespace

    from verl_bench.distributed import World
    from verl_bench.rank import RankMetrics
    from verl_bench.shaping import ShapingOutput
    from verl_bench.train import Shaped, UpdateResult, step_metrics

    b = 4
    rank = RankMetrics(er=torch.full((b,), 300.0, dtype=torch.float64), erv=torch.full((b,), 2.0, dtype=torch.float64),
                       era=torch.full((b,), -1.0, dtype=torch.float64))
    zeros = torch.zeros(b, dtype=torch.float64)
    shaped = Shaped(advantages=torch.zeros(b, 3), rewards=torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64),
                    correct=torch.tensor([1.0, 0.0, 1.0, 0.0]), rank=rank, groups=torch.tensor([0, 0, 1, 1]),
                    bonus=None,
                    shaping=ShapingOutput(zeros, zeros, torch.zeros(b, 3, dtype=torch.float64), 1.0, False),
                    shaper_before={})
    upd = UpdateResult(loss=0.25, grad_norm=2.0, stats={"kl": 0.5, "entropy": 0.3, "clip_frac": 0.1}, skipped=False)
    eos = 2
    # lengths 3, 4, 5, 6 with max_new_tokens 6 (below): the 6-token row ends without EOS, the others with it
    ids = torch.tensor([[5, 5, eos, 0, 0, 0], [5, 5, 5, eos, 0, 0], [5, 5, 5, 5, eos, 0], [5, 5, 5, 5, 5, 5]])
    rollout = SimpleNamespace(response_lengths=torch.tensor([3, 4, 5, 6]), response_ids=ids)
    times = {"time/step_s": 2.0, "time/generate_s": 1.0, "time/reward_s": 0.5, "time/update_s": 0.5}
    for sets, with_kl, with_entropy in ([], False, False), (["algo.kl_coef=0.1", "algo.entropy_coef=0.01"], True, True):
        run = SimpleNamespace(cfg=load_config(None, [*sets, "rollout.max_new_tokens=6"]), world=World(),
                              config_version=2, nonfinite={"total": 1, "consecutive": 0}, device=torch.device("cpu"),
                              tokenizer=SimpleNamespace(eos_token_id=eos))
        row = step_metrics(run, 7, rollout, shaped, upd, times)
        assert (row["rank/er"], row["rank/erv"], row["rank/era"]) == (300.0, 2.0, -1.0)
        assert ("kl" in row, "entropy" in row) == (with_kl, with_entropy)
        assert row["accuracy"] == 0.5 and row["response_length"] == 4.5 and row["config_version"] == 2
        assert row["train/nonfinite_steps"] == 1 and row["verl/active"] == 0.0
        assert row["response/truncated"] == 0.25  # one row of four hit the cap without EOS
        assert row["groups/all_equal"] == 0.0  # both groups hold a 1 and a 0
        assert set(row) <= set(METRIC_NAMES)


def test_all_equal_fraction_counts_groups_where_the_bonus_cannot_act():
    from verl_bench.train import all_equal_fraction

    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.5, 0.5])
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert all_equal_fraction(rewards, groups) == 0.75  # groups 0, 2, 3 are uniform; group 1 is not
    assert all_equal_fraction(rewards[2:4], groups[2:4]) == 0.0


def test_bf16_compute_keeps_fp32_master_weights_that_move(tmp_path):
    """dtype names the compute dtype: the policy (and the optimizer's state) stays fp32 and moves at a small
    lr; the sampler is a bf16 copy refreshed from the updated master weights after every step."""
    cfg = _cfg(tmp_path, "bf16", "dtype=bfloat16", "steps=1", "data.eval_size=0", "algo.lr=5e-7")
    assert cfg.algo.lr == 5e-7  # "5e-7" is a string to YAML 1.1; the loader reads it as the number it is
    run = train_lib.setup(cfg, grader=alternating)
    assert {p.dtype for p in run.lm.parameters()} == {torch.float32}
    assert {p.dtype for p in run.sampler.parameters()} == {torch.bfloat16} and run.sampler is not run.lm
    before = {k: v.clone() for k, v in run.lm.state_dict().items()}
    prompts, rollout = train_lib.sample(run)
    rewards, correct = train_lib.grade(run, prompts, rollout)
    rollout = rollout.to(run.device)
    rank, old_logp = train_lib.rank_metrics(run, rollout)
    shaped = train_lib.shaped_advantages(run, rollout, rewards, correct, rank)
    upd = train_lib.update(run, 1, rollout, shaped, old_logp)
    assert not upd.skipped
    moved = [k for k, v in run.lm.state_dict().items() if not torch.equal(v, before[k])]
    assert len(moved) > len(before) // 2  # an AdamW step at lr 5e-7 moves fp32 weights (bf16 would round it away)
    for c, m in zip(run.sampler.parameters(), run.lm.parameters(), strict=True):
        assert torch.equal(c, m.to(torch.bfloat16))  # the rollout copy follows the update
    state = run.optimizer.state_dict()["state"]
    assert all(t.dtype == torch.float32 for s in state.values() for t in s.values() if t.dim() > 0)


def test_optimizer_refuses_bf16_master_weights():
    from verl_bench.precision import PrecisionError, master_weights_check

    w = torch.nn.Parameter(torch.zeros(4, dtype=torch.bfloat16))
    with pytest.raises(PrecisionError, match="master weights must be float32"):
        master_weights_check(torch.optim.AdamW([w], lr=1e-3))
