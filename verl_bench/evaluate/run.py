"""Evaluating models and checkpoints: lm-eval runs, their files beside each checkpoint, one tidy table.

One model (a spec or an HF folder) is evaluated benchmark by benchmark; each benchmark's lm-eval results
JSON (written last) marks it done, so a rerun skips it and a killed run loses at most the benchmark it was
in. Many checkpoints (every checkpoint of a sweep) run as Ray tasks sized to the cluster's resources.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from verl_bench.evaluate.presets import EvalPreset
from verl_bench.evaluate.tasks import GRADES, GROUP, build_task, check_benchmarks, task_name
from verl_bench.sweep.spec import flatten as _flat

if TYPE_CHECKING:
    from verl_bench.rollout_vllm import VLLMOptions

EVAL_DIR = "eval"  # beside a checkpoint's weights: <checkpoint>/eval/<template>/<protocol>/
TABLE = "eval_table"  # <experiment or output>/eval_table.{parquet,csv}


@dataclass
class EvalJob:
    model: str  # a model spec or an HF folder
    out_dir: Path  # where lm-eval's files go
    template: str
    labels: dict = field(default_factory=dict)  # trial, run, step, config: carried into the table


# ---------------------------------------------------------------------------------------------- templates
def training_config(folder: Path) -> dict | None:
    """The verl-bench training config of a checkpoint folder (run_dir/checkpoints/step_N), if any."""
    import yaml

    for parent in list(folder.parents)[:2]:
        f = parent / "config.yaml"
        if f.is_file():
            return yaml.safe_load(f.read_text()) or {}
    return None


def pick_template(folder: Path, template: str = "auto") -> str:
    """``auto``: the template a verl-bench checkpoint was trained with; else the model's chat template if it
    has one (instruct models); else qwen-boxed (the paper's template for base models)."""
    if template != "auto":
        return template
    cfg = training_config(folder)
    if cfg and cfg.get("data", {}).get("template"):
        return cfg["data"]["template"]
    tok_cfg = folder / "tokenizer_config.json"
    if (folder / "chat_template.jinja").is_file() or (
            tok_cfg.is_file() and json.loads(tok_cfg.read_text()).get("chat_template")):
        return "chat"
    return "qwen-boxed"


# ---------------------------------------------------------------------------------------------- backends
def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:  # noqa: BLE001 - vllm fails in many ways on machines it does not support
        return False
    return True


def make_lm(folder: Path, backend: str = "auto", batch_size: int | str | None = None, seed: int = 0,
            vllm: VLLMOptions | None = None):
    """lm-eval's model object: ``hf`` (bf16 on GPU, float32 on CPU), ``vllm`` (one replica: lm-eval's
    data-parallel vLLM calls ray.shutdown(), which would end the Ray task running it; memory, tensor
    parallelism, context and eager mode from ``vllm``, the training config's ``rollout.vllm`` keys) or
    ``sampler`` (the training loop's sampler, generation only: several times faster than ``hf`` on a CPU,
    see sampler_lm)."""
    import torch

    cuda = torch.cuda.is_available()
    if backend == "auto":
        backend = "vllm" if cuda and vllm_available() else "hf"
    if backend == "vllm":
        if not vllm_available():
            raise RuntimeError("--backend vllm: vllm is not importable here (pip install verl-bench[vllm])")
        from lm_eval.models.vllm_causallms import VLLM

        from verl_bench.rollout_vllm import EVAL_GPU_MEMORY_UTILIZATION, VLLMOptions

        o = vllm or VLLMOptions(gpu_memory_utilization=EVAL_GPU_MEMORY_UTILIZATION)
        return VLLM(pretrained=str(folder), dtype="bfloat16" if cuda else "float32", data_parallel_size=1,
                    tensor_parallel_size=o.tensor_parallel_size, max_model_len=o.max_model_len, seed=seed,
                    batch_size=batch_size or "auto", gpu_memory_utilization=o.gpu_memory_utilization,
                    enforce_eager=o.enforce_eager)
    if backend == "sampler":  # the training loop's sampler: shared prefill, finished samples drop out (CPU)
        from verl_bench.evaluate.sampler_lm import SamplerLM

        return SamplerLM(folder, device="cuda" if cuda else "cpu")
    if backend != "hf":
        raise ValueError(f"unknown backend {backend!r}; known: auto, hf, vllm, sampler")
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(folder), dtype="bfloat16" if cuda else "float32",
                device="cuda" if cuda else "cpu", batch_size=batch_size or ("auto" if cuda else 16),
                max_length=None)


