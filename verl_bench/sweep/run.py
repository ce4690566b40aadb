"""Running a sweep: one Tune trial per sampled config (in-process, or driving Ray Train workers), Optuna /
random / grid search, ASHA or PBT, resume, a progress line, the CLI."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path

from verl_bench.config import ConfigError, TrainConfig, _merge, from_dict
from verl_bench.sweep.report import Carry, clean
from verl_bench.sweep.spec import SweepSpec, _flat, _nest, check_resources, load_sweep
from verl_bench.sysutil import file_lock, release_memory, reset_peak_memory

# Tune gives a function trial's thread 2 s to stop before it reuses the actor for the next trial (or PBT
# restarts it); a step plus its checkpoint save on a busy node takes longer, and the reuse then fails with
# "Trainable runner reuse requires reset_config()". Ray workers inherit this from the driver's environment.
os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "60")

# What a trial process that only drives Ray Train workers reserves when it asks for no CPU (resources.cpu 0):
# Tune cannot schedule an empty request, and memory is what such a process does use.
DRIVER_MEMORY = 256 * 2**20
# per-cell lock files of a grid of cells, inside the Tune experiment folder (see train_cell)
CELL_LOCKS = ".cell_locks"


def _trial(config: dict, sweep: dict) -> None:
    """One Tune trial: train the sampled config and report every step to Tune.

    ``ray.num_workers`` 1: ``train`` runs in this process. More: this process fits a Ray Train TorchTrainer
    that runs the same ``train`` on the workers (``verl_bench.distributed``), which report through
    ``TuneReportCallback``. Nothing here outlives the trial: with reused actors the next trial starts clean.
    """
    from ray import tune

    sampled = _flat(config)
    if "cells" in sweep:  # a grid of named cells (a study: model x arm x seed): each cell is a whole config
        cell = "/".join(str(sampled[d]) for d in sweep["cell_dims"])
        cfg = from_dict(TrainConfig, sweep["cells"][cell], source=f"grid cell {cell}")
    else:
        cfg = from_dict(TrainConfig, _merge(sweep["base"], _nest(sampled)), source=f"trial config {sampled}")
    # the trial's folder in the sweep's storage (get_trial_dir() is a per-Ray-session staging copy that is
    # only synced at the end, so a resumed trial would not see its own run there)
    experiment = Path(sweep["experiment_path"])
    trial_dir = experiment / Path(tune.get_context().get_trial_dir()).name
    reset_peak_memory()  # the memory/peak_* this trial reports: its own peak, not the reused process's
    try:
        if "cells" not in sweep:
            _train(cfg, trial_dir, sweep)
            return
        train_cell(experiment, cell, {d: sampled[d] for d in sweep["cell_dims"]}, cfg.steps, trial_dir,
                   lambda home: _train(cfg, home, sweep))
    finally:
        # a reused trial actor keeps its process: what this trial held (model, optimizer, reference model,
        # caches, glibc's and CUDA's pools) goes back to the system before the next trial starts
        release_memory()


def train_cell(experiment: Path, cell: str, dims: dict, steps: int, trial_dir: Path, train_in) -> None:
    """Train one grid cell in its home: the trial folder already holding its run (see cell_home), else
    ``trial_dir``. A restored grid runs a cell's old trial and Tune's regenerated one, maybe at the same time:
    the cell's lock lets one of them train it; the other then finds that run (finished: only reported).
    """
    with file_lock(experiment / CELL_LOCKS / (cell.replace("/", "__") + ".lock"),
                   on_wait=lambda: print(f"[sweep] cell {cell}: another trial is training it; waiting", flush=True)):
        train_in(cell_home(experiment, dims, steps) or trial_dir)


def _train(cfg: TrainConfig, trial_dir: Path, sweep: dict) -> None:
    if cfg.ray.num_workers > 1:
        _fit_train_run(cfg, trial_dir, sweep)
    else:
        _train_in_process(cfg, trial_dir, sweep)


def _where_it_runs() -> dict:
    import socket

    import ray

    # a multi-node sweep spreads trials over the cluster's nodes; the pid shows which trials shared a process
    return {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname(),
            "pid": os.getpid()}


def _fit_train_run(cfg: TrainConfig, trial_dir: Path, sweep: dict) -> None:
    """Fit a TorchTrainer over ``cfg.ray.num_workers`` workers; its results reach Tune via TuneReportCallback.

    The Train run's (storage, name) is fixed per trial: when Tune retries the trial after a failure, or
    ``--resume`` restores it, fitting it again resumes from the run's newest checkpoint. Tune gets each
    checkpoint's path as the metric ``checkpoint_path`` (Train keeps the checkpoints, Tune gets none).
    """
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from verl_bench.distributed import train_with_ray

    cfg = dataclasses.replace(cfg, run_dir=str(trial_dir / "run"))
    train_with_ray(cfg, storage_path=str(trial_dir / "train"), name=f"train-{tune.get_context().get_trial_id()}",
                   callbacks=[TuneReportCallback()], report_keys=sweep["metrics"])


def _train_in_process(cfg: TrainConfig, trial_dir: Path, sweep: dict) -> None:
    """Train in this process; each report carries the step's HF checkpoint (unless the payload's
    ``tune_checkpoints`` is False: a study's trials resume from their own run folder instead).

    Resumes from ``ray.tune.get_checkpoint()``: after a failure or ``--resume`` (this trial's own) and when
    PBT restarts the trial from another trial's checkpoint with a mutated config. Without one, ``train``
    resumes from the newest checkpoint in the trial's run folder; a run that is already complete there is
    not trained again (its last row is reported), so a restored experiment never redoes a finished trial.
    """
    from ray import tune

    from verl_bench.train import latest_checkpoint, train

    if cfg.threads is None:
        cfg = dataclasses.replace(cfg, threads=max(1, int(sweep["cpu"])))
    cfg = dataclasses.replace(cfg, run_dir=str(trial_dir / "run"))
    checkpoint = tune.get_checkpoint()
    resume_from = Path(checkpoint.path) if checkpoint is not None else None
    own = latest_checkpoint(cfg.run_dir)  # what train() resumes from when Tune gives no checkpoint
    carry = Carry(sweep["metrics"], extra=_where_it_runs())
    carry.extra["restored_from"] = str(resume_from or own or "")
    if resume_from is None:
        if own is None:
            # a restarted trial that never checkpointed starts over: drop the rows of its first attempt
            Path(cfg.run_dir, "metrics.jsonl").unlink(missing_ok=True)
        elif finished_run(cfg.run_dir, cfg.steps):
            rows = _metric_rows(Path(cfg.run_dir) / "metrics.jsonl")
            for row in rows:
                carry.row.update(row)
            out = carry({})
            if out is not None:
                tune.report(clean({**out, "skipped": True}))
            return
    keep = sweep.get("tune_checkpoints", True)

    def report(step_metrics: dict, ckpt_dir) -> None:
        out = carry(step_metrics)
        if out is None:
            return  # e.g. step 0 (validation only) before the first reward: merged into the next report
        ckpt = tune.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir is not None and keep else None
        tune.report(clean(out), checkpoint=ckpt)

    train(cfg, report=report, resume_from=resume_from)


def _metric_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def finished_run(run_dir: str | Path, steps: int) -> bool:
    """A training run that is complete on disk: its newest checkpoint and its last metrics row are ``steps``."""
    from verl_bench.train import latest_checkpoint

    ckpt = latest_checkpoint(run_dir)
    rows = _metric_rows(Path(run_dir) / "metrics.jsonl")
    return ckpt is not None and ckpt.name == f"step_{steps:06d}" and bool(rows) and rows[-1].get("step") == steps


def cell_home(experiment: Path, dims: dict, steps: int) -> Path | None:
    """The trial folder already holding the training run of this grid cell, if any: a finished run first,
    else the one with the newest checkpoint. Tune regenerates a restored grid's trials (new folders for
    cells an earlier driver had started or finished), so a cell's work is found by its dims, not its folder.
    """
    homes = []
    for params in experiment.glob("*/params.json"):
        try:
            got = json.loads(params.read_text())
        except (OSError, ValueError):
            continue
        run = params.parent / "run"
        if run.is_dir() and all(str(got.get(k)) == str(v) for k, v in dims.items()):
            from verl_bench.train import latest_checkpoint

            ckpt = latest_checkpoint(run)
            homes.append((finished_run(run, steps), ckpt.name if ckpt else "", params.parent.name, params.parent))
    return max(homes)[3] if homes else None


# ------------------------------------------------------------------------------------------ the sweep
def _domain(d, spec: SweepSpec):
    """A Tune sampler for one dimension (a plain list for PBT's choice mutations: it shifts along it)."""
    from ray import tune

    if d.kind == "uniform":
        return tune.uniform(*d.args)
    if d.kind == "loguniform":
        return tune.loguniform(*d.args)
    if d.kind == "int":
        return tune.randint(d.args[0], d.args[1] + 1)  # Tune's upper bound is exclusive
    if d.kind == "grid" or (d.kind == "choice" and spec.algo == "grid"):
        return tune.grid_search(list(d.args))
    return tune.choice(list(d.args))


def _param_space(spec: SweepSpec) -> dict:
    flat = {d.key: _domain(d, spec) for d in spec.space}
    for d in spec.mutations:  # PBT mutates only keys present in every trial's config: sample the rest too
        flat.setdefault(d.key, _domain(d, spec))
    return _nest(flat)


def _search_alg(spec: SweepSpec):
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    if spec.algo == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        points = [{k.replace(".", "/"): v for k, v in p.items()} for p in spec.points_to_evaluate]
        # a multi-objective search names its metrics here: Tune's TuneConfig takes one metric only
        objectives = {"metric": spec.metrics, "mode": spec.modes} if len(spec.metrics) > 1 else {}
        return ConcurrencyLimiter(OptunaSearch(points_to_evaluate=points or None, seed=spec.search_seed,
                                               **objectives),
                                  max_concurrent=spec.max_concurrent)
    points = [_nest(p) for p in spec.points_to_evaluate] or None
    return BasicVariantGenerator(points_to_evaluate=points, max_concurrent=spec.max_concurrent,
                                 random_state=spec.search_seed)


def _scheduler(spec: SweepSpec):
    """ASHA or PBT on the training step. With several metrics ASHA stops on the first one (it ranks trials by
    a single number); with one metric, the schedulers take it from TuneConfig."""
    first = {"metric": spec.metrics[0], "mode": spec.modes[0]} if len(spec.metrics) > 1 else {}
    if spec.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        return ASHAScheduler(time_attr="step", max_t=spec.max_t, grace_period=spec.grace_period, **first)
    if spec.scheduler == "pbt":
        from ray.tune.schedulers import PopulationBasedTraining

        mutations = {d.key: list(d.args) if d.kind == "choice" else _domain(d, spec) for d in spec.mutations}
        bounds = [(d.key, d.kind, *d.args) for d in spec.mutations if d.kind in ("uniform", "loguniform", "int")]
        return PopulationBasedTraining(
            time_attr="step", perturbation_interval=spec.perturbation_interval,
            hyperparam_mutations=_nest(mutations), quantile_fraction=spec.quantile_fraction,
            resample_probability=spec.resample_probability,
            custom_explore_fn=functools.partial(_clamp_to_bounds, bounds=bounds), **first)
    return None


def _clamp_to_bounds(config: dict, bounds: list[tuple]) -> dict:
    """PBT perturbs a number by x0.8 or x1.2, which can leave its declared range (and a valid config, e.g.
    shaping.alpha > 1): pull each mutated value back inside its bounds."""
    for key, kind, lo, hi in bounds:
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        v = min(max(node[leaf], lo), hi)
        node[leaf] = round(v) if kind == "int" else float(v)
    return config


def _trial_resources(spec: SweepSpec) -> dict:
    """What Tune reserves for a trial's own process. Train workers reserve theirs when their run starts."""
    if spec.workers > 1 and spec.cpu == 0:
        return {"cpu": 0, "gpu": 0, "memory": DRIVER_MEMORY}
    return {"cpu": spec.cpu, "gpu": spec.gpu}


def experiment_path(spec: SweepSpec, storage: str | None = None, name: str | None = None) -> Path:
    root = storage or spec.storage or "runs/sweeps"
    return Path(root).resolve() / (name or spec.name)


def run_sweep(space_path: str | Path, *, resume: bool = False, storage: str | None = None,
              name: str | None = None, address: str | None = None, progress_every_s: float = 30.0):
    """Validate ``space_path``, start (or join) Ray and run the sweep. Returns the Tune ResultGrid.

    ``resume=True`` restores the experiment at ``storage/name`` (finished trials are kept, unfinished and
    errored ones continue from their last checkpoint). Without ``address`` a local Ray is started. A status
    line (trial counts, best value so far) is printed when trials start or end and at most every
    ``progress_every_s`` seconds in between.
    """
    spec = load_sweep(space_path)
    check_resources(spec, address)
    from verl_bench.plan_cli import check_sweep_plan

    check_sweep_plan(spec)  # each trial's GPU memory plan (verl_bench/plan.py); a no-op without CUDA
    path = experiment_path(spec, storage, name)
    if resume and not path.is_dir():
        raise ConfigError(f"--resume: no sweep at {path}")
    _check_inputs(spec, path, storage)
    payload = {"base": spec.base, "metrics": spec.metrics, "cpu": spec.cpu, "experiment_path": str(path)}
    return _fit(spec, path, payload, lambda: _param_space(spec), resume=resume, address=address,
                progress_every_s=progress_every_s, search=lambda: (_search_alg(spec), _scheduler(spec)))


def _check_inputs(spec: SweepSpec, path: Path, storage: str | None) -> None:
    """Refused before Ray starts: a model spec no trial could load (the base's, and each swept value) and
    a storage folder that cannot be written. Builds and downloads nothing."""
    from verl_bench.errors import UserError
    from verl_bench.models import check_model_spec
    from verl_bench.sysutil import require_writable

    models = [(spec.where("base"), spec.base["model"])]
    models += [(spec.where(f"space.{d.key}"), v) for d in spec.space if d.key == "model" for v in d.args]
    for where, model in models:
        try:
            check_model_spec(model)
        except (UserError, OSError) as e:
            raise ConfigError(f"{where}: model: {e}") from None
    require_writable(path, "--storage" if storage else spec.where("storage"))


def run_cells(spec: SweepSpec, cells: dict[str, dict], grid: dict[str, list], path: Path, *, resume: bool = False,
              address: str | None = None, progress_every_s: float = 30.0):
    """One Tune trial per cell of a full grid, e.g. model x arm x seed for a study. Returns the ResultGrid.

    ``grid`` maps each dimension to its values; ``cells`` maps every combination, joined by "/" in the
    grid's order (``"smollm2/verl/0"``), to a whole TrainConfig dict. Tune's grid search creates the trials (their
    ``params.json`` holds the dims), ``spec`` gives metric, resources, concurrency and failures. Trials keep
    no Tune checkpoints: each resumes from, or skips when complete, its own run in ``<trial>/run``. With
    ``resume`` the experiment at ``path`` is restored when Tune saved it, else started again (the driver
    died before Tune wrote its state: no trial had finished).
    """
    import itertools

    from ray import tune

    missing = ["/".join(map(str, combo)) for combo in itertools.product(*grid.values())
               if "/".join(map(str, combo)) not in cells]
    if missing:
        raise ValueError(f"run_cells: no config for grid cell(s) {missing[:3]}")
    payload = {"cells": cells, "cell_dims": list(grid), "metrics": spec.metrics, "cpu": spec.cpu,
               "experiment_path": str(path), "tune_checkpoints": False}
    restorable = resume and path.is_dir() and tune.Tuner.can_restore(str(path))
    return _fit(spec, path, payload, lambda: {d: tune.grid_search(list(v)) for d, v in grid.items()},
                resume=restorable, address=address, progress_every_s=progress_every_s,
                search=lambda: (_search_alg(spec), None))


def _fit(spec: SweepSpec, path: Path, payload: dict, param_space, *, resume: bool, address: str | None,
         progress_every_s: float, search):
    """Start (or join) Ray and fit a new Tuner, or restore the one at ``path`` (``resume``)."""
    from ray import tune

    from verl_bench.distributed import init_ray
    from verl_bench.sweep.loggers import result_loggers
    from verl_bench.sweep.progress import SweepProgress

    init_ray(address, dashboard=spec.workers > 1)  # see init_ray: Train-backed trials need the state API
    trainable = tune.with_resources(tune.with_parameters(_trial, sweep=payload), _trial_resources(spec))
    if resume:
        if not tune.Tuner.can_restore(str(path)):
            raise ConfigError(f"--resume: {path} holds no restorable Tune experiment")
        # a restored grid of cells needs its param space again (Ray 2.60 does not keep it: the generator would
        # make a trial with no config); it regenerates every cell, and cell_home sends each to its own run.
        # A searched sweep's searcher (Optuna) restores its own state and is given nothing new.
        space = {"param_space": param_space()} if "cells" in payload else {}
        tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True, **space)
        return tuner.fit()

    single = len(spec.metrics) == 1
    note = "" if single else f" (first of {len(spec.metrics)} metrics)"
    search_alg, scheduler = search()
    tuner = tune.Tuner(
        trainable,
        param_space=param_space(),
        tune_config=tune.TuneConfig(
            metric=spec.metric if single else None, mode=spec.mode if single else None,
            num_samples=spec.num_samples, search_alg=search_alg, scheduler=scheduler,
            # a plain trial's process is reused by the next trial (a few seconds saved per trial; the trial
            # keeps no state in module globals). A Train-backed trial's process only drives its workers.
            reuse_actors=spec.workers == 1,
        ),
        run_config=tune.RunConfig(
            name=path.name, storage_path=str(path.parent),
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.base["keep_checkpoints"] or None),
            callbacks=[SweepProgress(spec.metrics[0], spec.modes[0], progress_every_s, note), *result_loggers()],
            verbose=0,  # SweepProgress prints the status; Tune's tables would repeat it every few seconds
        ),
    )
    return tuner.fit()


