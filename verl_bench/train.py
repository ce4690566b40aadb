"""The GRPO training loop with the VERL rank-shaped advantage: one readable function.

    sample -> reward -> rank metrics -> shaping -> advantages -> clipped loss -> AdamW step -> report

The sampler records the hidden states the rank metrics read, so advantages are known before the policy is
scored with grad; the update then backpropagates each scoring micro-batch as soon as it is scored (only one
micro-batch's activations are ever alive, nothing is recomputed).

``train(cfg, report=...)`` is a plain function: it runs alone (``verl-bench train``), inside each Ray Train
worker (``verl_bench.distributed`` wraps it; when torch.distributed is initialised the workers average their
gradients, as DDP would) and inside a Tune trial. It never imports Ray. Checkpoints are HF folders (model +
tokenizer, loadable as is by transformers, lm-eval and vLLM) plus ``trainer_state.pt`` (optimizer, shaper,
data position, RNG), and a run resumes from its newest checkpoint exactly.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import random
import resource
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from verl_bench import data as data_lib
from verl_bench import reward as reward_lib
from verl_bench.config import TrainConfig, dump_config
from verl_bench.grpo import policy_loss
from verl_bench.models import load_model
from verl_bench.policy import ResponseScorer, policy_backward, policy_forward
from verl_bench.rank import rank_dynamics
from verl_bench.rollout import ENGINES, SamplingParams
from verl_bench.shaping import RankShaper, stack_metrics, token_advantages

Reporter = Callable[[dict, "Path | None"], None]
STATE_FILE = "trainer_state.pt"


# ------------------------------------------------------------------------------------------- helpers
@dataclass
class World:
    rank: int = 0
    size: int = 1

    @classmethod
    def current(cls) -> World:
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate a 1-D/2-D tensor over workers (equal first dims), in rank order."""
        if self.size == 1:
            return t
        parts = [torch.empty_like(t) for _ in range(self.size)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    def gather_objects(self, obj) -> list:
        if self.size == 1:
            return [obj]
        out = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def average_gradients(self, params, bucket_elements: int = 1 << 24) -> None:
        """Replace each gradient by its mean over workers, as DDP would (a missing gradient counts as zero).

        The update backpropagates micro-batch by micro-batch outside any module ``forward``, so DDP's hooks
        cannot do this; one all-reduce per bucket of ~16M elements keeps the extra memory to one bucket.
        """
        if self.size == 1:
            return
        params = [p for p in params if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        start = 0
        while start < len(params):
            end, elements = start, 0
            while end < len(params) and (end == start or elements + params[end].numel() <= bucket_elements):
                elements += params[end].numel()
                end += 1
            bucket = params[start:end]
            flat = torch.cat([p.grad.reshape(-1) for p in bucket])
            dist.all_reduce(flat)
            flat /= self.size
            for p, g in zip(bucket, flat.split([p.numel() for p in bucket])):
                p.grad.copy_(g.view_as(p))
            start = end

    def sum(self, values: list[float]) -> list[float]:
        if self.size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()


class PromptStream:
    """A seeded, epoch-shuffled stream of problem indices; its position is part of the checkpoint."""

    def __init__(self, n: int, seed: int, position: int = 0):
        self.n, self.seed, self.position = n, seed, position
        self._epoch, self._epoch_order = -1, []

    def _order(self, epoch: int) -> list[int]:
        if epoch != self._epoch:  # one shuffle per epoch, a pure function of (seed, epoch)
            self._epoch_order = list(range(self.n))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(self._epoch_order)
            self._epoch = epoch
        return self._epoch_order

    def take(self, k: int) -> list[int]:
        out = []
        for p in range(self.position, self.position + k):
            out.append(self._order(p // self.n)[p % self.n])
        self.position += k
        return out


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    ckpts = sorted((Path(run_dir) / "checkpoints").glob("step_*/" + STATE_FILE))
    return ckpts[-1].parent if ckpts else None


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, optimizer, shaper, stream, keep: int,
                    rng_states: list[dict]) -> Path:
    """HF folder + trainer_state.pt, written to a temp folder and renamed (a kill never leaves half)."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp_step_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    torch.save(
        {"step": step, "optimizer": optimizer.state_dict(), "shaper": shaper.state_dict(),
         "stream_position": stream.position, "rng": rng_states},
        tmp / STATE_FILE,
    )
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    if keep > 0:
        for old in sorted(root.glob("step_*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


# ---------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def quick_eval(engine, problems, prompts, cfg: TrainConfig, world: World) -> dict:
    """Greedy accuracy on this worker's shard of the held-out problems, summed over workers."""
    mine = list(range(world.rank, len(problems), world.size))
    if not mine:
        totals = world.sum([0.0, 0.0, 0.0])
    else:
        params = SamplingParams(n=1, temperature=0.0, max_new_tokens=cfg.rollout.eval_max_new_tokens
                                or cfg.rollout.max_new_tokens)
        roll = engine.generate([prompts[i] for i in mine], params)
        grades = reward_lib.grade_batch(roll.texts, [problems[i].gold for i in mine], timeout_s=cfg.reward.timeout_s)
        correct = sum(g.correct for g in grades)
        totals = world.sum([float(correct), float(len(mine)), float(roll.response_lengths.sum())])
    return {"val/accuracy": totals[0] / max(totals[1], 1), "val/problems": int(totals[1]),
            "val/response_length": totals[2] / max(totals[1], 1)}


# ------------------------------------------------------------------------------------------ the loop
def keep_freed_memory(limit: int = 1 << 30) -> bool:
    """Ask glibc to keep freed blocks under ``limit`` bytes for reuse instead of returning them to the OS.

    By default a block over ~32 MB is mmap'ed and unmapped on free, so each scoring micro-batch's activations
    and gradients land on fresh pages the kernel must fault in and zero: about a fifth of the update's time on
    2 CPU cores (benchmarks/grpo_step.py), for a few hundred MB of peak RSS kept. No-op off glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(libc.mallopt(m_mmap_threshold, limit)) and bool(libc.mallopt(m_trim_threshold, limit))


def train(cfg: TrainConfig, report: Reporter | None = None, resume_from: str | Path | None = None,
          stop_after: int | None = None) -> dict:
    """Run (or resume) one GRPO/VERL training run. Returns the last step's metrics.

    ``report(metrics, checkpoint_dir_or_None)`` is called after every step; ``resume_from`` names a
    checkpoint folder (default: the newest under ``cfg.run_dir``). ``stop_after`` ends the run early after
    that many steps of this call (used to test interruption); the run's total length stays ``cfg.steps``.
    """
    world = World.current()
    run_dir = Path(cfg.run_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    if device.type == "cpu":
        keep_freed_memory()
    dtype = None if cfg.dtype == "auto" else cfg.dtype

    # --- data: everything that can fail on bad input fails here, before the model is loaded
    train_set = data_lib.load_problems(cfg.data.train, data_root=cfg.data.data_root, limit=cfg.data.train_size)
    eval_set = data_lib.load_problems(cfg.data.eval, data_root=cfg.data.data_root, limit=cfg.data.eval_size)
    if len(train_set) < 1:
        raise ValueError(f"data.train {cfg.data.train!r}: no problems")

    seed_everything(cfg.seed + world.rank)
    ckpt = Path(resume_from) if resume_from else latest_checkpoint(run_dir)
    # a resumed run loads its weights straight from the checkpoint's HF folder
    model, tokenizer = load_model(ckpt if ckpt is not None else cfg.model, dtype=dtype, device=device)
    if cfg.gradient_checkpointing:  # per decoder layer, inside each micro-batch (config: not with share_prompt)
        if hasattr(model, "activation_checkpointing_enable"):  # the name since transformers 5.x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    ref_model = None
    if cfg.algo.kl_coef > 0:
        ref_model, _ = load_model(cfg.model, dtype=dtype, device=device)
        ref_model.requires_grad_(False).eval()
    render = lambda q: data_lib.render_prompt(cfg.data.template, q, tokenizer)
    train_prompts = [render(p.question) for p in train_set]
    eval_prompts = [render(p.question) for p in eval_set]

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.algo.lr, weight_decay=cfg.algo.weight_decay,
                                  fused=device.type in ("cpu", "cuda"))  # one pass over the weights, not ~10
    shaper = RankShaper(cfg.shaping)
    stream = PromptStream(len(train_set), cfg.seed)
    start_step = 0
    if ckpt is not None:
        state = torch.load(ckpt / STATE_FILE, weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # the saved groups carry the old run's lr: this config's wins
            group["lr"], group["weight_decay"] = cfg.algo.lr, cfg.algo.weight_decay  # (PBT mutates them)
        shaper.load_state_dict(state["shaper"])
        stream.position = state["stream_position"]
        start_step = state["step"]
        rngs = state["rng"]
        if len(rngs) == world.size:
            _set_rng_state(rngs[world.rank])
        else:  # resumed on a different number of workers: deterministic, but a new sampling stream
            seed_everything(cfg.seed + 7919 * start_step + world.rank)
        _truncate_metrics(world, run_dir, start_step)  # steps after the checkpoint will be redone
        _log(world, f"resumed from {ckpt} at step {start_step}")
    policy = model  # the HF model: sampled from, saved
    model = ResponseScorer(policy)  # what scoring runs; workers average their gradients (World.average_gradients)
    engine = ENGINES[cfg.rollout.engine](policy, tokenizer)
    if world.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, run_dir / "config.yaml")

    # one scoring setup for the policy and the reference; the sampling temperature divides both
    scoring = {"chunk_tokens": cfg.logits_chunk_tokens, "temperature": cfg.rollout.temperature,
               "micro_batch": cfg.micro_batch, "micro_batch_tokens": cfg.micro_batch_tokens,
               "share_prompt": cfg.share_prompt}
    score, backward = partial(policy_forward, **scoring), partial(policy_backward, **scoring)
    sampling = SamplingParams(n=cfg.rollout.n, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                              max_new_tokens=cfg.rollout.max_new_tokens, min_new_tokens=cfg.rollout.min_new_tokens)
    per_worker = cfg.rollout.prompts_per_step // world.size
    metrics: dict = {}
    if start_step == 0 and cfg.data.eval_size > 0:
        metrics = {"step": 0, **quick_eval(engine, eval_set, eval_prompts, cfg, world)}
        _log(world, f"step 0 | val acc {metrics['val/accuracy']:.3f} on {metrics['val/problems']} problems")
        if report:
            report(metrics, None)
        _append_jsonl(world, run_dir, metrics)

    for steps_this_call, step in enumerate(range(start_step + 1, cfg.steps + 1), start=1):
        t0 = time.perf_counter()
        policy.train()
        # 1. sample: this worker's shard of the step's prompts
        batch = stream.take(cfg.rollout.prompts_per_step)[world.rank * per_worker : (world.rank + 1) * per_worker]
        rollout = engine.generate([train_prompts[i] for i in batch], sampling)
        t_gen = time.perf_counter()

        # 2. reward
        golds = [train_set[batch[g]].gold for g in rollout.group_ids.tolist()]
        grades = reward_lib.grade_batch(rollout.texts, golds, timeout_s=cfg.reward.timeout_s)
        rewards = torch.tensor([reward_lib.scheme_reward(g.correct, g.boxed, cfg.reward.scheme) for g in grades])
        correct = torch.tensor([float(g.correct) for g in grades])
        t_rew = time.perf_counter()

        # 3. the post-norm hidden states of the response rows: recorded by the sampler, else one no-grad pass,
        #    which also gives the old log-probs when several updates share this rollout
        rollout = rollout.to(device)
        mask = rollout.response_mask
        single_update = cfg.algo.mini_batches == 1
        hidden, old_logp = rollout.hidden, None  # one update per rollout: old log-probs = current, detached
        if hidden is None or not single_update:
            with torch.no_grad():
                out = score(model, rollout)
            hidden, old_logp = out.hidden, None if single_update else out.logprobs

        # 4. rank metrics of each response (float64 Gram route; see verl_bench.rank)
        er, erv, era = rank_dynamics(hidden, mask, stride=cfg.rank.stride, window=cfg.rank.window,
                                     dtype=getattr(torch, cfg.rank.dtype))

        # 5. shaping and advantages over the GLOBAL batch, so every worker holds the same baselines
        offset = world.rank * per_worker
        g_metrics = world.gather(stack_metrics(er, erv, era).to(torch.float64).cpu())
        g_rewards = world.gather(rewards.to(torch.float64))
        g_groups = world.gather(rollout.group_ids.cpu() + offset)
        g_correct = world.gather(correct)
        score_mean = sum(reward_lib.reward_to_task_score(r, cfg.reward.scheme) for r in g_rewards.tolist()) / len(g_rewards)
        a0, bonus, shaped = shaper.sequence_advantages(g_rewards, g_groups, g_metrics, score_mean=score_mean,
                                                       estimator=cfg.algo.estimator)
        local = slice(world.rank * len(rewards), (world.rank + 1) * len(rewards))
        adv = token_advantages(a0[local].float().to(device), mask,
                               None if bonus is None else bonus[local].float().to(device), cfg.shaping.placement)

        # 6. clipped policy loss (+ KL to the frozen reference, entropy bonus) and the optimizer step: each
        #    scoring micro-batch backpropagates its share of the mini-batch's loss as soon as it is scored
        ref_logp = None
        if ref_model is not None:
            with torch.no_grad():
                ref_logp = score(ref_model, rollout).logprobs
        stats_acc: dict[str, float] = {}
        grad_norm = 0.0
        minis = torch.randperm(len(rewards)).chunk(cfg.algo.mini_batches)
        for mb in minis:
            rows = torch.arange(len(rewards)) if single_update else mb
            share = partial(_loss_share, rows=rows.to(device), old_logp=old_logp, adv=adv, mask=mask,
                            ref_logp=ref_logp, algo=cfg.algo, stats=stats_acc, weight=1 / len(minis))
            optimizer.zero_grad(set_to_none=True)
            loss = backward(model, rollout if single_update else rollout.select(mb), share,
                            with_entropy=cfg.algo.entropy_coef > 0)
            world.average_gradients(model.parameters())
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.algo.max_grad_norm))
            optimizer.step()
        t_end = time.perf_counter()

        # 7. metrics, checkpoint, report
        lengths = rollout.response_lengths.float().cpu()
        n_tokens = world.sum([float(lengths.sum())])[0]
        metrics = {
            "step": step,
            "reward/mean": float(g_rewards.mean()), "reward/std": float(g_rewards.std()) if len(g_rewards) > 1 else 0.0,
            "accuracy": float(g_correct.mean()),
            "response_length": float(lengths.mean()),
            "rank/er": float(g_metrics[:, 2].mean()), "rank/erv": float(g_metrics[:, 1].mean()),
            "rank/era": float(g_metrics[:, 0].mean()),
            "verl/beta_mean": float(shaped.beta.mean()), "verl/phi_mean": float(shaped.phi.mean()),
            "verl/frac_shaped": float((bonus > 0).float().mean()) if bonus is not None else
            float(shaped.active and cfg.shaping.target == "reward"),
            "verl/lambda": float(shaped.lam),
            "loss": float(loss), "kl": stats_acc.get("kl", 0.0), "entropy": stats_acc.get("entropy", 0.0),
            "clip_frac": stats_acc.get("clip_frac", 0.0), "grad_norm": grad_norm,
            "time/step_s": t_end - t0, "time/generate_s": t_gen - t0, "time/reward_s": t_rew - t_gen,
            "time/update_s": t_end - t_rew, "tokens_per_s": n_tokens / (t_end - t0),
            "memory/peak_rss_gb": peak_rss_gb(),
        }
        if device.type == "cuda":
            metrics["memory/peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 2**30
        if cfg.eval_every and step % cfg.eval_every == 0 or step == cfg.steps:
            metrics.update(quick_eval(engine, eval_set, eval_prompts, cfg, world) if cfg.data.eval_size else {})
        ckpt_dir = None
        if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.steps:
            rng_states = world.gather_objects(_rng_state())  # every worker's sampler resumes exactly
            if world.rank == 0:
                ckpt_dir = save_checkpoint(run_dir, step, policy, tokenizer, optimizer, shaper, stream,
                                           cfg.keep_checkpoints, rng_states)
            if world.size > 1:
                dist.barrier()
        _log(world, _progress(metrics, cfg.steps))
        _append_jsonl(world, run_dir, metrics)
        if report:
            report(metrics, ckpt_dir)
        if stop_after is not None and steps_this_call >= stop_after:
            break
    return metrics


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


def _progress(m: dict, total: int) -> str:
    s = (f"step {m['step']}/{total} | reward {m['reward/mean']:+.3f} acc {m['accuracy']:.3f} | "
         f"len {m['response_length']:.0f} | ER {m['rank/er']:.1f} ERV {m['rank/erv']:.2f} ERA {m['rank/era']:.2f} | "
         f"phi {m['verl/phi_mean']:+.3f} shaped {m['verl/frac_shaped']:.2f} | {m['time/step_s']:.1f}s "
         f"{m['tokens_per_s']:.0f} tok/s | rss {m['memory/peak_rss_gb']:.1f} GB")
    if "val/accuracy" in m:
        s += f" | val acc {m['val/accuracy']:.3f}"
    return s


def _log(world: World, msg: str) -> None:
    if world.rank == 0:
        print(msg, file=sys.stderr, flush=True)


def _append_jsonl(world: World, run_dir: Path, metrics: dict) -> None:
    if world.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                for k, v in metrics.items()}) + "\n")


def _truncate_metrics(world: World, run_dir: Path, last_step: int) -> None:
    path = run_dir / "metrics.jsonl"
    if world.rank != 0 or not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
    path.write_text("".join(line + "\n" for line in keep))
