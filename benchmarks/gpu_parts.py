"""The five parts of benchmarks/gpu_check.py. Each takes a :class:`Context` and returns (passed, figures).

Nothing here imports Ray (the GPU machine has none) or reaches the hub: every model is built from a config.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

LR = 5e-7  # the paper's learning rate
LR_YAML = "5.0e-7"  # as an override: YAML 1.1 reads "5e-07" as a string
RANK_TOL = {"er_rel": 1e-4, "er_abs": 1e-6, "erv_abs": 1e-3, "era_abs": 1e-3}  # tests/test_rank.py
RANK_TARGET_S = 1.0  # issue 12: on an H100-class GPU
DEMO = Path(__file__).resolve().parents[1] / "verl_bench" / "configs" / "demo.yaml"
SMOLLM2_135M = {"hidden_size": 576, "num_layers": 30, "heads": 9, "kv_heads": 3, "intermediate_size": 1536}
TINY = {"hidden_size": 64, "num_layers": 2, "heads": 4, "kv_heads": 2}


class Skipped(Exception):
    """A part that cannot run here; the message says why (recorded, not a failure)."""


@dataclass(frozen=True)
class Sizes:
    shape: dict  # the model the parts build (build_tiny_model's options)
    vocab: int  # the precision part's vocabulary (it needs no tokenizer)
    precision_batch: tuple[int, int]  # sequences x tokens of its language-modelling loss
    rank: tuple[int, int, int]  # responses x tokens x hidden size
    rank_refs: int  # responses checked against the float64 reference (its SVDs are slow at 1536 x 3584)
    rank_stride: int
    rank_window: int
    sampler: tuple[int, int, int]  # prompts, samples per prompt, new tokens
    loop: tuple[int, int, int]  # prompts per step, samples per prompt, new tokens
    loop_steps: int
    micro_batch: int  # responses per scoring micro-batch (fsdp refuses a token budget: same count on every worker)
    estimate_s: dict  # seconds each part needs, about: the time budget skips a part that would not end in it


GPU = Sizes(SMOLLM2_135M, 49152, (4, 256), (192, 1536, 3584), 4, 40, 512, (32, 8, 256), (16, 8, 128), 2, 64,
            {"precision": 20, "rank": 90, "sampler": 60, "checkpoint": 60, "fsdp": 60})
SMOKE = Sizes(TINY, 512, (2, 32), (4, 160, 96), 4, 10, 64, (4, 2, 8), (2, 4, 12), 2, 4,
              {"precision": 2, "rank": 2, "sampler": 5, "checkpoint": 10, "fsdp": 10})


@dataclass
class Context:
    device: torch.device
    sizes: Sizes
    tmp: Path
    shared: dict = field(default_factory=dict)  # what one part leaves for a later one (the plain loop's run)

    @property
    def compute(self) -> torch.dtype:
        return torch.bfloat16 if self.device.type == "cuda" else torch.float32

    @cached_property
    def model_dir(self) -> Path:
        """A random model of the run's shape with the SmolLM2 tokenizer, saved once (float32)."""
        from verl_bench.models import ModelUnavailableError, build_tiny_model

        try:
            return build_tiny_model(self.tmp / "model", **self.sizes.shape)
        except (ModelUnavailableError, FileNotFoundError) as e:  # no GGUF on the GPU machine: it must travel
            raise ModelUnavailableError(f"no SmolLM2 tokenizer in the cache ({e}); on a machine without the "
                                        "GGUF, carry the folder `make gpu-check-cache` makes (.cache/gpu) and "
                                        "set VERL_BENCH_CACHE=.cache/gpu") from None

    @cached_property
    def initial_weights(self) -> dict[str, torch.Tensor]:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32).state_dict()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: torch.device):
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def update_agreement(delta: torch.Tensor, ref: torch.Tensor) -> dict:
    """How an update (flat) compares with a reference update: the share of weights it moved, its mean |step|
    over the reference's, and the share of the reference's moved weights it moved the same way."""
    moved = ref != 0
    return {"moved": float((delta != 0).double().mean()),
            "ratio": float(delta.abs().double().mean() / ref.abs().double().mean()),
            "same_sign": float((torch.sign(delta) == torch.sign(ref))[moved].double().mean())}


# ------------------------------------------------------------------------------------------- precision
def _adamw_step(model, compute: torch.dtype, ids: torch.Tensor, check: bool) -> tuple[torch.Tensor, float]:
    """One AdamW step at LR on a language-modelling loss; returns every weight's change (flat, float64)."""
    from verl_bench import precision

    before = torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    if check:
        precision.master_weights_check(opt)
    with precision.autocast(ids.device, compute):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    return torch.cat([p.detach().reshape(-1).double() for p in model.parameters()]) - before, float(loss.detach())