def pareto_front(results: list, metrics: list[str], modes: list[str]) -> list:
    """The results no other result beats on every metric (ties allowed), for multi-objective sweeps."""
    sign = [1 if m == "max" else -1 for m in modes]
    scored = [(r, [s * r.metrics[k] for s, k in zip(sign, metrics)]) for r in results
              if r.metrics and all(isinstance(r.metrics.get(k), (int, float)) for k in metrics)]

    def dominated(a, b):  # b is at least as good everywhere and better somewhere
        return all(y >= x for x, y in zip(a, b)) and any(y > x for x, y in zip(a, b))

    return [r for r, v in scored if not any(dominated(v, w) for _, w in scored)]


# ------------------------------------------------------------------------------------------ CLI
def _describe(spec: SweepSpec) -> str:
    """The plan, as --dry-run prints it."""
    objectives = ", ".join(f"{m} ({md})" for m, md in zip(spec.metrics, spec.modes))
    sched = spec.scheduler
    if sched == "asha":
        sched += f" on {spec.metrics[0]}" + (" (ASHA stops on the first metric)" if len(spec.metrics) > 1 else "")
    elif sched == "pbt":
        sched += (f" every {spec.perturbation_interval} step(s), mutating "
                  f"{[d.key for d in spec.mutations]}, population {spec.population}")
    where = (f"{spec.workers} Ray Train workers per trial ({spec.base['ray']['cpus_per_worker']} CPU each"
             f"{', GPU' if spec.base['ray']['use_gpu'] else ''}) + {spec.cpu:g} CPU for the trial process"
             if spec.workers > 1 else f"{spec.cpu:g} CPU, {spec.gpu:g} GPU per trial (actors reused)")
    return (f"{len(spec.space)} dimension(s), algo {spec.algo}, {spec.num_samples} sample(s), "
            f"scheduler {sched}, metric {objectives}; {where}; "
            f"first points: {spec.points_to_evaluate}")


