"""ray.strategy: fsdp and ddp over 2 gloo processes (torch.multiprocessing) against one process, on a tiny model.

One spawn of two workers runs every two-process scenario (``_two_workers``) and writes what it measured; the
tests compare that with a single-process reference computed here. The step comparisons feed every run the
same global rollout (sampled once here; each worker takes its prompt's rows) and call the loop's own phases
(grade, rank_metrics, shaped_advantages, update), so only the data-parallel strategy differs:

    fsdp_prompt  FSDP2, shared-prompt scoring, micro-batches of at most 2 rows and 12 positions: 4 on one
                 worker, 3 on the other (two responses are cut short), evened to 4 (FSDP gathers per micro-batch)
    fsdp_ckpt    FSDP2, per-layer activation checkpointing, micro-batches of 3 rows
    ddp          two replicas, World.average_gradients, micro-batches of 2 rows
    reference    one process, the whole batch in one micro-batch

The loss aggregation is seq_mean: each worker's loss is the mean over its own responses and the workers'
gradients are averaged, which equals the mean over the global batch only when every response weighs the
same (token_mean would weigh each worker's tokens by its own count).
"""

from __future__ import annotations

import dataclasses
import json
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import AutoModelForCausalLM

from verl_bench import train as train_lib
from verl_bench.checkpoint import latest_checkpoint, load_trainer_state
from verl_bench.config import ConfigError, load_config

from .test_train import alternating

BASE = {
    "model": "tiny:test", "steps": 3, "checkpoint_every": 1, "keep_checkpoints": 0, "threads": 1,
    "data": {"train": "arithmetic_l1", "eval": "arithmetic_test_l1", "eval_size": 0},
    "rollout": {"prompts_per_step": 2, "n": 4, "max_new_tokens": 10},
    "rank": {"stride": 3, "window": 64},
    "algo": {"lr": 1e-3, "loss_agg": "seq_mean", "kl_coef": 0.05, "entropy_coef": 0.01},
}
MAX_GRAD_NORM = 2e-5  # the step's gradient norm is 4.05e-5: clipping halves the gradients
STEP = [f"algo.max_grad_norm={MAX_GRAD_NORM}"]
STEP_RUNS = {  # the two-process step scenarios (see the module doc)
    "fsdp_prompt": ["ray.strategy=fsdp", "share_prompt=true", "micro_batch=2", "micro_batch_tokens=12"],
    "fsdp_ckpt": ["ray.strategy=fsdp", "gradient_checkpointing=true", "micro_batch=3"],
    "ddp": ["ray.strategy=ddp", "micro_batch=2"],
}
# fp32 tolerances for one step. The loss and the gradients sum the same terms in another order. The
# gradient norm is compared with the float64 norm of the reference's gradients: fp32's own error there is
# ~2e-5 (torch's single-process fp32 norm of these 0.5M gradients is off by 2.4e-5, FSDP's sum of the
# shards' norms by 0.9e-5), and the clipped gradients carry that error. AdamW's first step moves a weight
# by lr * g / (|g| + eps): a gradient difference d moves it by at most lr * d / eps more (where |g| ~ eps),
# so the weights may differ by that bound on top of fp32 rounding.
TOL = {"loss": 1e-6, "grads": 5e-5, "grad_norm": 5e-5, "weights": 1e-6}
ADAM_EPS = 1e-8


def _cfg(run_dir: Path, *sets: str, workers: int = 2):
    return load_config(None, [f"ray.num_workers={workers}", *sets], base={**BASE, "run_dir": str(run_dir)})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_step(run, prompts: list[int], rollout) -> dict:
    """The loop's step 1 on a given rollout: grade, rank metrics, shaped advantages, update. Returns the
    loss (mean over workers), the gradient norm and the updated weights: whole (ddp), this worker's shards
    (fsdp: ``to_local``, reassembled by the test, not by the code under test)."""
    rewards, correct = train_lib.grade(run, prompts, rollout)
    rollout = rollout.to(run.device)
    shaped = train_lib.shaped_advantages(run, rollout, rewards, correct, train_lib.rank_metrics(run, rollout)[0])
    upd = train_lib.update(run, 1, rollout, shaped, None)  # one mini-batch: no old log-probs
    assert not upd.skipped
    local = lambda t: (t.to_local() if hasattr(t, "to_local") else t).detach().clone()
    weights = {k: local(v) for k, v in run.lm.state_dict().items()}
    grads = {k: local(p.grad) for k, p in run.lm.named_parameters()}  # as the step used them: clipped
    return {"loss": run.world.sum([upd.loss])[0] / run.world.size, "grad_norm": upd.grad_norm, "weights": weights,
            "grads": grads}


