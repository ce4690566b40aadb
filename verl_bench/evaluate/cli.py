"""``verl-bench eval``: models or every checkpoint of an experiment, on the math benchmarks, via lm-eval."""

from __future__ import annotations

import re
from pathlib import Path

from verl_bench.errors import UserError
from verl_bench.evaluate.presets import PRESETS, get_preset
from verl_bench.evaluate.run import (
    TABLE,
    EvalJob,
    evaluate_jobs,
    find_checkpoints,
    group_average,
    pick_template,
    write_table,
)
from verl_bench.evaluate.tasks import BENCHMARKS, GROUP, build_docs, check_benchmarks

DEFAULT_OUTPUT = "runs/eval"


class EvalUsageError(UserError):
    """Bad command-line input for ``verl-bench eval``, found before any model is loaded."""


def _benchmarks(arg: str) -> list[str]:
    names = [b.strip() for b in arg.split(",") if b.strip()]
    if names == ["all"]:
        return list(BENCHMARKS)
    try:
        return check_benchmarks(names)
    except ValueError as e:
        raise EvalUsageError(f"--benchmarks: {e}") from None


def _sanitize(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", spec.strip("/")).strip("_") or "model"


def _preset(args):
    try:
        ks = [int(k) for k in args.k.split(",")] if args.k else None
    except ValueError:
        raise EvalUsageError(f"--k: expected a comma list of integers, got {args.k!r}") from None
    try:
        return get_preset(args.preset).with_overrides(
            n=args.n, temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
            limit=args.limit, ks=ks)
    except ValueError as e:
        raise EvalUsageError(str(e)) from None


def _check_folders(args) -> None:
    """--data-root and --output, before any model is resolved."""
    from verl_bench.data import DataError, resolve_data_root
    from verl_bench.sysutil import require_writable

    if args.data_root:
        try:
            resolve_data_root(args.data_root)
        except DataError as e:
            raise EvalUsageError(f"--data-root: {e}") from None
    if args.output:
        require_writable(args.output, "--output")


def plan_jobs(args, preset) -> tuple[list[EvalJob], Path]:
    """The jobs (one per model or checkpoint) and the folder of the tidy table. Resolves every model and
    reads every benchmark file first, so bad input fails before the first model is loaded."""
    from verl_bench.models import resolve_model

    jobs = []
    if args.experiment:
        for c in find_checkpoints(Path(args.experiment), args.which, args.select_metric):
            folder = Path(c["checkpoint"])
            template = pick_template(folder, args.template)
            jobs.append(EvalJob(model=str(folder), template=template,
                                out_dir=folder / "eval" / template / preset.key(), labels=c))
        table_dir = Path(args.output) if args.output else Path(args.experiment)
    else:
        output = Path(args.output or DEFAULT_OUTPUT)
        for spec in args.models:
            folder = resolve_model(spec)  # converts / checks now, not inside a worker
            template = pick_template(folder, args.template)
            base = output / _sanitize(spec) if args.output or not Path(spec).is_dir() else folder / "eval"
            jobs.append(EvalJob(model=str(folder), template=template, out_dir=base / template / preset.key(),
                                labels={"checkpoint": str(folder), "label": spec}))
        table_dir = output
    for job in jobs:  # the data files are read and every template renders before anything runs
        for b in args.benchmark_list:
            tok = None
            if job.template in ("chat", "chat-direct"):
                from verl_bench.models import load_tokenizer

                tok = load_tokenizer(job.model)
            build_docs(b, job.template, tok, args.data_root, limit=1)
    return jobs, table_dir


def merge_table(table_dir: Path, rows: list[dict]) -> Path:
    """Add ``rows`` to the folder's table, replacing older rows of the same checkpoint/protocol/benchmark."""
    import pandas as pd

    path = table_dir / f"{TABLE}.parquet"
    new = pd.DataFrame(rows)
    if path.is_file():
        old = pd.read_parquet(path)
        key = ["checkpoint", "template", "protocol", "benchmark", "metric"]
        if set(key) <= set(old.columns):
            seen = set(map(tuple, new[key].astype(str).values))
            old = old[[tuple(r) not in seen for r in old[key].astype(str).values]]
            new = pd.concat([old, new], ignore_index=True)
    return write_table(new.to_dict("records"), table_dir)


def _print_summary(rows: list[dict], preset) -> None:
    import pandas as pd

    if not rows:
        return
    df = pd.DataFrame(rows)
    head = f"pass@{preset.ks[0]}"
    df = df[df.metric == head]
    who = "trial" if "trial" in df.columns and df.trial.notna().any() else "label"
    cols = [c for c in (who, "step") if c in df.columns]
    wide = df.pivot_table(index=cols, columns="benchmark", values="value", aggfunc="first")
    order = [b for b in [*BENCHMARKS, GROUP] if b in wide.columns]
    print(f"\n{head} ({preset.name}: {preset.key()})")
    print((wide[order] * 100).round(1).to_string())


def _vllm_options(args):
    """The vllm backend's options from the flags, checked like the training config's rollout.vllm."""
    from verl_bench.rollout_vllm import EVAL_GPU_MEMORY_UTILIZATION, VLLMOptions

    memory = EVAL_GPU_MEMORY_UTILIZATION if args.gpu_memory_utilization is None else args.gpu_memory_utilization
    opts = VLLMOptions(gpu_memory_utilization=memory,
                       tensor_parallel_size=args.tensor_parallel_size, max_model_len=args.max_model_len,
                       enforce_eager=args.enforce_eager)
    for ok, key, why in opts.checks(prefix=""):
        if not ok:
            raise EvalUsageError(f"--{key.strip('.').replace('_', '-')}: {why}")
    return opts


def cmd_eval(args) -> int:
    if not args.models and not args.experiment:
        raise EvalUsageError("give MODEL_OR_CHECKPOINT... or --experiment PATH")
    if args.models and args.experiment:
        raise EvalUsageError("give models or --experiment, not both")
    vllm = _vllm_options(args)  # bad flags refused before anything runs
    _check_folders(args)
    args.benchmark_list = _benchmarks(args.benchmarks)
    preset = _preset(args)
    jobs, table_dir = plan_jobs(args, preset)
    print(f"[eval] {len(jobs)} model(s)/checkpoint(s) x {len(args.benchmark_list)} benchmark(s), preset "
          f"{preset.name} ({preset.key()})")
    rows, errors = evaluate_jobs(jobs, args.benchmark_list, preset, use_ray=not args.no_ray,
                                 address=args.address, cpus_per_job=args.cpus_per_job,
                                 gpus_per_job=args.gpus_per_job, backend=args.backend,
                                 batch_size=args.batch_size, data_root=args.data_root, seed=args.seed,
                                 vllm=vllm)
    rows += group_average(rows, args.benchmark_list)
    if rows:
        path = merge_table(table_dir, rows)
        _print_summary(rows, preset)
        print(f"\n[eval] table: {path} (+ .csv); lm-eval results and samples beside each checkpoint")
    for e in errors:
        print(f"[eval] error: {e}")
    return 1 if errors else 0


def add_eval_parser(subparsers) -> None:
    e = subparsers.add_parser(
        "eval", help="evaluate models or a sweep's checkpoints on math benchmarks through lm-eval",
        description="Evaluate models (specs or HF folders) or every checkpoint of an experiment. Results that "
                    "already exist are kept, so rerunning after an interruption finishes the rest.")
    e.add_argument("models", nargs="*", metavar="MODEL_OR_CHECKPOINT")
    e.add_argument("--experiment", default=None, help="a sweep's folder (or one training run's run_dir)")
    e.add_argument("--which", default="last", choices=["all", "last", "best"],
                   help="which checkpoints of each run (best: by --select-metric at checkpoint steps)")
    e.add_argument("--select-metric", default="val/accuracy", help="validation metric for --which best")
    e.add_argument("--benchmarks", default="all", help=f"comma list or 'all' ({', '.join(BENCHMARKS)})")
    e.add_argument("--preset", default="greedy", help=f"one of {', '.join(PRESETS)}")
    e.add_argument("--n", type=int, default=None, help="samples per problem (overrides the preset)")
    e.add_argument("--k", default=None, help="comma list of k for pass@k / maj@k")
    e.add_argument("--temperature", type=float, default=None)
    e.add_argument("--top-p", type=float, default=None)
    e.add_argument("--max-tokens", type=int, default=None)
    e.add_argument("--limit", type=int, default=None, help="problems per benchmark")
    e.add_argument("--template", default="auto",
                   help="prompt template (auto: the training run's, else chat for chat models, else qwen-boxed)")
    e.add_argument("--backend", default="auto", choices=["auto", "hf", "vllm", "sampler"],
                   help="auto: vllm on a GPU when installed, else hf; sampler: the training sampler (fast on CPU)")
    e.add_argument("--batch-size", default=None)
    v = e.add_argument_group("vllm backend (the training config's rollout.vllm keys)")
    v.add_argument("--gpu-memory-utilization", type=float, default=None,
                   help="share of GPU memory vLLM takes (default 0.85: evaluation has the GPU to itself)")
    v.add_argument("--tensor-parallel-size", type=int, default=1)
    v.add_argument("--max-model-len", type=int, default=None, help="default: the model's own context")
    v.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs (faster start, slower decode)")
    e.add_argument("--data-root", default=None, help="benchmark files (default: $VERL_BENCH_DATA)")
    e.add_argument("--output", default=None, help=f"where results of non-checkpoint models go (default "
                                                  f"{DEFAULT_OUTPUT}) and the table (default: the experiment)")
    e.add_argument("--address", default=None, help="Ray cluster (default: a local one)")
    e.add_argument("--cpus-per-job", type=float, default=None)
    e.add_argument("--gpus-per-job", type=float, default=None)
    e.add_argument("--no-ray", action="store_true", help="evaluate one model after another in this process")
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(fn=cmd_eval)
