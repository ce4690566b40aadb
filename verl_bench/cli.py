"""``verl-bench`` command line: thin orchestration over the library.

    verl-bench train CONFIG.yaml [--set key=value ...] [--ray] [--resume CKPT]
    verl-bench demo                  # studies/demo.yaml: GRPO vs VERL on the embedded default, offline, CPU
    verl-bench study STUDY.yaml [--resume] [--address ADDR] [--storage PATH] [--dry-run]
    verl-bench rank MODEL [...]      # sample responses and print their ER / ERV / ERA
    verl-bench sweep SPACE.yaml [--resume] [--address ADDR] [--storage PATH] [--name NAME]
    verl-bench plan CONFIG.yaml [--gpus N] [--gpu-memory GB] [--strategy ddp|fsdp|both]   # memory per GPU
    verl-bench eval MODEL_OR_CHECKPOINT... | --experiment PATH [--which all|last|best] [--benchmarks ...]
                    [--preset paper|greedy|quick|pass16]
    verl-bench report EXPERIMENT_OR_STUDY... -o DIR   # static HTML report: figures PNG/SVG, tables CSV/parquet
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from verl_bench.errors import UserError

DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "demo.yaml"


def _cmd_train(args) -> int:
    from verl_bench.config import load_config

    cfg = load_config(args.config, args.set)  # validated before anything expensive starts
    from verl_bench.plan_cli import check_plan

    check_plan(cfg)  # refuses a plan that cannot fit the GPUs (a no-op without CUDA)
    on_ray = bool(args.ray or cfg.ray.num_workers > 1 or cfg.ray.address)
    _check_train_inputs(cfg, args, on_ray)
    if on_ray:
        from verl_bench.distributed import train_with_ray

        result = train_with_ray(cfg, storage_path=args.storage, name=args.name)
        if result.error:
            print(f"training failed: {result.error}", file=sys.stderr)
            return 1
        print(f"done: {result.path}")
        return 0
    from verl_bench.train import train

    train(cfg, resume_from=args.resume)
    print(f"done: {cfg.run_dir}")
    return 0


def _check_train_inputs(cfg, args, on_ray: bool) -> None:
    """What ``train`` would refuse only after it started (or inside Ray workers), refused first: the model
    spec, a run folder or storage that cannot be written, a missing, empty or malformed data file, and
    under Ray a local cluster too small for the workers."""
    from verl_bench.config import ConfigError
    from verl_bench.models import check_model_spec
    from verl_bench.sysutil import require_writable

    try:
        check_model_spec(cfg.model)  # builds, converts and downloads nothing
    except (UserError, OSError) as e:
        raise ConfigError(f"{args.config}: model: {e}") from None
    require_writable(cfg.run_dir, f"{args.config}: run_dir")
    if on_ray and args.storage:
        require_writable(args.storage, "--storage")
    from verl_bench import data as data_lib

    for name in dict.fromkeys((cfg.data.train, cfg.data.eval)):  # a missing, empty or malformed file
        data_lib.load_problems(name, data_root=cfg.data.data_root, limit=1)
    if on_ray and not cfg.ray.address:  # a local cluster: this machine's CPUs and GPUs
        import os

        import torch

        need = {"CPU": cfg.ray.num_workers * cfg.ray.cpus_per_worker,
                "GPU": cfg.ray.num_workers if cfg.ray.use_gpu else 0}
        have = {"CPU": os.cpu_count() or 1, "GPU": torch.cuda.device_count()}
        for kind, n in need.items():
            if n > have[kind]:
                raise ConfigError(f"{args.config}: ray.num_workers: {cfg.ray.num_workers} workers need {n} {kind}(s) "
                                  f"but this machine has {have[kind]} (pass --address for a cluster)")


def _cmd_demo(args) -> int:
    """The demo study (studies/demo.yaml), resumed when its folder exists: kill it and run it again. The
    single training run it used to be is ``verl-bench train verl_bench/configs/demo.yaml``."""
    from verl_bench.study.cli import cmd_study
    from verl_bench.study.spec import STUDIES

    args.study, args.resume, args.address, args.dry_run = str(STUDIES / "demo.yaml"), True, None, False
    return cmd_study(args)


def _cmd_rank(args) -> int:
    import torch

    from verl_bench import data as data_lib
    from verl_bench.models import load_model
    from verl_bench.policy import policy_forward
    from verl_bench.rank import rank_dynamics
    from verl_bench.rollout import HFGenerateEngine, SamplingParams

    torch.manual_seed(args.seed)
    problems = data_lib.load_problems(args.dataset, limit=args.prompts)
    model, tok = load_model(args.model)
    prompts = [data_lib.render_prompt(args.template, p.question, tok) for p in problems]
    roll = HFGenerateEngine(model, tok).generate(
        prompts, SamplingParams(n=args.n, temperature=args.temperature, max_new_tokens=args.max_new_tokens))
    with torch.no_grad():
        out = policy_forward(model, roll)
    er, erv, era = rank_dynamics(out.hidden, roll.response_mask, stride=args.stride, window=args.window)
    print(f"{'#':>3} {'len':>4} {'ER':>8} {'ERV':>8} {'ERA':>8}  response")
    for i, text in enumerate(roll.texts):
        snippet = " ".join(text.split())[:60]
        print(f"{i:>3} {int(roll.response_lengths[i]):>4} {er[i]:8.2f} {erv[i]:8.3f} {era[i]:8.3f}  {snippet}")
    print(f"mean: ER {er.mean():.2f}  ERV {erv.mean():.3f}  ERA {era.mean():.3f}  "
          f"({len(roll.texts)} responses of {args.model}, stride {args.stride}, window {args.window})")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="verl-bench", description="VERL (rank-shaped GRPO) training and sweeps")
    sub = ap.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="one training run from a YAML config")
    t.add_argument("config")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set shaping.kappa=4 (repeatable)")
    t.add_argument("--ray", action="store_true", help="run under a Ray Train TorchTrainer")
    t.add_argument("--resume", default=None, help="checkpoint folder (default: newest in run_dir)")
    t.add_argument("--storage", default=None, help="Ray storage path (with --ray)")
    t.add_argument("--name", default=None, help="Ray run name (with --ray)")
    t.set_defaults(fn=_cmd_train)

    d = sub.add_parser("demo", help="the demo study: GRPO vs VERL on the embedded default (SmolLM2-135M-Instruct, "
                                    "arithmetic, CPU), evaluated and reported; resumes when run again")
    d.add_argument("--storage", default=None, help="parent folder of the study's folder (default runs/studies)")
    d.set_defaults(fn=_cmd_demo)

    r = sub.add_parser("rank", help="sample responses from a model and print their ER / ERV / ERA")
    r.add_argument("model", nargs="?", default="smollm2-135m-instruct")
    r.add_argument("--dataset", default="arithmetic_test")
    r.add_argument("--template", default="chat")
    r.add_argument("--prompts", type=int, default=4)
    r.add_argument("--n", type=int, default=4)
    r.add_argument("--max-new-tokens", type=int, default=96)
    r.add_argument("--temperature", type=float, default=1.0)
    r.add_argument("--stride", type=int, default=16)
    r.add_argument("--window", type=int, default=512)
    r.add_argument("--seed", type=int, default=0)
    r.set_defaults(fn=_cmd_rank)

    from verl_bench.sweep import add_sweep_parser

    add_sweep_parser(sub)

    from verl_bench.study.cli import add_study_parser

    add_study_parser(sub)

    from verl_bench.evaluate.cli import add_eval_parser

    add_eval_parser(sub)

    from verl_bench.plan_cli import add_plan_parser

    add_plan_parser(sub)

    from verl_bench.report import add_report_parser

    add_report_parser(sub)

    args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print("interrupted: the newest checkpoint is kept; rerun the same command to resume", file=sys.stderr)
        return 130
    except (UserError, FileNotFoundError) as e:  # bad input: one clear line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