def _my_rows(prompts: list[int], rollout, rank: int, size: int):
    """This worker's share of a global rollout: its prompts and their responses (group ids from 0)."""
    per = len(prompts) // size
    mine = (rollout.group_ids >= rank * per) & (rollout.group_ids < (rank + 1) * per)
    local = rollout.select(mine.nonzero().squeeze(1))
    return prompts[rank * per:(rank + 1) * per], dataclasses.replace(local, group_ids=local.group_ids - rank * per)


# ------------------------------------------------------------------------------- the two-worker scenarios
def _two_workers(rank: int, port: int, root: str) -> None:
    root_dir = Path(root)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        given = torch.load(root_dir / "rollout.pt", weights_only=False)
        for name, sets in STEP_RUNS.items():
            run = train_lib.setup(_cfg(root_dir / name, *STEP, *sets))
            prompts, rollout = _my_rows(given["prompts"], given["rollout"], rank, 2)
            out = _one_step(run, prompts, rollout)
            if name == "fsdp_prompt":  # the loop's own save: its HF folder is compared with the shards
                out["checkpoint"] = str(train_lib.save(run, 1))
            torch.save(out, root_dir / f"{name}.rank{rank}.pt")
        torch.save(_bf16_step(root_dir, given, rank), root_dir / f"bf16.rank{rank}.pt")
        # save -> kill -> resume against an uninterrupted run, both FSDP
        full = _cfg(root_dir / "full", "ray.strategy=fsdp", "gradient_checkpointing=true")
        train_lib.train(full, grader=alternating)
        part = _cfg(root_dir / "part", "ray.strategy=fsdp", "gradient_checkpointing=true")
        train_lib.train(part, stop_after=1, grader=alternating)  # "killed" after step 1's checkpoint
        train_lib.train(part, grader=alternating)
    finally:
        dist.destroy_process_group()
    if rank == 0:  # the two workers' step-1 checkpoint resumed by one worker (a private process group)
        _one_worker_resume(root_dir)


def _bf16_step(root_dir: Path, given: dict, rank: int) -> dict:
    """One FSDP step computing in bf16 (MixedPrecisionPolicy) at the paper's lr: what the master weights,
    the optimizer state and the sampler's copy are after it."""
    run = train_lib.setup(_cfg(root_dir / "bf16", "ray.strategy=fsdp", "dtype=bfloat16", "algo.lr=5e-7"))
    before = {k: p.to_local().clone() for k, p in run.lm.named_parameters()}
    _one_step(run, *_my_rows(given["prompts"], given["rollout"], rank, 2))
    after = dict(run.lm.named_parameters())
    moved = sum(int((after[k].to_local() != v).sum()) for k, v in before.items())
    whole = [p.full_tensor() for p in run.lm.parameters()]  # a collective: every worker gathers
    return {"moved": moved, "count": sum(v.numel() for v in before.values()),
            "master": {str(p.dtype) for p in run.lm.parameters()},
            "optimizer": {str(t.dtype) for st in run.optimizer.state.values() for t in st.values() if t.dim() > 0},
            "sampler": {str(p.dtype) for p in run.sampler.parameters()},
            "sampler_is_rounded_master": all(torch.equal(c, m.to(torch.bfloat16))
                                             for c, m in zip(run.sampler.parameters(), whole, strict=True))}


def _one_worker_resume(root_dir: Path) -> None:
    from verl_bench.fsdp import gathered_state

    ckpt = root_dir / "part" / "checkpoints" / "step_000001"
    cfg = _cfg(root_dir / "one", "ray.strategy=fsdp", workers=1)
    run = train_lib.setup(cfg, resume_from=ckpt)
    saved = load_trainer_state(ckpt)["optimizer"]
    _, restored = gathered_state(run.lm, run.optimizer)
    diff = max(float((restored["state"][k][s] - v).abs().max()) for k, st in saved["state"].items()
               for s, v in st.items())
    last = train_lib.train(cfg, resume_from=ckpt, grader=alternating)
    (root_dir / "one.json").write_text(json.dumps({"optimizer_max_diff": diff, "last_step": last["step"],
                                                   "loss": last["loss"], "start_step": run.start_step}))
    dist.destroy_process_group()


