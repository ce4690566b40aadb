"""The GPU path in one short run: rank metrics, both samplers and a few training steps on the device.

    python benchmarks/gpu_check.py [--steps 4] [--shape smollm2-135m|tiny] [--prompts 4] [--n 8]

Made for the few minutes of a lent H100/H200 (no Ray, no hub there: it calls the plain ``train`` loop),
and run on this CPU as well, where the same code runs in float32 (that is how the script itself is tested).
Checks, each printed PASS/FAIL with its figures:
  rank     ER/ERV/ERA on the device (float64 Gram route) vs tests/reference.py's float64 numpy SVD, and the
           device time of rank_dynamics at the paper's scale (64 responses x 1024 tokens x D 3584)
  hidden   each sampler's recorded hidden states vs a scoring pass, in the run dtype (bf16 on CUDA)
  train    ``train()`` for a few steps on a SmolLM2-135M-shaped model with random weights (the real one does
           not fit what the device tool carries): step/generate/update time, tokens/s, peak device memory,
           finite loss and a non-zero gradient, and the HF checkpoint reloads with plain transformers, moved
           from the initial weights. A random model never answers right, so (as in tests/test_train.py) every
           other response is graded correct: the groups then have a signal and the update really runs.
Appends one JSON row to benchmarks/results/gpu_check.jsonl (and writes it to $OUT when that is set).

On the device machine (torch, transformers and pyyaml are there; nothing else is imported), first make the
SmolLM2 tokenizer (a few MB) here and carry it:
    VERL_BENCH_CACHE=.gpucache python -c "from verl_bench.models import smollm2_tokenizer; smollm2_tokenizer()"
    run: VERL_BENCH_CACHE=.gpucache PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py   (carry .gpucache)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's verl_bench and tests.reference

RESULTS = Path(__file__).resolve().parent / "results" / "gpu_check.jsonl"
SHAPES = {  # SmolLM2-135M: 30 layers, d 576, 9 heads (3 KV), MLP 1536
    "smollm2-135m": dict(hidden_size=576, num_layers=30, heads=9, kv_heads=3, intermediate_size=1536),
    "tiny": dict(hidden_size=64, num_layers=2, heads=4, kv_heads=2),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def check_rank(device: torch.device) -> dict:
    from tests.reference import dynamics_ref
    from verl_bench.rank import rank_dynamics

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(4, 160, 96, generator=g).cumsum(dim=1) * 0.1  # drifting states: a wide spectrum
    lengths = torch.tensor([160, 121, 64, 30])
    mask = torch.arange(160)[None] < lengths[:, None]
    er, erv, era = (x.cpu() for x in rank_dynamics(hidden.to(device), mask.to(device), stride=10))
    worst = 0.0
    for i, n in enumerate(lengths.tolist()):
        ref = dynamics_ref(hidden[i, :n].double().numpy(), 10, 512)
        worst = max(worst, abs(er[i].item() - ref[0]) / ref[0], abs(erv[i].item() - ref[1]),
                    abs(era[i].item() - ref[2]))
    # the paper's scale: 8 prompts x 8 samples, 1024-token responses, Qwen2.5-7B's hidden size
    shape = (64, 1024, 3584) if device.type == "cuda" else (4, 256, 3584)  # keep the CPU run short
    big = torch.randn(*shape, device=device, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    big_mask = torch.ones(shape[:2], dtype=torch.bool, device=device)
    rank_dynamics(big[:2], big_mask[:2], stride=40)  # warm-up (kernels, allocator)
    _sync(device)
    t0 = time.perf_counter()
    rank_dynamics(big, big_mask, stride=40)
    _sync(device)
    return {"rank_ok": worst < 1e-3, "rank_worst_err": worst, "rank_paper_scale_s": time.perf_counter() - t0,
            "rank_paper_scale_shape": list(big.shape)}


def check_hidden(model, tok, device: torch.device, dtype: torch.dtype) -> dict:
    from verl_bench.policy import policy_forward
    from verl_bench.rollout import CachedSamplingEngine, HFGenerateEngine, SamplingParams

    prompts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
               for p in ("What is 12 + 30?", "A much longer question about apples, pears and other fruits?")]
    out = {}
    for name, engine in (("cached", CachedSamplingEngine), ("hf", HFGenerateEngine)):
        torch.manual_seed(0)
        roll = engine(model, tok).generate(prompts, SamplingParams(n=4, temperature=0.7, max_new_tokens=24))
        with torch.no_grad():
            ref = policy_forward(model, roll).hidden
        got = roll.hidden.to(device)
        rel = float((got.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-12))
        # bf16 rows from a different kernel path (cached decode vs one full pass) differ by rounding only
        tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
        out[f"hidden_{name}_rel_err"] = rel
        out[f"hidden_{name}_ok"] = rel < tol and bool((roll.hidden[~roll.response_mask] == 0).all())
    return out


def check_train(model_dir: Path, run_dir: Path, args, device: torch.device) -> dict:
    from transformers import AutoModelForCausalLM

    from verl_bench import reward as reward_lib
    from verl_bench.config import load_config
    from verl_bench.train import latest_checkpoint, train

    def every_other_correct(texts, golds, **kw):
        return [reward_lib.Grade(answer=t[-8:], boxed=False, correct=i % 2 == 0) for i, t in enumerate(texts)]

    rows: list[dict] = []
    cfg = load_config(Path(__file__).resolve().parents[1] / "verl_bench" / "configs" / "demo.yaml", [
        f"model={model_dir}", f"run_dir={run_dir}", f"steps={args.steps}", f"checkpoint_every={args.steps}",
        "eval_every=0", "data.eval_size=0", f"rollout.prompts_per_step={args.prompts}", f"rollout.n={args.n}",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        # whole-batch scoring of 256 x 256 tokens would hold ~70 GB of activations: 64 full rows at a time
        "micro_batch_tokens=16384" if device.type == "cuda" else "micro_batch_tokens=160"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    train(cfg, report=lambda m, ckpt: rows.append(m) if "loss" in m else None, grader=every_other_correct)
    later = rows[1:] or rows  # the first step pays one-time costs (kernels, allocator)
    med = {k: statistics.median(r[k] for r in later) for k in
           ("time/step_s", "time/generate_s", "time/update_s", "tokens_per_s", "response_length")}
    finite = all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in rows)
    grads = all(r["grad_norm"] > 0 for r in rows)

    # the checkpoint is a plain HF folder: transformers loads it, and training moved its logits
    reloaded = AutoModelForCausalLM.from_pretrained(latest_checkpoint(run_dir), dtype=torch.float32).eval()
    initial = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    with torch.no_grad():
        moved = float((reloaded(ids).logits - initial(ids).logits).abs().max())
    return {"train_ok": finite and grads and len(rows) == args.steps and moved > 0, "train_steps": len(rows),
            "train_step_s": med["time/step_s"], "train_generate_s": med["time/generate_s"],
            "train_update_s": med["time/update_s"], "train_tokens_per_s": med["tokens_per_s"],
            "train_response_length": med["response_length"],
            "train_peak_cuda_gb": max((r.get("memory/peak_cuda_gb", 0.0) for r in rows), default=0.0),
            "train_peak_rss_gb": max(r["memory/peak_rss_gb"] for r in rows),
            "train_grad_norm": statistics.median(r["grad_norm"] for r in rows), "train_loss_finite": finite,
            "train_checkpoint_logits_moved": moved}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m")
    p.add_argument("--prompts", type=int, default=None, help="prompts per step (default 32 on CUDA, 4 on CPU)")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 256 on CUDA, 64 on CPU")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    args.prompts = args.prompts or (32 if cuda else 4)
    args.max_new_tokens = args.max_new_tokens or (256 if cuda else 64)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from verl_bench.models import build_tiny_model, load_model

    row: dict = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": " ".join(sys.argv),
                 "device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
                 "shape": args.shape, "prompts": args.prompts, "n": args.n, "max_new_tokens": args.max_new_tokens}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "model", **SHAPES[args.shape])
        model, tok = load_model(model_dir, device=device)
        dtype = next(model.parameters()).dtype
        row["dtype"] = str(dtype).removeprefix("torch.")
        for name, check in (("rank", lambda: check_rank(device)),
                            ("hidden", lambda: check_hidden(model, tok, device, dtype)),
                            ("train", lambda: check_train(model_dir, Path(tmp) / "run", args, device))):
            t0 = time.perf_counter()
            try:
                row.update(check())
            except Exception as e:  # one failing check must not hide the others' figures
                row[f"{name}_ok"], row[f"{name}_error"] = False, f"{type(e).__name__}: {e}"
            ok = all(v for k, v in row.items() if k.startswith(name) and k.endswith("_ok"))
            figures = {k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in row.items()
                       if k.startswith(name) and not k.endswith("_ok")}
            print(f"{'PASS' if ok else 'FAIL'} {name} ({time.perf_counter() - t0:.1f} s): {figures}", flush=True)
    row["all_ok"] = all(v for k, v in row.items() if k.endswith("_ok"))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as f:
        f.write(json.dumps(row) + "\n")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_check.json").write_text(json.dumps(row, indent=1))
    print(f"{'ALL PASS' if row['all_ok'] else 'SOME FAILED'}; row appended to {args.results}")
    return 0 if row["all_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
