"""Evaluation throughput through lm-eval: problems per second for a model on a benchmark, side by side.

    python benchmarks/eval_throughput.py [--model smollm2-135m-instruct] [--benchmark gsm8k] [--problems 32]
                                         [--max-tokens 256] [--batch-sizes 1,16]

Each setting evaluates the same first ``--problems`` problems greedily with lm-eval's hf backend (float32 on
CPU; bf16 on CUDA when a GPU is present, where a larger batch is added) into a fresh folder, so nothing is
skipped. Timed: the lm-eval run (generation + scoring), not the model load. Prints problems/s, generated
tokens/s and the ratio between settings; appends rows to benchmarks/results/eval_throughput.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from verl_bench.evaluate import run as run_lib
from verl_bench.evaluate.presets import get_preset
from verl_bench.models import load_tokenizer, resolve_model

RESULTS = Path(__file__).resolve().parent / "results" / "eval_throughput.jsonl"


def measure(folder: Path, benchmark: str, preset, template: str, batch_size: int, backend: str) -> dict:
    import torch

    lm = run_lib.make_lm(folder, backend, batch_size, seed=0)
    tok = load_tokenizer(folder)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        res_file = run_lib._run_one(lm, benchmark, preset, template, tok, Path(out), None, 0)
        wall = time.perf_counter() - t0
        samples = [json.loads(x) for x in Path(str(res_file).replace("results_", "samples_")).with_suffix(
            ".jsonl").read_text().splitlines()]
        acc = run_lib.read_results(res_file)[0]["value"]
    gen_tokens = sum(len(tok(r, add_special_tokens=False)["input_ids"]) for s in samples for r in s["resps"][0])
    del lm
    return {"benchmark": benchmark, "problems": len(samples), "batch_size": batch_size, "wall_s": round(wall, 2),
            "problems_per_s": round(len(samples) / wall, 3), "gen_tokens": gen_tokens,
            "gen_tokens_per_s": round(gen_tokens / wall, 1), "pass@1": acc,
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "dtype": "bfloat16" if torch.cuda.is_available() else "float32"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--benchmark", default="gsm8k")
    ap.add_argument("--problems", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--template", default="chat")
    ap.add_argument("--batch-sizes", default=None, help="comma list (default 1,16 on CPU; 1,16,64 on CUDA)")
    ap.add_argument("--backend", default="hf")
    args = ap.parse_args(argv)

    import torch

    cuda = torch.cuda.is_available()
    sizes = [int(b) for b in (args.batch_sizes or ("1,16,64" if cuda else "1,16")).split(",")]
    folder = resolve_model(args.model)
    preset = get_preset("greedy").with_overrides(max_tokens=args.max_tokens, limit=args.problems)
    rows = []
    for bs in sizes:
        print(f"[eval_throughput] {args.model} {args.benchmark}: {args.problems} problems, greedy, "
              f"<= {args.max_tokens} tokens, batch {bs}", flush=True)
        rows.append(measure(folder, args.benchmark, preset, args.template, bs, args.backend))
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["problems_per_s"]
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    print(f"\n{'batch':>6} {'problems/s':>11} {'tokens/s':>9} {'wall s':>7} {'pass@1':>7} {'vs first':>8}")
    for r in rows:
        r.update({"model": args.model, "backend": args.backend, "max_tokens": args.max_tokens,
                  "template": args.template, "time": stamp, "load_avg_1m": round(os.getloadavg()[0], 2),
                  "host_cpus": os.cpu_count(), "machine": platform.machine(),
                  "speedup_vs_first": round(r["problems_per_s"] / base, 2)})
        print(f"{r['batch_size']:>6} {r['problems_per_s']:>11.3f} {r['gen_tokens_per_s']:>9.1f} "
              f"{r['wall_s']:>7.1f} {r['pass@1']:>7.3f} {r['speedup_vs_first']:>7.2f}x")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(f"appended {len(rows)} rows to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
