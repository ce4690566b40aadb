"""Time one GRPO step of the embedded default, side by side: lean and shared-prompt settings vs naive.

    python benchmarks/grpo_step.py [--steps 3]

Each variant runs the demo config (SmolLM2-135M-Instruct, 4 prompts x 8 samples x <= 64 new tokens) for a
few steps in its own process, so its peak RSS is its own. Variants:
  naive   model.generate rollouts; whole-batch scoring padded to the longest response, one LM-head chunk
  lean    cached sampler (shared prefill, finished samples leave the batch); length-grouped micro-batches
          of 8, 512-row LM-head chunks, gradient checkpointing (lowest memory)
  shared  cached sampler; each prompt scored once per micro-batch with its KV cache shared by its samples,
          no gradient checkpointing (fastest)
Prints median step / generate / update times and peak RSS, the ratios, and appends to
benchmarks/results/grpo_step.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "grpo_step.jsonl"
VARIANTS = {
    "naive": ["rollout.engine=hf", "micro_batch=null", "gradient_checkpointing=false",
              "logits_chunk_tokens=1000000", "share_prompt=false"],
    "lean": ["rollout.engine=cached", "micro_batch=8", "gradient_checkpointing=true", "share_prompt=false"],
    "shared": ["rollout.engine=cached", "micro_batch=16", "gradient_checkpointing=false", "share_prompt=true"],
}


def run_variant(name: str, steps: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        sets = [f"steps={steps}", f"run_dir={tmp}/run", "data.eval_size=0", "checkpoint_every=0",
                "keep_checkpoints=1", *VARIANTS[name], *extra]
        cmd = [sys.executable, "-m", "verl_bench.cli", "demo"] + [a for s in sets for a in ("--set", s)]
        print(f"[{name}] {' '.join(VARIANTS[name])}", flush=True)
        subprocess.run(cmd, check=True, env=os.environ.copy())
        rows = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["step"] >= 1]
    timed = rows[1:] or rows  # the first step pays one-time costs (allocator warm-up, verifier start)
    return {
        "step_s": statistics.median(r["time/step_s"] for r in timed),
        "generate_s": statistics.median(r["time/generate_s"] for r in timed),
        "update_s": statistics.median(r["time/update_s"] for r in timed),
        "response_length": statistics.mean(r["response_length"] for r in timed),
        "peak_rss_gb": max(r["memory/peak_rss_gb"] for r in rows),
        "steps_timed": len(timed),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    out = {name: run_variant(name, args.steps, args.set) for name in VARIANTS}
    base = out["naive"]
    row = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "threads": os.cpu_count(),
           **{f"{k}_{m}": v for k, r in out.items() for m, v in r.items()}}
    for name, r in out.items():
        print(f"{name:7s} step {r['step_s']:6.1f} s (generate {r['generate_s']:5.1f}, update {r['update_s']:5.1f}) "
              f"| peak RSS {r['peak_rss_gb']:4.1f} GB | mean response {r['response_length']:.0f} tokens")
        if name != "naive":
            row[f"{name}_step_speedup"] = round(base["step_s"] / r["step_s"], 2)
            row[f"{name}_generate_speedup"] = round(base["generate_s"] / r["generate_s"], 2)
            row[f"{name}_update_speedup"] = round(base["update_s"] / r["update_s"], 2)
            row[f"{name}_rss_ratio"] = round(base["peak_rss_gb"] / r["peak_rss_gb"], 2)
            print(f"        vs naive: step {row[f'{name}_step_speedup']}x, generate "
                  f"{row[f'{name}_generate_speedup']}x, update {row[f'{name}_update_speedup']}x, "
                  f"peak RSS {row[f'{name}_rss_ratio']}x lower")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
