"""The GRPO training loop with the VERL rank-shaped advantage, as a recipe: ``setup``, the loop, ``save``/``restore``.

    sample -> reward -> rank metrics -> shaped advantages -> update -> report

The sampler records the hidden states the rank metrics read, so advantages are known before the policy is
scored with grad; the update then backpropagates each scoring micro-batch as soon as it is scored (only one
micro-batch's activations are ever alive, nothing is recomputed).

``train(cfg, report=...)`` is a plain function: it runs alone (``verl-bench train``), inside each Ray Train
worker (``verl_bench.distributed`` wraps it; when torch.distributed is initialised the workers average their
gradients, as DDP would, or with ``ray.strategy: fsdp`` shard the model: ``verl_bench.fsdp``) and inside a
Tune trial. It never imports Ray. Checkpoints (``verl_bench.checkpoint``) are HF folders plus the trainer
state; a run resumes from its newest sound checkpoint exactly, and only under the config it was trained with
(``verl_bench.runfolder``).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from verl_bench import data as data_lib
from verl_bench import precision
from verl_bench import reward as reward_lib
from verl_bench.checkpoint import (
    STATE_FILE,
    checkpoint_config,
    latest_checkpoint,
    load_trainer_state,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from verl_bench.config import ConfigError, TrainConfig
from verl_bench.distributed import World
from verl_bench.errors import UserError
from verl_bench.fsdp import shard_models
from verl_bench.grpo import policy_loss
from verl_bench.metrics import METRIC_NAMES
from verl_bench.models import load_model
from verl_bench.policy import ResponseScorer, policy_backward, policy_forward
from verl_bench.rank import RankMetrics, rank_dynamics
from verl_bench.reward import Grader
from verl_bench.rollout import ENGINES, Rollout, SamplingParams
from verl_bench.rollout_vllm import VLLMEngine, check_vllm, mismatch_stats, tis_weights
from verl_bench.runfolder import append_metrics, check_resume, record_config, truncate_metrics
from verl_bench.shaping import RankShaper, ShapingOutput, stack_metrics, token_advantages
from verl_bench.sysutil import keep_freed_memory, peak_rss_gb, pick_device

Reporter = Callable[[dict, "Path | None"], None]

__all__ = ["METRIC_NAMES", "STATE_FILE", "NonFiniteError", "Run", "latest_checkpoint", "restore", "save",
           "setup", "train"]


class NonFiniteError(UserError):
    """Too many consecutive steps with a non-finite loss or gradient norm."""


@dataclass
class Run:
    """Everything ``setup`` builds. What a checkpoint holds: ``lm``'s weights, ``optimizer``, ``shaper``,
    ``stream``'s position, the RNGs and the non-finite step counters."""

    cfg: TrainConfig
    world: World
    run_dir: Path
    device: torch.device
    lm: torch.nn.Module  # the HF causal LM in fp32 (the master weights): scored with grad, stepped, saved
    compute_dtype: torch.dtype  # forward/backward run in this under autocast (bf16 on CUDA by default)
    sampler: torch.nn.Module  # what the engine samples from: ``lm`` itself, or its copy in the compute dtype
    tokenizer: object
    scorer: ResponseScorer  # the same weights, scored with grad by the update
    ref_scorer: ResponseScorer | None  # the frozen initial policy (only with a KL term)
    optimizer: torch.optim.Optimizer
    shaper: RankShaper
    stream: data_lib.PromptStream
    engine: object
    grader: Grader
    train_set: list
    eval_set: list
    train_prompts: list[str]
    eval_prompts: list[str]
    start_step: int = 0
    config_version: int = 0
    nonfinite: dict = field(default_factory=lambda: {"total": 0, "consecutive": 0})

    def score(self, scorer, rollout: Rollout):
        with self.autocast():
            return policy_forward(scorer, rollout, **self.scoring)

    def autocast(self):
        """Compute in ``compute_dtype`` over the fp32 master weights (under FSDP its MixedPrecisionPolicy
        gathers the weights in that dtype instead: no autocast)."""
        return precision.autocast(self.device, precision.MASTER_DTYPE if self.world.sharded else self.compute_dtype)

    @property
    def sampling(self) -> SamplingParams:
        r = self.cfg.rollout
        return SamplingParams(n=r.n, temperature=r.temperature, top_p=r.top_p, max_new_tokens=r.max_new_tokens,
                              min_new_tokens=r.min_new_tokens)

    @property
    def scoring(self) -> dict:
        """One scoring set-up for the policy and the reference; the sampling temperature divides both."""
        c = self.cfg
        return {"chunk_tokens": c.logits_chunk_tokens, "temperature": c.rollout.temperature,
                "micro_batch": c.micro_batch, "micro_batch_tokens": c.micro_batch_tokens,
                "share_prompt": c.share_prompt}