def _cut(rollout, lengths: dict[int, int], pad: int):
    """The rollout with response ``row`` ending after ``lengths[row]`` tokens (the tiny model's samples all
    run to max_new_tokens, so every micro-batch plan would be the same)."""
    keep = torch.arange(rollout.response_ids.shape[1]) < torch.tensor(
        [lengths.get(r, rollout.response_ids.shape[1]) for r in range(len(rollout.texts))])[:, None]
    mask = rollout.response_mask & keep
    return dataclasses.replace(rollout, response_mask=mask, response_ids=rollout.response_ids.where(mask, pad),
                               hidden=rollout.hidden * mask[..., None].to(rollout.hidden))


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """The single-process reference step, then every two-worker scenario (one spawn). Returns the folder."""
    root = tmp_path_factory.mktemp("fsdp")
    ref = train_lib.setup(_cfg(root / "reference", *STEP, "micro_batch=null", workers=1))
    torch.manual_seed(1234)
    prompts, rollout = train_lib.sample(ref)
    rollout = _cut(rollout, {4: 3, 5: 2}, ref.tokenizer.pad_token_id)  # 2 of the second prompt's responses
    torch.save({"prompts": prompts, "rollout": rollout}, root / "rollout.pt")
    initial = {k: v.clone() for k, v in ref.lm.state_dict().items()}
    torch.save({**_one_step(ref, prompts, rollout), "initial": initial}, root / "reference.pt")
    mp.spawn(_two_workers, args=(_free_port(), str(root)), nprocs=2, join=True)
    return root


def _whole(root: Path, name: str, what: str = "weights") -> tuple[dict, dict]:
    """A scenario's rank-0 result, with its weights (or gradients) whole: the two workers' shards
    concatenated along the first dimension (FSDP2 shards dim 0; ddp replicas are checked equal and taken from
    rank 0)."""
    a, b = (torch.load(root / f"{name}.rank{r}.pt", weights_only=False) for r in (0, 1))
    if name == "ddp":
        assert all(torch.equal(a[what][k], b[what][k]) for k in a[what])  # replicas in sync
        return a, a[what]
    return a, {k: torch.cat([a[what][k], b[what][k]]) for k in a[what]}


# ------------------------------------------------------------------------------------------------ tests
@pytest.mark.slow
@pytest.mark.parametrize("name", list(STEP_RUNS))
def test_two_worker_step_equals_one_process_step(two_workers, name):
    """(a) FSDP over 2 workers, (b) DDP over 2 workers: the same loss, gradient norm and updated weights as
    one process on the same global batch, within fp32 tolerance."""
    ref = torch.load(two_workers / "reference.pt", weights_only=False)
    got, weights = _whole(two_workers, name)
    _, grads = _whole(two_workers, name, "grads")
    assert got["loss"] == pytest.approx(ref["loss"], rel=TOL["loss"], abs=TOL["loss"])
    scale = max(float(g.abs().max()) for g in ref["grads"].values())
    d_grad = max(float((grads[k] - ref["grads"][k]).abs().max()) for k in ref["grads"])
    assert d_grad <= TOL["grads"] * scale
    clipped64 = float(torch.linalg.vector_norm(torch.cat([g.double().flatten() for g in ref["grads"].values()])))
    norm64 = clipped64 * (ref["grad_norm"] + 1e-6) / MAX_GRAD_NORM  # undo the clip (torch adds 1e-6 to the norm)
    assert got["grad_norm"] == pytest.approx(norm64, rel=TOL["grad_norm"])
    assert ref["grad_norm"] == pytest.approx(norm64, rel=TOL["grad_norm"])
    assert weights.keys() == ref["weights"].keys()
    worst = max(float((weights[k] - ref["weights"][k]).abs().max()) for k in weights)
    moved = min(float((ref["weights"][k] - w0).abs().max()) for k, w0 in ref["initial"].items())
    print(f"\n{name}: |d loss| {abs(got['loss'] - ref['loss']):.1e}, max |d grad| {d_grad:.1e} (max |grad| "
          f"{scale:.1e}), grad norm {got['grad_norm']:.8e} vs one process {ref['grad_norm']:.8e} vs float64 "
          f"{norm64:.8e}, max |d weight| {worst:.1e} (smallest move {moved:.1e})")
    assert worst <= TOL["weights"] + BASE["algo"]["lr"] * d_grad / ADAM_EPS
    assert moved > 100 * TOL["weights"]  # every tensor moved far more than fp32 rounding: the check has teeth