def _cmd_sweep(args) -> int:
    spec = load_sweep(args.space)
    check_resources(spec, args.address)
    from verl_bench.plan_cli import check_sweep_plan

    check_sweep_plan(spec)  # also for --dry-run
    if args.dry_run:
        print(f"{args.space}: ok -- {_describe(spec)}; results in {experiment_path(spec, args.storage, args.name)}")
        return 0
    grid = run_sweep(args.space, resume=args.resume, storage=args.storage, name=args.name, address=args.address)
    errors = [r for r in grid if r.error]
    try:
        best = grid.get_best_result(metric=spec.metrics[0], mode=spec.modes[0])
        shown = {k: best.metrics.get(k) for k in (*spec.metrics, "step")}
        print(f"best: {_flat(best.config)} -> {shown} ({best.path})")
    except RuntimeError:
        print("no trial reported the metric")
    if len(spec.metrics) > 1:
        for r in pareto_front(list(grid), spec.metrics, spec.modes):
            print(f"pareto: {_flat(r.config)} -> {({k: r.metrics[k] for k in spec.metrics})}")
    print(f"{len(grid)} trial(s), {len(errors)} failed: {grid.experiment_path}")
    return 1 if errors else 0


def add_sweep_parser(subparsers) -> None:
    """Register ``verl-bench sweep`` on an argparse subparsers object."""
    s = subparsers.add_parser("sweep", help="a Ray Tune hyper-parameter sweep from a search-space YAML")
    s.add_argument("space", help="sweep file, e.g. search_spaces/demo.yaml")
    s.add_argument("--resume", action="store_true", help="continue the sweep stored at storage/name")
    s.add_argument("--storage", default=None, help="Tune storage folder (default: the file's, or runs/sweeps)")
    s.add_argument("--name", default=None, help="run name (default: the file's, or its stem)")
    s.add_argument("--address", default=None, help="an existing Ray cluster (default: start a local Ray)")
    s.add_argument("--dry-run", action="store_true", help="validate the file and print the plan")
    s.set_defaults(fn=_cmd_sweep)