def check_precision(ctx: Context) -> tuple[bool, dict]:
    from transformers import LlamaConfig, LlamaForCausalLM

    from verl_bench import precision

    s, dev = ctx.sizes, ctx.device
    cfg = LlamaConfig(vocab_size=s.vocab, hidden_size=s.shape["hidden_size"],
                      intermediate_size=s.shape.get("intermediate_size", 4 * s.shape["hidden_size"]),
                      num_hidden_layers=s.shape["num_layers"], num_attention_heads=s.shape["heads"],
                      num_key_value_heads=s.shape["kv_heads"], tie_word_embeddings=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        base = LlamaForCausalLM(cfg).float()
    ids = torch.randint(0, s.vocab, s.precision_batch, generator=torch.Generator().manual_seed(1)).to(dev)
    fp32, loss32 = _adamw_step(copy.deepcopy(base).to(dev), torch.float32, ids, check=True)
    mixed, loss_mixed = _adamw_step(copy.deepcopy(base).to(dev), torch.bfloat16, ids, check=True)
    pure_model = copy.deepcopy(base).to(dev, torch.bfloat16)  # deliberately wrong: AdamW steps bf16 weights
    try:
        precision.master_weights_check(torch.optim.AdamW(pure_model.parameters(), lr=LR))
        refused = False
    except precision.PrecisionError:
        refused = True
    pure, _ = _adamw_step(pure_model, torch.bfloat16, ids, check=False)
    m, p = update_agreement(mixed, fp32), update_agreement(pure, fp32)
    figures = {"params": sum(x.numel() for x in base.parameters()), "lr": LR, "compute": "bfloat16",
               "fp32_moved": update_agreement(fp32, fp32)["moved"], "mixed_moved": m["moved"],
               "mixed_step_ratio_to_fp32": m["ratio"], "mixed_same_sign_as_fp32": m["same_sign"],
               "pure_bf16_moved": p["moved"], "pure_bf16_step_ratio_to_fp32": p["ratio"],
               "loss_fp32": loss32, "loss_bf16_autocast": loss_mixed, "optimizer_over_bf16_refused": refused}
    ok = (m["moved"] > 0.99 and 0.9 < m["ratio"] < 1.1 and m["same_sign"] > 0.9
          and p["moved"] < 0.05 and p["ratio"] < 0.1 and refused)
    return ok, figures


# ------------------------------------------------------------------------------------------------ rank
def check_rank(ctx: Context) -> tuple[bool, dict]:
    from tests.reference import dynamics_ref
    from verl_bench.rank import rank_dynamics

    s, dev = ctx.sizes, ctx.device
    b, t, d = s.rank
    g = torch.Generator(device=dev).manual_seed(0)
    # drifting states (a random walk along each response): a wide spectrum, as real hidden states have
    hidden = torch.randn(b, t, d, device=dev, generator=g).cumsum_(dim=1).mul_(0.05).to(torch.bfloat16)
    lengths = torch.randint(t // 4, t + 1, (b,), generator=torch.Generator().manual_seed(0))
    lengths[0] = t
    mask = (torch.arange(t)[None] < lengths[:, None]).to(dev)
    kw = {"stride": s.rank_stride, "window": s.rank_window}
    rank_dynamics(hidden[:2], mask[:2], **kw)  # warm-up: kernels, the allocator
    seconds, (er, erv, era) = _timed(lambda: rank_dynamics(hidden, mask, **kw), dev)
    seconds32, _ = _timed(lambda: rank_dynamics(hidden, mask, dtype=torch.float32, **kw), dev)
    er, erv, era = er.cpu(), erv.cpu(), era.cpu()

    order = lengths.argsort()  # the shortest, the longest and between: the window and stride paths
    picks = order[torch.linspace(0, b - 1, min(s.rank_refs, b)).round().long()].unique().tolist()
    worst = {"er_rel": 0.0, "erv_abs": 0.0, "era_abs": 0.0}
    ok = bool(torch.isfinite(torch.stack([er, erv, era])).all())
    for i in picks:
        ref = dynamics_ref(hidden[i, : int(lengths[i])].double().cpu().numpy(), s.rank_stride, s.rank_window)
        err = {"er_rel": abs(er[i].item() - ref[0]) / ref[0], "erv_abs": abs(erv[i].item() - ref[1]),
               "era_abs": abs(era[i].item() - ref[2])}
        # pytest.approx(ref, rel, abs) as in tests/test_rank.py: within the larger of the two
        ok &= abs(er[i].item() - ref[0]) <= max(RANK_TOL["er_rel"] * ref[0], RANK_TOL["er_abs"])
        ok &= err["erv_abs"] <= RANK_TOL["erv_abs"] and err["era_abs"] <= RANK_TOL["era_abs"]
        worst = {k: max(worst[k], v) for k, v in err.items()}
    figures = {"shape": [b, t, d], "stride": s.rank_stride, "window": s.rank_window, "input_dtype": "bfloat16",
               "seconds_float64": seconds, "seconds_float32": seconds32, "target_s": RANK_TARGET_S,
               "time_target_met": seconds <= RANK_TARGET_S if dev.type == "cuda" else None,
               "checked_responses": picks, "checked_lengths": [int(lengths[i]) for i in picks],
               **{f"{k}_err_max": v for k, v in worst.items()}, "tolerance": RANK_TOL,
               "er_mean": float(er.mean()), "erv_mean": float(erv.mean())}
    return ok, figures


# --------------------------------------------------------------------------------------------- sampler
def _hf_generate(model, tok, prompts: list[str], n: int, new: int) -> torch.Tensor:
    """model.generate at batch len(prompts) * n, exactly ``new`` sampled tokens per row (the baseline)."""
    from verl_bench.rollout import _eos_ids

    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    dev = next(model.parameters()).device
    ids = enc["input_ids"].repeat_interleave(n, dim=0).to(dev)
    out = model.generate(input_ids=ids, attention_mask=enc["attention_mask"].repeat_interleave(n, dim=0).to(dev),
                         do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new,
                         min_new_tokens=new, eos_token_id=_eos_ids(model, tok), pad_token_id=tok.pad_token_id)
    return out[:, ids.shape[1]:]


def _hidden_agreement(model, tok, prompts: list[str], tokens: int, tol: float) -> dict:
    """Each engine's recorded hidden states vs one scoring pass over its rollout (relative error)."""
    from verl_bench.policy import policy_forward
    from verl_bench.rollout import CachedSamplingEngine, HFGenerateEngine, SamplingParams

    out = {}
    for name, engine in (("cached", CachedSamplingEngine), ("hf", HFGenerateEngine)):
        torch.manual_seed(0)
        roll = engine(model, tok).generate(prompts, SamplingParams(n=2, temperature=0.7, max_new_tokens=tokens))
        with torch.no_grad():
            ref = policy_forward(model, roll).hidden.float()
        got = roll.hidden.float()
        rel = float((got - ref).norm() / ref.norm().clamp_min(1e-12))
        padding_zero = bool((roll.hidden[~roll.response_mask.to(roll.hidden.device)] == 0).all())
        out[f"hidden_{name}_rel_err"], out[f"hidden_{name}_ok"] = rel, rel < tol and padding_zero
    return out


def check_sampler(ctx: Context) -> tuple[bool, dict]:
    from verl_bench.models import load_model
    from verl_bench.rollout import CachedSamplingEngine, SamplingParams

    dev, (n_prompts, n, new) = ctx.device, ctx.sizes.sampler
    model, tok = load_model(ctx.model_dir, dtype=ctx.compute, device=dev)  # the loop's rollout copy: bf16 on CUDA
    prompts = [tok.apply_chat_template([{"role": "user", "content": f"What is {17 * i + 3} + {29 * i + 11}?"}],
                                       tokenize=False, add_generation_prompt=True) for i in range(n_prompts)]
    engine = CachedSamplingEngine(model, tok)
    fixed = SamplingParams(n=n, temperature=1.0, max_new_tokens=new, min_new_tokens=new)  # EOS never ends a row
    engine.generate(prompts, SamplingParams(n=n, max_new_tokens=4, min_new_tokens=4))  # warm-up, both paths
    _hf_generate(model, tok, prompts, n, 4)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_cached, roll = _timed(lambda: engine.generate(prompts, fixed), dev)
    peak_cached = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None
    t_hf, hf_ids = _timed(lambda: _hf_generate(model, tok, prompts, n, new), dev)
    rows = n_prompts * n
    cached_tokens, hf_tokens = int(roll.response_mask.sum()), int(hf_ids.numel())
    tol = 2e-2 if ctx.compute == torch.bfloat16 else 1e-5  # bf16: a different kernel path, rounding only
    hidden = _hidden_agreement(model, tok, prompts[:2], min(24, new), tol)
    figures = {"batch": rows, "new_tokens": new, "dtype": str(ctx.compute).removeprefix("torch."),
               "cached_s": t_cached, "cached_tokens_per_s": cached_tokens / t_cached,
               "generate_s": t_hf, "generate_tokens_per_s": hf_tokens / t_hf, "cached_speedup": t_hf / t_cached,
               "cached_peak_cuda_gb": peak_cached, **hidden}
    ok = cached_tokens == hf_tokens == rows * new and hidden["hidden_cached_ok"] and hidden["hidden_hf_ok"]
    return ok, figures


# ------------------------------------------------------------------------------- the loop: checkpoint, fsdp
@dataclass
class LoopRun:
    rows: list[dict]  # the step rows train() reported
    weights: dict[int, dict[str, torch.Tensor]]  # step -> the model's full weights when the loop saved
    sharded: bool  # whether those weights were DTensors (FSDP)
    run_dir: Path


def _every_other_correct(texts, golds, **kw):
    """A random model never answers right: every other response graded correct gives GRPO a signal."""
    from verl_bench.reward import Grade

    return [Grade(answer=t[-8:], boxed=False, correct=i % 2 == 0) for i, t in enumerate(texts)]


def _plain_key(name: str) -> str:
    for wrapper in ("_checkpoint_wrapped_module.", "_fsdp_wrapped_module.", "_orig_mod."):
        name = name.replace(wrapper, "")
    return name


def _full_weights(lm) -> tuple[dict[str, torch.Tensor], bool]:
    """The module's whole state on the CPU (DTensor shards gathered) and whether any was sharded."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed
        DTensor = ()
    out, sharded = {}, False
    for k, v in lm.state_dict().items():
        if isinstance(v, DTensor):
            sharded, v = True, v.full_tensor()
        out[_plain_key(k)] = v.detach().to("cpu", copy=True)
    return out, sharded


def run_loop(ctx: Context, name: str, extra: list[str]) -> LoopRun:
    """``verl_bench.train.train`` on the demo config at the check's sizes and the paper's lr, checkpointing
    every step; the weights the loop holds at each save are copied (a wrapper around ``train.save``)."""
    from verl_bench import train as loop
    from verl_bench.config import load_config

    s = ctx.sizes
    prompts, n, new = s.loop
    run_dir = ctx.tmp / name
    cfg = load_config(DEMO, [
        f"model={ctx.model_dir}", f"run_dir={run_dir}", f"steps={s.loop_steps}", "checkpoint_every=1",
        "keep_checkpoints=0", "eval_every=0", "data.eval_size=0", f"rollout.prompts_per_step={prompts}",
        f"rollout.n={n}", f"rollout.max_new_tokens={new}", "rollout.temperature=1.0", f"algo.lr={LR_YAML}",
        f"micro_batch={s.micro_batch}", "micro_batch_tokens=null", *extra])
    rows, weights, sharded = [], {}, []
    original = loop.save

    def save_and_copy(run, step):
        weights[step], is_sharded = _full_weights(run.lm)
        sharded.append(is_sharded)
        return original(run, step)

    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    loop.save = save_and_copy
    try:
        loop.train(cfg, report=lambda m, ckpt: rows.append(m) if "loss" in m else None, grader=_every_other_correct)
    finally:
        loop.save = original
    return LoopRun(rows, weights, bool(sharded) and all(sharded), run_dir)


def _safetensors_dtypes(folder: Path) -> list[str]:
    from safetensors import safe_open

    found = set()
    for path in folder.glob("*.safetensors"):
        with safe_open(path, framework="pt") as f:
            found.update(f.get_slice(k).get_dtype() for k in f.keys())  # noqa: SIM118 - safe_open is not iterable
    return sorted(found)


def _flat_change(weights: dict[str, torch.Tensor], initial: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([(weights[k].double() - initial[k].double()).reshape(-1) for k in sorted(initial)])


def loop_figures(ctx: Context, run: LoopRun) -> tuple[bool, dict]:
    """The run's steps were finite and trained; the last checkpoint reloads (plain transformers) as exactly
    the float32 weights the loop held; they moved from the initial weights by about lr per step."""
    from transformers import AutoModelForCausalLM

    from verl_bench.checkpoint import latest_checkpoint

    steps, rows = ctx.sizes.loop_steps, run.rows
    ckpt = latest_checkpoint(run.run_dir)
    live = run.weights[steps]
    reloaded, info = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32, output_loading_info=True)
    state = {_plain_key(k): v for k, v in reloaded.state_dict().items()}
    absent = sorted(set(live) - set(state))
    diff = max(float((live[k].float() - state[k].float()).abs().max()) for k in live if k in state)
    initial = ctx.initial_weights
    change = _flat_change(live, initial)
    last = rows[-1]
    figures = {
        "steps": len(rows), "checkpoint": ckpt.name, "sharded": run.sharded,
        "loss": [r["loss"] for r in rows], "grad_norm": [r["grad_norm"] for r in rows],
        "step_s": last["time/step_s"], "generate_s": last["time/generate_s"], "update_s": last["time/update_s"],
        "tokens_per_s": last["tokens_per_s"], "response_length": last["response_length"],
        "peak_cuda_gb": last.get("memory/peak_cuda_gb"),
        "live_dtypes": sorted({str(v.dtype).removeprefix("torch.") for v in live.values()}),
        "file_dtypes": _safetensors_dtypes(ckpt), "reload_max_abs_diff": diff, "reload_absent_keys": absent[:5],
        "reload_missing_keys": sorted(info.get("missing_keys") or [])[:5],
        "moved": float((change != 0).double().mean()),
        "mean_change_over_lr": float(change.abs().mean() / LR),
    }
    finite = all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0 for r in rows)
    ok = (len(rows) == steps and finite and not absent and not figures["reload_missing_keys"] and diff == 0.0
          and figures["live_dtypes"] == ["float32"] and figures["file_dtypes"] == ["F32"] and figures["moved"] > 0.9)
    return ok, figures


def check_checkpoint(ctx: Context) -> tuple[bool, dict]:
    run = run_loop(ctx, "plain", [])
    ctx.shared["plain"] = run
    return loop_figures(ctx, run)


def fsdp_available() -> str | None:
    """Why the loop cannot run under FSDP yet (None: it can)."""
    from verl_bench.config import RayConfig

    if "strategy" not in {f.name for f in dataclasses.fields(RayConfig)}:
        return "the config has no ray.strategy key yet (verl_bench/config.py RayConfig): the FSDP loop has not landed"
    return None


def check_fsdp(ctx: Context) -> tuple[bool, dict]:
    import torch.distributed as dist

    why = fsdp_available()
    if why:
        raise Skipped(why)
    if dist.is_initialized():
        raise RuntimeError("a torch.distributed group already exists in this process")
    if ctx.device.type == "cuda":
        torch.cuda.set_device(ctx.device)
    backend = "nccl" if ctx.device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"file://{ctx.tmp / 'fsdp_rendezvous'}", rank=0, world_size=1)
    try:
        run = run_loop(ctx, "fsdp", ["ray.strategy=fsdp"])
    finally:
        dist.destroy_process_group()
    ok, figures = loop_figures(ctx, run)
    figures["backend"] = backend
    ok &= run.sharded
    plain: LoopRun | None = ctx.shared.get("plain")
    if plain is None or 1 not in plain.weights:
        figures["vs_plain"] = "not compared: the checkpoint part (the plain loop) did not run"
        return ok, figures
    # the first update of each run from the same weights, seed and rollout sampler
    initial = ctx.initial_weights
    agree = update_agreement(_flat_change(run.weights[1], initial), _flat_change(plain.weights[1], initial))
    a, b = run.rows[0], plain.rows[0]
    # the same tokens give the same hidden states, so the same ER (lengths and rewards alone would not tell)
    same_rollout = (all(a[k] == b[k] for k in ("response_length", "reward/mean", "accuracy"))
                    and abs(a["rank/er"] - b["rank/er"]) <= 1e-6 * abs(b["rank/er"]))
    norm_rel = abs(a["grad_norm"] - b["grad_norm"]) / b["grad_norm"]
    figures.update({"vs_plain_step1_same_rollout": same_rollout, "vs_plain_step1_grad_norm_rel_diff": norm_rel,
                    "vs_plain_step1_step_ratio": agree["ratio"], "vs_plain_step1_same_sign": agree["same_sign"]})
    # AdamW's first step is about lr x sign(gradient) either way. With the same rollout the gradients are the
    # same up to rounding: plain autocast and FSDP's bf16 parameters round differently (bf16 on the CPU: norm
    # 4e-4 apart, 0.998 of the signs the same), far less than a lost or doubled micro-batch would move them
    ok &= 0.8 < agree["ratio"] < 1.25 and (not same_rollout or (norm_rel < 0.05 and agree["same_sign"] > 0.9))
    return ok, figures


PARTS = {"precision": check_precision, "rank": check_rank, "sampler": check_sampler,
         "checkpoint": check_checkpoint, "fsdp": check_fsdp}