# ---------------------------------------------------------------------------------------------- one model
def results_file(out_dir: Path, benchmark: str) -> Path | None:
    """The lm-eval results JSON of ``benchmark`` in ``out_dir`` if that benchmark is complete: the results
    file (written first, as lm-eval's own CLI does) AND its samples file with one line per problem."""
    name = task_name(benchmark)
    for res in sorted(Path(out_dir).glob(f"results_{name}_*.json"), reverse=True):
        stamp = res.stem[len(f"results_{name}_"):]
        samples = res.with_name(f"samples_{name}_{stamp}.jsonl")
        try:
            want = json.loads(res.read_text())["n-samples"][name]["effective"]
            with open(samples, "rb") as f:
                if sum(1 for line in f if line.strip()) == want:
                    return res
        except (OSError, ValueError, KeyError):
            pass
    return None


def samples_file(out_dir: Path, benchmark: str) -> Path | None:
    """lm-eval's per-sample JSONL of ``benchmark`` in ``out_dir`` when that benchmark is complete (one line
    per problem, each with its n responses and, from task version 2, their grades)."""
    res = results_file(out_dir, benchmark)
    if res is None:
        return None
    name = task_name(benchmark)
    return res.with_name(f"samples_{name}_{res.stem[len(f'results_{name}_'):]}.jsonl")


def empty_task_manager():
    """A TaskManager without lm-eval's built-in index: our tasks are objects, and indexing the ~26k built-in
    task YAMLs (what simple_evaluate does by default) costs 7-50 s per call on a small CPU."""
    from lm_eval.tasks import TaskManager

    global _TASK_MANAGER
    if _TASK_MANAGER is None:
        _TASK_MANAGER = TaskManager(include_defaults=False)
    return _TASK_MANAGER


_TASK_MANAGER = None


def _run_one(lm, benchmark: str, preset: EvalPreset, template: str, tokenizer, out_dir: Path, data_root,
             seed: int) -> Path:
    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker

    out_dir.mkdir(parents=True, exist_ok=True)
    name = task_name(benchmark)
    for stale in [*out_dir.glob(f"samples_{name}_*.jsonl"), *out_dir.glob(f"results_{name}_*.json")]:
        stale.unlink()  # left by a run killed before this benchmark was complete
    task = build_task(benchmark, preset, template, tokenizer, data_root)
    tracker = EvaluationTracker(output_path=str(out_dir / f"results_{name}.json"))
    res = simple_evaluate(model=lm, tasks=[task], task_manager=empty_task_manager(), log_samples=True,
                          evaluation_tracker=tracker,
                          bootstrap_iters=1000, random_seed=seed, numpy_random_seed=seed,
                          torch_random_seed=seed, fewshot_random_seed=seed)
    samples = res.pop("samples")
    tracker.save_results_aggregated(results=res, samples=samples)  # sets the file stamp both files share
    tracker.save_results_samples(task_name=name, samples=samples[name])
    found = results_file(out_dir, benchmark)
    if found is None:
        raise RuntimeError(f"lm-eval wrote no results file for {name} in {out_dir}")
    return found


