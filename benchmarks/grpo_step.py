"""Time one GRPO step of the embedded default, side by side: each scoring setting vs naive.

    python benchmarks/grpo_step.py [--steps 3] [--variants naive,lean,shared,demo]

Each variant runs the demo config (SmolLM2-135M-Instruct, 4 prompts x 8 samples x <= 64 new tokens) for a
few steps in its own process, so its peak RSS is its own. Every variant's update backpropagates each scoring
micro-batch as soon as it is scored (verl_bench.policy.policy_backward). Variants:
  naive   model.generate rollouts; the whole batch in one micro-batch, padded to the longest response
  lean    cached sampler (shared prefill, finished samples leave the batch); length-sorted micro-batches
          of 8, HF gradient checkpointing (per decoder layer)
  shared  cached sampler; each prompt scored once per rollout, its KV cache shared by its samples,
          length-sorted micro-batches of 8 responses
  demo    the demo default: shared prompts, micro-batches of at most 160 padded response positions
Prints median step / generate / update times (steps 2.., the first pays one-time costs), peak RSS, mean
response length and the 1-minute load average seen while each variant ran (this machine has 2 cores: a
lone run shows about 2), the ratios to naive, and appends one row to benchmarks/results/grpo_step.jsonl.

Response lengths follow what the model samples (about 15-25 tokens here), so they differ a little between
variants and runs. ``--set rollout.min_new_tokens=64`` holds EOS back until 64 tokens: every response is
64 tokens long, the worst case of the step, and the same work in every variant.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "grpo_step.jsonl"
VARIANTS = {
    "naive": ["rollout.engine=hf", "micro_batch=null", "micro_batch_tokens=null", "gradient_checkpointing=false",
              "logits_chunk_tokens=1000000", "share_prompt=false"],
    "lean": ["rollout.engine=cached", "micro_batch=8", "micro_batch_tokens=null", "gradient_checkpointing=true",
             "share_prompt=false"],
    "shared": ["rollout.engine=cached", "micro_batch=8", "micro_batch_tokens=null", "gradient_checkpointing=false",
               "share_prompt=true"],
    "demo": ["rollout.engine=cached", "micro_batch=null", "micro_batch_tokens=160", "gradient_checkpointing=false",
             "share_prompt=true"],
}


def run_variant(name: str, steps: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        sets = [f"steps={steps}", f"run_dir={tmp}/run", "data.eval_size=0", "checkpoint_every=0",
                "keep_checkpoints=1", *VARIANTS[name], *extra]
        cmd = [sys.executable, "-m", "verl_bench.cli", "train", "verl_bench/configs/demo.yaml"] + [
            a for s in sets for a in ("--set", s)]
        print(f"[{name}] {' '.join(VARIANTS[name] + extra)}", flush=True)
        loads = []
        proc = subprocess.Popen(cmd, env=os.environ.copy())
        while proc.poll() is None:
            loads.append(os.getloadavg()[0])
            time.sleep(2.0)
        if proc.returncode:
            raise subprocess.CalledProcessError(proc.returncode, cmd)
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
        "load_1m": round(statistics.median(loads), 2) if loads else None,
        "load_1m_max": round(max(loads), 2) if loads else None,
        "settings": " ".join(VARIANTS[name] + extra),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ",".join(VARIANTS))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="applied to every variant")
    args = ap.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    cmd = "python benchmarks/grpo_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = {name: run_variant(name, args.steps, args.set) for name in names}
    row = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "threads": os.cpu_count(),
           "command": cmd.strip(), **{f"{k}_{m}": v for k, r in out.items() for m, v in r.items()}}
    base = out.get("naive")
    print(f"\n{'variant':10s} {'step s':>7s} {'gen s':>6s} {'upd s':>6s} {'RSS GB':>7s} {'resp len':>8s} "
          f"{'load':>5s} | vs naive: step, update, RSS")
    for name, r in out.items():
        line = (f"{name:10s} {r['step_s']:7.1f} {r['generate_s']:6.1f} {r['update_s']:6.1f} "
                f"{r['peak_rss_gb']:7.2f} {r['response_length']:8.1f} {r['load_1m'] or 0:5.1f}")
        if base is not None and name != "naive":
            row[f"{name}_step_speedup"] = round(base["step_s"] / r["step_s"], 2)
            row[f"{name}_generate_speedup"] = round(base["generate_s"] / r["generate_s"], 2)
            row[f"{name}_update_speedup"] = round(base["update_s"] / r["update_s"], 2)
            row[f"{name}_rss_ratio"] = round(base["peak_rss_gb"] / r["peak_rss_gb"], 2)
            line += (f" | {row[f'{name}_step_speedup']}x, {row[f'{name}_update_speedup']}x, "
                     f"{row[f'{name}_rss_ratio']}x lower")
        print(line)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