@pytest.mark.slow
def test_fsdp_checkpoint_is_a_plain_hf_folder_of_the_trained_weights(two_workers):
    """(d) The loop's save under FSDP (gathered on rank 0) loads with plain from_pretrained and holds exactly
    the workers' updated shards."""
    got, weights = _whole(two_workers, "fsdp_prompt")
    loaded = AutoModelForCausalLM.from_pretrained(got["checkpoint"]).state_dict()
    assert loaded.keys() == weights.keys()
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)
    state = load_trainer_state(got["checkpoint"])  # weights_only
    names = set(dict(AutoModelForCausalLM.from_pretrained(got["checkpoint"]).named_parameters()))
    assert set(state["optimizer"]["state"]) == names  # the optimizer state, whole and keyed by name


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_fsdp_resume_continues_bit_identically(two_workers):
    """(c) Save -> kill -> resume under FSDP on 2 workers equals the uninterrupted run: every step's row
    and the final weights, bit for bit."""
    full, part = _rows(two_workers / "full"), _rows(two_workers / "part")
    assert [r["step"] for r in part] == [1, 2, 3] == [r["step"] for r in full]
    for key in ("loss", "grad_norm", "reward/mean", "rank/er", "verl/phi_mean", "kl", "entropy"):
        assert [r[key] for r in part] == [r[key] for r in full], key
    wa = AutoModelForCausalLM.from_pretrained(latest_checkpoint(two_workers / "full")).state_dict()
    wb = AutoModelForCausalLM.from_pretrained(latest_checkpoint(two_workers / "part")).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    first = AutoModelForCausalLM.from_pretrained(two_workers / "full" / "checkpoints" / "step_000001").state_dict()
    assert any(not torch.equal(wa[k], first[k]) for k in wa)  # steps 2 and 3 trained


@pytest.mark.slow
def test_two_worker_fsdp_checkpoint_resumes_on_one_worker(two_workers):
    """Resume on another world size: the 2-worker step-1 checkpoint on 1 worker restores the optimizer state
    exactly (re-sharded) and trains to the end."""
    one = json.loads((two_workers / "one.json").read_text())
    assert one["start_step"] == 1 and one["optimizer_max_diff"] == 0.0
    assert one["last_step"] == 3 and one["loss"] == one["loss"]  # finite
    assert [r["step"] for r in _rows(two_workers / "one")] == [2, 3]


@pytest.mark.slow
def test_fsdp_checkpoint_resumes_under_ddp(two_workers):
    """The FSDP checkpoint (optimizer state keyed by name) resumed by one plain ddp process: its optimizer
    holds exactly the saved state, parameter by parameter."""
    ckpt = two_workers / "part" / "checkpoints" / "step_000001"
    run = train_lib.setup(_cfg(two_workers / "ddp_resume", workers=1), resume_from=ckpt)
    saved = load_trainer_state(ckpt)["optimizer"]["state"]
    mine = run.optimizer.state_dict()["state"]
    names = [name for name, _ in run.lm.named_parameters()]
    assert run.start_step == 1 and len(mine) == len(saved) == len(names)
    assert all(torch.equal(mine[i][k], saved[name][k]) for i, name in enumerate(names) for k in saved[name])


@pytest.mark.slow
def test_fsdp_bf16_compute_steps_fp32_master_shards(two_workers):
    """Under FSDP, dtype: bfloat16 is the MixedPrecisionPolicy's compute dtype: the sharded master weights and
    AdamW's state stay fp32 and an lr 5e-7 step moves them (bf16 weights would round it away); the engines
    sample from a bf16 copy of the updated weights."""
    for rank in (0, 1):
        got = torch.load(two_workers / f"bf16.rank{rank}.pt", weights_only=False)
        assert got["master"] == got["optimizer"] == {"torch.float32"} and got["sampler"] == {"torch.bfloat16"}
        assert got["moved"] > got["count"] // 2
        assert got["sampler_is_rounded_master"]


def test_strategy_is_validated():
    assert load_config(None, []).ray.strategy == "ddp"
    with pytest.raises(ConfigError, match=r"ray.strategy: must be one of \['ddp', 'fsdp'\], got 'zero3'"):
        load_config(None, ["ray.strategy=zero3"])