def evaluate_model(job: EvalJob, benchmarks, preset: EvalPreset, *, backend: str = "auto",
                   batch_size=None, data_root=None, seed: int = 0, log=print,
                   vllm: VLLMOptions | None = None) -> list[dict]:
    """Evaluate one model on ``benchmarks`` (skipping those already in ``job.out_dir``); tidy rows."""
    from verl_bench.models import load_tokenizer, resolve_model

    benchmarks = check_benchmarks(benchmarks)
    out_dir = Path(job.out_dir)
    pending = [b for b in benchmarks if results_file(out_dir, b) is None]
    if pending:
        folder = resolve_model(job.model)
        tokenizer = load_tokenizer(folder)
        lm = make_lm(folder, backend, batch_size, seed, vllm)
        for i, b in enumerate(pending, 1):
            t0 = time.time()
            path = _run_one(lm, b, preset, job.template, tokenizer, out_dir, data_root, seed)
            head = read_results(path)[0]
            log(f"[eval] {job.model} {b} ({i}/{len(pending)}): {head['metric']}={head['value']:.4f} "
                f"on {head['problems']} problems in {time.time() - t0:.0f} s -> {path}")
        del lm
    skipped = len(benchmarks) - len(pending)
    if skipped:
        log(f"[eval] {job.model}: {skipped} benchmark(s) already evaluated in {out_dir}, kept")
    rows = []
    for b in benchmarks:
        rows += [{**job.labels, "model": job.model, "template": job.template, **r}
                 for r in read_results(results_file(out_dir, b))]
    return rows


def read_results(path: Path) -> list[dict]:
    """Tidy rows (one per metric) from one lm-eval results JSON written by ``_run_one``."""
    res = json.loads(Path(path).read_text())
    rows = []
    for name, vals in res["results"].items():
        meta = res["configs"][name]["metadata"]
        for key, value in vals.items():
            if "," not in key or "_stderr" in key or not isinstance(value, (int, float)):
                continue
            metric, flt = key.split(",", 1)
            if metric == GRADES:  # per-sample grades: the samples file holds them, avg@n their mean
                continue
            se = vals.get(f"{metric}_stderr,{flt}")
            rows.append({"benchmark": meta["benchmark"], "metric": metric, "value": float(value),
                         "stderr": float(se) if isinstance(se, (int, float)) else None,
                         "problems": int(vals.get("sample_len", meta.get("problems", 0))),
                         "preset": meta["preset"], "protocol": meta["protocol"],
                         "task_version": meta["version"], "results_file": str(path)})
    order = {m: i for i, m in enumerate(_metric_order(rows))}
    return sorted(rows, key=lambda r: order[r["metric"]])


def _metric_order(rows):
    ms = list(dict.fromkeys(r["metric"] for r in rows))
    return sorted(ms, key=lambda m: (not m.startswith("pass@"), not m.startswith("maj@"),
                                     int(m.split("@")[1]) if m.split("@")[1].isdigit() else 0))


def group_average(rows: list[dict], benchmarks) -> list[dict]:
    """The ``verl_math`` rows: the unweighted mean over benchmarks of each metric, per model/checkpoint
    (lm-eval's group aggregation with weight_by_size=False), with the pooled standard error."""
    import pandas as pd

    if not rows:
        return []
    df = pd.DataFrame(rows)
    keys = [c for c in df.columns if c not in ("benchmark", "value", "stderr", "problems", "results_file")]
    out = []
    for gkey, g in df[df.benchmark.isin(list(benchmarks))].groupby(keys, dropna=False, sort=False):
        if g.benchmark.nunique() != len(set(benchmarks)):
            continue  # an average over a subset would not be comparable
        se = g.stderr.astype(float)
        out.append({**dict(zip(keys, gkey)), "benchmark": GROUP, "value": float(g.value.mean()),
                    "stderr": float(math.sqrt((se ** 2).sum()) / len(g)) if se.notna().all() else None,
                    "problems": int(g.problems.sum()), "results_file": None})
    return out


def write_table(rows: list[dict], folder: Path) -> Path:
    """``eval_table.parquet`` (+ .csv) in ``folder``: one row per model/checkpoint x benchmark x metric."""
    import pandas as pd

    df = pd.DataFrame(rows)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{TABLE}.parquet"
    df.to_parquet(path, index=False)
    df.to_csv(folder / f"{TABLE}.csv", index=False)
    return path


# ---------------------------------------------------------------------------------------------- experiments
def _step(ckpt: Path) -> int:
    return int(ckpt.name.split("_")[-1])