# ------------------------------------------------------------------------------------------- the loop
def train(cfg: TrainConfig, report: Reporter | None = None, resume_from: str | Path | None = None,
          stop_after: int | None = None, grader: Grader | None = None) -> dict:
    """Run (or resume) one GRPO/VERL training run. Returns the last step's metrics.

    ``report(metrics, checkpoint_dir_or_None)`` is called after every step; ``resume_from`` names a
    checkpoint folder (default: the newest sound one under ``cfg.run_dir``). ``grader(responses, golds,
    timeout_s=...)`` checks answers (default: ``verl_bench.reward.grade_batch``). ``stop_after`` ends the run
    early after that many steps of this call (used to test interruption); the run's length stays ``cfg.steps``.
    """
    run = setup(cfg, resume_from, grader)
    world = run.world
    metrics: dict = {}
    if run.start_step == 0 and cfg.data.eval_size > 0:
        metrics = {"step": 0, "config_version": run.config_version, **validation(run)}
        _log(world, f"step 0 | val acc {metrics['val/accuracy']:.3f} on {metrics['val/problems']} problems")
        _emit(run, metrics, None, report)

    for steps_this_call, step in enumerate(range(run.start_step + 1, cfg.steps + 1), start=1):
        t0 = time.perf_counter()
        # 1. sample this worker's shard of the step's prompts, n responses each
        prompts, rollout = sample(run)
        t_gen = time.perf_counter()
        # 2. reward each response
        rewards, correct = grade(run, prompts, rollout)
        t_rew = time.perf_counter()
        # 3. rank metrics of each response (and the policy's log-probs, when a scoring pass was needed)
        rollout = rollout.to(run.device)
        rank, policy_logp = rank_metrics(run, rollout)
        # 4. shaped advantages over the global batch (every worker holds the same baselines); when another
        #    engine (vLLM) sampled, its gap to the policy is measured and, with algo.tis_cap, corrected
        shaped = shaped_advantages(run, rollout, rewards, correct, rank)
        sampler_gap = sampler_correction(run, rollout, shaped, policy_logp)
        # 5. the update: clipped loss (+ KL, entropy), gradients averaged over workers, one optimizer step per
        #    mini-batch (the old log-probs: this policy's, before the first), skipped when not finite
        upd = update(run, step, rollout, shaped, policy_logp if cfg.algo.mini_batches > 1 else None)
        t_end = time.perf_counter()
        # 6. report, validate, checkpoint
        metrics = step_metrics(run, step, rollout, shaped, upd, {
            "time/step_s": t_end - t0, "time/generate_s": t_gen - t0, "time/reward_s": t_rew - t_gen,
            "time/update_s": t_end - t_rew}) | sampler_gap
        if cfg.eval_every and step % cfg.eval_every == 0 or step == cfg.steps:
            metrics.update(validation(run) if cfg.data.eval_size else {})
        due = (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.steps
        _log(world, _progress(metrics, cfg.steps))
        _emit(run, metrics, save(run, step) if due else None, report)
        stop_if_diverged(run, step)
        if stop_after is not None and steps_this_call >= stop_after:
            break
    return metrics


# --------------------------------------------------------------------------------------------- phases
def sample(run: Run) -> tuple[list[int], Rollout]:
    """This worker's shard of the step's prompts (every worker advances the stream by the whole step) and
    n sampled responses to each, with the hidden states that sampled them."""
    cfg, world = run.cfg, run.world
    per_worker = cfg.rollout.prompts_per_step // world.size
    run.lm.train()
    prompts = run.stream.take(cfg.rollout.prompts_per_step)[world.rank * per_worker:(world.rank + 1) * per_worker]
    rollout = run.engine.generate([run.train_prompts[i] for i in prompts], run.sampling)
    if isinstance(run.engine, VLLMEngine):
        run.engine.sleep()  # with enable_sleep_mode its KV cache is free for the update (the next generate wakes it)
    return prompts, rollout


def grade(run: Run, prompts: list[int], rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
    """(reward, correct) per response, from the grader's verdict on its answer."""
    golds = [run.train_set[prompts[g]].gold for g in rollout.group_ids.tolist()]
    grades = run.grader(rollout.texts, golds, timeout_s=run.cfg.reward.timeout_s)
    scheme = run.cfg.reward.scheme
    rewards = torch.tensor([reward_lib.scheme_reward(g.correct, g.boxed, scheme) for g in grades])
    return rewards, torch.tensor([float(g.correct) for g in grades])


def rank_metrics(run: Run, rollout: Rollout) -> tuple[RankMetrics, torch.Tensor | None]:
    """ER, ERV, ERA of each response from the post-norm hidden states of its tokens (float64 Gram route).

    The HF samplers record those states; otherwise (vLLM), or when several mini-batches need the old
    log-probs, one no-grad scoring pass gives them. Returns the policy's log-probs from that pass too (None
    when none ran).
    """
    cfg = run.cfg
    hidden, policy_logp = rollout.hidden, None
    if hidden is None or cfg.algo.mini_batches > 1:
        with torch.no_grad():
            out = run.score(run.scorer, rollout)
        hidden, policy_logp = out.hidden, out.logprobs
    rank = rank_dynamics(hidden, rollout.response_mask, stride=cfg.rank.stride, window=cfg.rank.window,
                         dtype=getattr(torch, cfg.rank.dtype))
    return rank, policy_logp


def sampler_correction(run: Run, rollout: Rollout, shaped: Shaped, policy_logp: torch.Tensor | None) -> dict:
    """When vLLM sampled: how far its log-probs are from the policy's (mean and max |diff| over response
    tokens, k3 KL; averaged over workers, max of the max), and with ``algo.tis_cap`` each token's advantage
    weighted by min(pi_policy / pi_vllm, cap): truncated importance sampling, as verl and TRL do. The HF
    engines sample from the policy itself: nothing to measure."""
    if rollout.sampler_logprobs is None or policy_logp is None:
        return {}
    cap, mask = run.cfg.algo.tis_cap, rollout.response_mask
    if cap is not None:
        shaped.advantages = shaped.advantages * tis_weights(rollout.sampler_logprobs, policy_logp, mask, cap)
    mine = mismatch_stats(rollout.sampler_logprobs, policy_logp, mask, tis_cap=cap)
    every = run.world.gather_objects(mine)
    return {k: max(w[k] for w in every) if k.endswith("_max") else sum(w[k] for w in every) / len(every)
            for k in mine}


@dataclass
class Shaped:
    """The global batch (every worker's responses, in rank order) and this worker's token advantages."""

    advantages: torch.Tensor  # (B_local, T): this worker's responses
    rewards: torch.Tensor  # (B_global,) float64
    correct: torch.Tensor
    rank: RankMetrics  # float64, global
    groups: torch.Tensor  # (B_global,) prompt index of each response, global
    bonus: torch.Tensor | None  # the VERL bonus per response (advantage target), global
    shaping: ShapingOutput
    shaper_before: dict  # the shaper's state before this batch: restored when the step is skipped


def shaped_advantages(run: Run, rollout: Rollout, rewards: torch.Tensor, correct: torch.Tensor,
                      rank: RankMetrics) -> Shaped:
    """Group advantages shaped by the VERL bonus, computed on the batch gathered from every worker so all
    workers update the same baselines; each keeps the token advantages of its own responses."""
    world, cfg = run.world, run.cfg
    offset = world.rank * (cfg.rollout.prompts_per_step // world.size)
    g_rank = rank.map(lambda m: world.gather(m.to(torch.float64).cpu()))
    g_rewards = world.gather(rewards.to(torch.float64))
    g_groups = world.gather(rollout.group_ids.cpu() + offset)
    g_correct = world.gather(correct)
    score_mean = sum(reward_lib.reward_to_task_score(r, cfg.reward.scheme) for r in g_rewards.tolist()) / len(g_rewards)
    before = run.shaper.state_dict()
    a0, bonus, shaping = run.shaper.sequence_advantages(g_rewards, g_groups, stack_metrics(*g_rank),
                                                        score_mean=score_mean, estimator=cfg.algo.estimator)
    mine = slice(world.rank * len(rewards), (world.rank + 1) * len(rewards))
    adv = token_advantages(a0[mine].float().to(run.device), rollout.response_mask,
                           None if bonus is None else bonus[mine].float().to(run.device), cfg.shaping.placement)
    return Shaped(adv, g_rewards, g_correct, g_rank, g_groups, bonus, shaping, before)


@dataclass
class UpdateResult:
    loss: float  # mean over the mini-batches
    grad_norm: float  # mean over the mini-batches (before clipping)
    stats: dict  # policy_loss's statistics, weighted over micro- and mini-batches
    skipped: bool  # a non-finite loss or gradient norm: no optimizer step, the shaper rolled back


def update(run: Run, step: int, rollout: Rollout, shaped: Shaped, old_logp: torch.Tensor | None) -> UpdateResult:
    """Clipped policy loss and one optimizer step per mini-batch (a single mini-batch is the whole rollout).

    Each scoring micro-batch backpropagates its share of the mini-batch's loss as soon as it is scored.
    Before each ``optimizer.step`` a non-finite loss or gradient norm (on any worker) ends the update: no step,
    and the shaper's baselines go back to what they were before this batch, so the step leaves no trace.
    """
    cfg, world = run.cfg, run.world
    ref_logp = None
    if run.ref_scorer is not None:
        with torch.no_grad():
            ref_logp = run.score(run.ref_scorer, rollout).logprobs
    n, stats, losses, norms = len(rollout.texts), {}, [], []
    minis = [mb.sort().values for mb in torch.randperm(n).chunk(cfg.algo.mini_batches)]  # rollout order inside
    for rows in minis:
        share = partial(_loss_share, rows=rows.to(run.device), old_logp=old_logp, adv=shaped.advantages,
                        mask=rollout.response_mask, ref_logp=ref_logp, algo=cfg.algo, stats=stats,
                        weight=1 / len(minis))
        run.optimizer.zero_grad(set_to_none=True)
        with run.autocast():  # fp32 master weights, compute in bf16 on CUDA
            loss = float(policy_backward(run.scorer, rollout.select(rows), share, **run.scoring,
                                         with_entropy=cfg.algo.entropy_coef > 0))
        world.average_gradients(run.scorer.parameters())  # ddp (fsdp reduce-scattered them in backward)
        grad_norm = world.clip_grad_norm(run.scorer.parameters(), cfg.algo.max_grad_norm)
        losses.append(loss)
        norms.append(grad_norm)
        if world.sum([float(not (math.isfinite(loss) and math.isfinite(grad_norm)))])[0] > 0:
            run.optimizer.zero_grad(set_to_none=True)
            run.shaper.load_state_dict(shaped.shaper_before)
            run.nonfinite["total"] += 1
            run.nonfinite["consecutive"] += 1
            _log(world, f"step {step}: non-finite loss {loss} or gradient norm {grad_norm}: step skipped "
                        f"({run.nonfinite['consecutive']} in a row)")
            return UpdateResult(loss, grad_norm, stats, skipped=True)
        run.optimizer.step()
    refresh_sampler(run)
    run.nonfinite["consecutive"] = 0
    return UpdateResult(sum(losses) / len(losses), sum(norms) / len(norms), stats, skipped=False)


def refresh_sampler(run: Run) -> None:
    """The next rollout samples the updated policy: the sampler's copy (bf16 on CUDA; whole weights under
    fsdp) is refreshed from the fp32 master weights, then vLLM gets them (and drops its prefix cache)."""
    precision.refresh_rollout_copy(run.sampler, run.lm)  # a no-op when the sampler is ``lm`` itself
    if isinstance(run.engine, VLLMEngine):
        run.engine.sync_weights(run.sampler)


def stop_if_diverged(run: Run, step: int) -> None:
    """After ``max_nonfinite_steps`` skipped steps in a row the run stops (the last checkpoint holds the
    weights of the last finite step)."""
    k = run.nonfinite["consecutive"]
    if k >= run.cfg.max_nonfinite_steps:
        raise NonFiniteError(f"step {step}: the loss or gradient norm was not finite for {k} steps in a row "
                             f"(max_nonfinite_steps {run.cfg.max_nonfinite_steps}); the weights are those of "
                             f"step {step - k}: lower algo.lr or check the data")


def _loss_share(idx, logp, entropy, *, rows, old_logp, adv, mask, ref_logp, algo, stats: dict, weight: float):
    """One scoring micro-batch's share of a mini-batch's loss (``policy_backward`` calls this per micro-batch).

    ``idx`` indexes ``rows`` (the mini-batch's rollout rows). ``policy_loss`` over the micro-batch, scaled by
    its share of the aggregate (its tokens for token_mean, its responses for seq_mean), so the shares sum to
    the loss over the whole mini-batch. Adds the micro-batch's share of the stats (times ``weight``) to ``stats``.
    """
    r = rows[idx]
    m = mask[r]
    loss, st = policy_loss(
        logp, logp.detach() if old_logp is None else old_logp[r], adv[r], m, clip_low=algo.clip_low,
        clip_high=algo.clip_high, agg=algo.loss_agg, ref_logp=None if ref_logp is None else ref_logp[r],
        kl_coef=algo.kl_coef, entropy=entropy, entropy_coef=algo.entropy_coef,
    )
    tokens = float(m.sum() / mask[rows].sum())
    part = tokens if algo.loss_agg == "token_mean" else len(r) / len(rows)
    for k, v in st.items():
        if k == "ratio_max":
            stats[k] = max(stats.get(k, 0.0), float(v))
        else:  # clip_frac and ratio_mean are token means whatever the loss aggregation
            stats[k] = stats.get(k, 0.0) + weight * float(v) * (tokens if k in ("clip_frac", "ratio_mean") else part)
    return loss * part


def step_metrics(run: Run, step: int, rollout: Rollout, shaped: Shaped, upd: UpdateResult, times: dict) -> dict:
    """The step's row: global-batch rewards and rank metrics, the shaping output's own log, the update's
    statistics (kl and entropy only when their coefficient makes them computed), time and memory."""
    cfg, world = run.cfg, run.world
    lengths = rollout.response_lengths.float().cpu()
    # truncated: the response ran to max_new_tokens without sampling EOS (its answer may be cut off)
    last = rollout.response_ids.gather(1, (lengths.long() - 1).clamp(min=0).unsqueeze(1).to(
        rollout.response_ids.device)).squeeze(1).cpu()
    truncated = (lengths >= cfg.rollout.max_new_tokens) & (last != run.tokenizer.eos_token_id)
    n_tokens, n_truncated = world.sum([float(lengths.sum()), float(truncated.sum())])
    rewards = shaped.rewards
    frac_shaped = (float((shaped.bonus > 0).float().mean()) if shaped.bonus is not None else
                   float(shaped.shaping.active and cfg.shaping.target == "reward"))
    metrics = {
        "step": step, "config_version": run.config_version,
        "reward/mean": float(rewards.mean()), "reward/std": float(rewards.std()) if len(rewards) > 1 else 0.0,
        "groups/all_equal": all_equal_fraction(rewards, shaped.groups),
        "response/truncated": n_truncated / len(rewards),
        "accuracy": float(shaped.correct.mean()), "response_length": float(lengths.mean()),
        "rank/er": float(shaped.rank.er.mean()), "rank/erv": float(shaped.rank.erv.mean()),
        "rank/era": float(shaped.rank.era.mean()),
        **shaped.shaping.log_dict("verl/"), "verl/frac_shaped": frac_shaped,
        "loss": upd.loss, "grad_norm": upd.grad_norm, "clip_frac": upd.stats.get("clip_frac", 0.0),
        "train/nonfinite_steps": run.nonfinite["total"],
        **({"kl": upd.stats.get("kl", 0.0)} if cfg.algo.kl_coef > 0 else {}),
        **({"entropy": upd.stats.get("entropy", 0.0)} if cfg.algo.entropy_coef > 0 else {}),
        **times, "tokens_per_s": n_tokens / times["time/step_s"], "memory/peak_rss_gb": peak_rss_gb(),
    }
    if run.device.type == "cuda":
        metrics["memory/peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return metrics


def all_equal_fraction(rewards: torch.Tensor, groups: torch.Tensor) -> float:
    """Share of prompt groups whose responses all got the same reward: their GRPO advantage is zero, so
    VERL's bonus (at most |A0| / kappa) cannot act on them."""
    ids = groups.unique()
    same = [bool((rewards[groups == g] == rewards[groups == g][0]).all()) for g in ids.tolist()]
    return sum(same) / max(len(same), 1)


@torch.no_grad()
def validation(run: Run) -> dict:
    """Greedy accuracy on this worker's shard of the held-out problems, summed over workers."""
    cfg, world, problems = run.cfg, run.world, run.eval_set
    mine = list(range(world.rank, len(problems), world.size))
    if not mine:
        totals = world.sum([0.0, 0.0, 0.0])
    else:
        params = SamplingParams(n=1, temperature=0.0, max_new_tokens=cfg.rollout.eval_max_new_tokens
                                or cfg.rollout.max_new_tokens)
        roll = run.engine.generate([run.eval_prompts[i] for i in mine], params)
        grades = run.grader(roll.texts, [problems[i].gold for i in mine], timeout_s=cfg.reward.timeout_s)
        correct = sum(g.correct for g in grades)
        totals = world.sum([float(correct), float(len(mine)), float(roll.response_lengths.sum())])
    return {"val/accuracy": totals[0] / max(totals[1], 1), "val/problems": int(totals[1]),
            "val/response_length": totals[2] / max(totals[1], 1)}


# --------------------------------------------------------------------------------- setup, save, restore
def setup(cfg: TrainConfig, resume_from: str | Path | None = None, grader: Grader | None = None) -> Run:
    """Everything the loop needs, the cheap checks first: the config (again: a caller may have built it by
    hand), the data, the checkpoint to resume from and whether this config may resume it; then the models,
    the optimizer and the shaper, restored from the checkpoint when there is one."""
    cfg.validate()
    world, run_dir = World.current(), Path(cfg.run_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    if device.type == "cpu":
        keep_freed_memory()
    train_set = data_lib.load_problems(cfg.data.train, data_root=cfg.data.data_root, limit=cfg.data.train_size)
    eval_set = data_lib.load_problems(cfg.data.eval, data_root=cfg.data.data_root, limit=cfg.data.eval_size)
    if not train_set:
        raise data_lib.DataError(f"data.train {cfg.data.train!r}: no problems")
    ckpt = Path(resume_from) if resume_from else latest_checkpoint(run_dir)
    if ckpt is not None:
        for key, old, new in check_resume(checkpoint_config(ckpt), cfg, ckpt):
            _log(world, f"resuming with {key}: {old!r} -> {new!r}")
    elif Path(cfg.model).is_dir() and not any(Path(cfg.model).glob("*.safetensors")):
        raise ConfigError(f"model: {cfg.model}: no safetensors weights (pickled .bin weights are never loaded)")

    if cfg.rollout.engine == "vllm":  # what to install, before any model loads
        check_vllm(enable_sleep_mode=cfg.rollout.vllm.enable_sleep_mode)

    seed_everything(cfg.seed + world.rank)
    compute = precision.compute_dtype(cfg.dtype, device)  # cfg.dtype names the compute dtype only
    lm, tokenizer = load_model(ckpt if ckpt is not None else cfg.model, dtype=precision.MASTER_DTYPE, device=device)
    if cfg.gradient_checkpointing:  # per decoder layer, inside each micro-batch (config: not with share_prompt)
        if hasattr(lm, "activation_checkpointing_enable"):  # the name since transformers 5.x
            lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        lm.config.use_cache = False
    ref_scorer = None
    if cfg.algo.kl_coef > 0:
        ref_lm, _ = load_model(cfg.model, dtype=compute, device=device)  # frozen: never stepped
        ref_scorer = ResponseScorer(ref_lm.requires_grad_(False).eval())
    render = partial(data_lib.render_prompt, cfg.data.template, tokenizer=tokenizer)
    # the HF engines sample from a bf16 copy on CUDA (a bf16 KV cache), from ``lm`` itself on CPU; vLLM keeps
    # its own copy of the weights
    sampler = lm if cfg.rollout.engine == "vllm" else precision.rollout_copy(lm, compute)
    scorer = ResponseScorer(lm)
    if cfg.ray.strategy == "fsdp":  # weights, gradients and optimizer state sharded; the engines get a whole copy
        world, scorer, ref_scorer, sampler = shard_models(world, lm, sampler, ref_scorer, compute, device)
    run = Run(
        cfg=cfg, world=world, run_dir=run_dir, device=device, lm=lm, compute_dtype=compute, sampler=sampler,
        tokenizer=tokenizer,
        scorer=scorer, ref_scorer=ref_scorer,
        optimizer=torch.optim.AdamW(lm.parameters(), lr=cfg.algo.lr, weight_decay=cfg.algo.weight_decay,
                                    fused=device.type in ("cpu", "cuda")),  # one pass over the weights, not ~10
        shaper=RankShaper(cfg.shaping), stream=data_lib.PromptStream(len(train_set), cfg.seed),
        engine=make_engine(cfg, sampler, tokenizer, run_dir, world.rank), grader=grader or reward_lib.grade_batch,
        train_set=train_set, eval_set=eval_set,
        train_prompts=[render(p.question) for p in train_set], eval_prompts=[render(p.question) for p in eval_set],
    )
    precision.master_weights_check(run.optimizer)  # AdamW never steps bf16 weights (updates would round to 0)
    if ckpt is not None:
        restore(run, ckpt)
    if world.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        truncate_metrics(run_dir, run.start_step if ckpt is not None else -1)  # later steps will be redone
        run.config_version = record_config(run_dir, cfg, run.start_step)
    run.config_version = world.gather_objects(run.config_version)[0]
    return run


def make_engine(cfg: TrainConfig, sampler: torch.nn.Module, tokenizer, run_dir: Path, rank: int):
    """The rollout engine ``rollout.engine`` names. vLLM loads a model folder, then takes the policy's
    weights (they may be a checkpoint's); a model built from a config has none, so it is written once."""
    if cfg.rollout.engine != "vllm":
        return ENGINES[cfg.rollout.engine](sampler, tokenizer)
    folder = Path(sampler.name_or_path)
    if not (folder / "config.json").is_file():
        folder = run_dir / "vllm_model" / f"rank{rank}"
        if not (folder / "config.json").is_file():
            sampler.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
    return VLLMEngine(sampler, tokenizer, options=cfg.rollout.vllm, seed=cfg.seed + rank, model_path=str(folder))


def save(run: Run, step: int) -> Path | None:
    """Checkpoint the run after ``step`` (rank 0 writes; every worker's RNG state is in it). The mirror of
    ``restore``."""
    rngs = run.world.gather_objects(rng_state())  # every worker's sampler resumes exactly
    weights, optimizer = run.world.checkpoint_state(run.lm, run.optimizer)  # fsdp: gathered from the shards
    folder = None
    if run.world.rank == 0:
        state = {"step": step, "optimizer": optimizer, "shaper": run.shaper.state_dict(),
                 "stream_position": run.stream.position, "rng": rngs, "nonfinite": dict(run.nonfinite)}
        folder = save_checkpoint(run.run_dir, step, run.lm, run.tokenizer, state, run.cfg.to_dict(),
                                 run.cfg.keep_checkpoints, weights=weights)
    run.world.barrier()
    return folder


def restore(run: Run, folder: Path) -> None:
    """Put the run in the state ``save`` wrote to ``folder`` (the weights were loaded from it by ``setup``);
    this config's lr and weight decay win over the saved optimizer groups (PBT mutates them)."""
    state = load_trainer_state(folder)
    cfg, world = run.cfg, run.world
    world.load_optimizer_state(run.lm, run.optimizer, state["optimizer"])  # from any strategy and world size
    for group in run.optimizer.param_groups:
        group["lr"], group["weight_decay"] = cfg.algo.lr, cfg.algo.weight_decay
    run.shaper.load_state_dict(state["shaper"])
    run.stream.position = state["stream_position"]
    run.nonfinite = dict(state["nonfinite"])
    run.start_step = state["step"]
    if len(state["rng"]) == world.size:
        set_rng_state(state["rng"][world.rank])
    else:  # resumed on a different number of workers: deterministic, but a new sampling stream
        seed_everything(cfg.seed + 7919 * run.start_step + world.rank)
    _log(world, f"resumed from {folder} at step {run.start_step}")


# ------------------------------------------------------------------------------------------ reporting
def _emit(run: Run, metrics: dict, checkpoint: Path | None, report: Reporter | None) -> None:
    if run.world.rank == 0:
        append_metrics(run.run_dir, metrics)
    if report:
        report(metrics, checkpoint)


def _progress(m: dict, total: int) -> str:
    s = (f"step {m['step']}/{total} | reward {m['reward/mean']:+.3f} acc {m['accuracy']:.3f} | "
         f"len {m['response_length']:.0f} | ER {m['rank/er']:.1f} ERV {m['rank/erv']:.2f} ERA {m['rank/era']:.2f} | "
         f"phi {m['verl/phi_mean']:+.3f} shaped {m['verl/frac_shaped']:.2f} | {m['time/step_s']:.1f}s "
         f"{m['tokens_per_s']:.0f} tok/s | rss {m['memory/peak_rss_gb']:.1f} GB")
    if m["train/nonfinite_steps"]:
        s += f" | non-finite {m['train/nonfinite_steps']}"
    if "val/accuracy" in m:
        s += f" | val acc {m['val/accuracy']:.3f}"
    return s


def _log(world: World, msg: str) -> None:
    if world.rank == 0:
        print(msg, file=sys.stderr, flush=True)