def find_checkpoints(experiment: Path, which: str = "last", metric: str = "val/accuracy") -> list[dict]:
    """Checkpoints of a sweep (``<experiment>/<trial>/run*/checkpoints/step_N``) or of one training run
    (``<run_dir>/checkpoints/step_N``): ``all``, the ``last`` of each run, or the ``best`` of each run by
    the validation ``metric`` its metrics.jsonl recorded at checkpoint steps."""
    if which not in ("all", "last", "best"):
        raise ValueError(f"--which must be all, last or best, got {which!r}")
    experiment = Path(experiment)
    if not experiment.is_dir():
        raise FileNotFoundError(f"--experiment {experiment}: no such folder")
    runs = [experiment] if (experiment / "checkpoints").is_dir() else sorted(
        p.parent for p in experiment.glob("*/*/checkpoints") if p.is_dir())
    found = []
    for run in runs:
        ckpts = sorted((c for c in (run / "checkpoints").glob("step_*") if (c / "config.json").is_file()),
                       key=_step)
        if not ckpts:
            continue
        if which == "last":
            ckpts = ckpts[-1:]
        elif which == "best":
            scores = _validation_scores(run / "metrics.jsonl", metric)
            scored = [c for c in ckpts if _step(c) in scores]
            ckpts = [max(scored, key=lambda c: (scores[_step(c)], _step(c)))] if scored else ckpts[-1:]
        trial = run.parent if run != experiment else None
        params = {}
        if trial is not None and (trial / "params.json").is_file():
            params = {f"config/{k}": v for k, v in _flat(json.loads((trial / "params.json").read_text())).items()}
        for c in ckpts:
            found.append({"checkpoint": str(c), "step": _step(c), "run": run.name,
                          "trial": trial.name if trial is not None else run.name, **params})
    if not found:
        raise FileNotFoundError(f"--experiment {experiment}: no checkpoints (looked for */*/checkpoints/step_N "
                                f"and checkpoints/step_N holding an HF model)")
    return found


def _validation_scores(metrics_file: Path, metric: str) -> dict[int, float]:
    scores = {}
    if metrics_file.is_file():
        for line in metrics_file.read_text().splitlines():
            row = json.loads(line)
            if isinstance(row.get(metric), (int, float)):
                scores[int(row["step"])] = float(row[metric])
    return scores


# ---------------------------------------------------------------------------------------------- many jobs
def _job_worker(job: EvalJob, benchmarks, preset: EvalPreset, kw: dict) -> list[dict]:
    import gc

    try:
        return evaluate_model(job, benchmarks, preset, **kw)
    finally:  # a Ray worker is reused for the next task: hand its memory back
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def evaluate_jobs(jobs: list[EvalJob], benchmarks, preset: EvalPreset, *, use_ray: bool = True,
                  address: str | None = None, cpus_per_job: float | None = None,
                  gpus_per_job: float | None = None, log=print, **kw) -> tuple[list[dict], list[str]]:
    """Run every job; in parallel as Ray tasks when there are several. Returns (rows, errors): one job's
    failure does not lose the others' results (each is on disk as soon as it is done)."""
    rows, errors = [], []
    if not use_ray or len(jobs) <= 1:
        for i, job in enumerate(jobs, 1):
            log(f"[eval] job {i}/{len(jobs)}: {job.model}")
            try:
                rows += _job_worker(job, benchmarks, preset, {**kw, "log": log})
            except Exception as e:  # noqa: BLE001 - reported, the other jobs go on
                errors.append(f"{job.model}: {type(e).__name__}: {e}")
                log(f"[eval] FAILED {errors[-1]}")
        return rows, errors

    import ray

    from verl_bench.distributed import init_ray

    init_ray(address)
    gpus = gpus_per_job if gpus_per_job is not None else (1 if ray.cluster_resources().get("GPU") else 0)
    cpus = cpus_per_job if cpus_per_job is not None else (1 if gpus else min(2, ray.cluster_resources()["CPU"]))
    remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=1)(_job_worker)
    pending = {remote.remote(job, benchmarks, preset, kw): job for job in jobs}
    log(f"[eval] {len(jobs)} job(s) as Ray tasks ({cpus} CPU, {gpus} GPU each)")
    done = 0
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        job = pending.pop(ready[0])
        done += 1
        try:
            rows += ray.get(ready[0])
            log(f"[eval] {done}/{len(jobs)} done: {job.model}")
        except Exception as e:  # noqa: BLE001
            errors.append(f"{job.model}: {type(e).__name__}: {e}")
            log(f"[eval] {done}/{len(jobs)} FAILED: {errors[-1]}")
    return rows, errors

