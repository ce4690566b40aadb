"""Running a sweep: one plain Tune function trial per sampled config, Optuna/ASHA, resume, the CLI."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from verl_bench.config import ConfigError, TrainConfig, _merge, from_dict
from verl_bench.sweep.spec import REPEAT_FILE, SweepSpec, _flat, _nest, check_resources, load_sweep


def _trial(config: dict, sweep: dict) -> None:
    """One Tune trial: train the sampled config (``seed_repeats`` seeds in turn), report every step."""
    import socket

    import ray
    from ray import tune

    from verl_bench.train import latest_checkpoint, train

    # where the trial ran (a multi-node sweep spreads trials over the cluster's nodes)
    placement = {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname()}
    sampled = _flat(config)
    base = sweep["base"]
    metric, repeats = sweep["metric"], sweep["seed_repeats"]
    cfg = from_dict(TrainConfig, _merge(base, _nest(sampled)), source=f"trial config {sampled}")
    ctx = tune.get_context()
    # the trial's folder in the sweep's storage (get_trial_dir() is a per-Ray-session staging copy that is
    # only synced at the end, so a resumed trial would not see its own run there)
    trial_dir = Path(sweep["experiment_path"]) / Path(ctx.get_trial_dir()).name
    if cfg.threads is None:
        cfg = dataclasses.replace(cfg, threads=max(1, int(sweep["cpu"])))

    # where to resume: Tune's checkpoint (after a failure or --resume) names the repeat it belongs to
    repeat, finals, resume_from = 0, [], None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        resume_from = Path(checkpoint.path)
        state_file = resume_from / REPEAT_FILE
        if state_file.is_file():
            st = json.loads(state_file.read_text())
            repeat, finals = st["repeat"], st["finals"]
            if st["repeat"] != st["ckpt_repeat"]:  # the checkpoint ended the previous seed: start the next
                resume_from = None

    carried: dict = {}
    while repeat < repeats:
        run_cfg = dataclasses.replace(cfg, seed=cfg.seed + repeat,
                                      run_dir=str(trial_dir / ("run" if repeats == 1 else f"run_seed{repeat}")))
        latest: dict = {}
        if resume_from is None and latest_checkpoint(run_cfg.run_dir) is None:
            # a restarted trial that never checkpointed starts over: drop the rows of its first attempt
            Path(run_cfg.run_dir, "metrics.jsonl").unlink(missing_ok=True)

        def report(metrics: dict, ckpt_dir, _r=repeat, _latest=latest, _steps=run_cfg.steps) -> None:
            carried.update(metrics)  # every report carries the newest value of every key seen so far
            if metric in metrics:
                _latest["v"] = metrics[metric]
            if metric not in carried:
                return  # e.g. step 0 (validation only) before the first reward: merged into the next report
            out = {**carried, **placement}
            if repeats > 1:
                done = finals + ([_latest["v"]] if "v" in _latest else [])
                out[f"{metric}/seed{_r}"] = _latest.get("v")
                out[metric] = sum(done) / len(done)  # running mean over the seeds so far
                out["repeat"] = _r
            ckpt = None
            if ckpt_dir is not None:
                if repeats > 1:
                    final = metrics["step"] == _steps
                    nxt = {"ckpt_repeat": _r, "repeat": _r + 1 if final else _r,
                           "finals": [*finals, _latest["v"]] if final else finals}
                    (Path(ckpt_dir) / REPEAT_FILE).write_text(json.dumps(nxt))
                ckpt = tune.Checkpoint.from_directory(str(ckpt_dir))
            tune.report(_clean(out), checkpoint=ckpt)

        train(run_cfg, report=report, resume_from=resume_from)
        finals.append(latest.get("v", float("nan")))
        repeat, resume_from = repeat + 1, None


def _clean(m: dict) -> dict:
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in m.items()
            if isinstance(v, (int, float, str, bool)) or v is None}


# ------------------------------------------------------------------------------------------ the sweep
def _param_space(spec: SweepSpec) -> dict:
    from ray import tune

    flat = {}
    for d in spec.space:
        if d.kind == "uniform":
            flat[d.key] = tune.uniform(*d.args)
        elif d.kind == "loguniform":
            flat[d.key] = tune.loguniform(*d.args)
        elif d.kind == "int":
            flat[d.key] = tune.randint(d.args[0], d.args[1] + 1)  # Tune's upper bound is exclusive
        elif d.kind == "grid" or (d.kind == "choice" and spec.algo == "grid"):
            flat[d.key] = tune.grid_search(list(d.args))
        else:
            flat[d.key] = tune.choice(list(d.args))
    return _nest(flat)


def _search_alg(spec: SweepSpec):
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    if spec.algo == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        points = [{k.replace(".", "/"): v for k, v in p.items()} for p in spec.points_to_evaluate]
        return ConcurrencyLimiter(OptunaSearch(points_to_evaluate=points or None, seed=spec.search_seed),
                                  max_concurrent=spec.max_concurrent)
    points = [_nest(p) for p in spec.points_to_evaluate] or None
    return BasicVariantGenerator(points_to_evaluate=points, max_concurrent=spec.max_concurrent,
                                 random_state=spec.search_seed)


def _trainable(spec: SweepSpec, path: Path):
    from ray import tune

    payload = {"base": spec.base, "metric": spec.metric, "seed_repeats": spec.seed_repeats, "cpu": spec.cpu,
               "experiment_path": str(path)}
    fn = tune.with_parameters(_trial, sweep=payload)
    return tune.with_resources(fn, {"cpu": spec.cpu, "gpu": spec.gpu})


def experiment_path(spec: SweepSpec, storage: str | None = None, name: str | None = None) -> Path:
    root = storage or spec.storage or "runs/sweeps"
    return Path(root).resolve() / (name or spec.name)


def run_sweep(space_path: str | Path, *, resume: bool = False, storage: str | None = None,
              name: str | None = None, address: str | None = None):
    """Validate ``space_path``, start (or join) Ray and run the sweep. Returns the Tune ResultGrid.

    ``resume=True`` restores the experiment at ``storage/name`` (finished trials are kept, unfinished and
    errored ones continue from their last checkpoint). Without ``address`` a local Ray is started.
    """
    spec = load_sweep(space_path)
    check_resources(spec, address)
    path = experiment_path(spec, storage, name)
    if resume and not path.is_dir():
        raise ConfigError(f"--resume: no sweep at {path}")

    from ray import tune

    from verl_bench.distributed import init_ray

    init_ray(address)
    trainable = _trainable(spec, path)
    if resume:
        if not tune.Tuner.can_restore(str(path)):
            raise ConfigError(f"--resume: {path} holds no restorable Tune experiment")
        tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True)
        return tuner.fit()

    scheduler = None
    if spec.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(time_attr="step", max_t=spec.max_t, grace_period=spec.grace_period)
    tuner = tune.Tuner(
        trainable,
        param_space=_param_space(spec),
        tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode, num_samples=spec.num_samples,
                                    search_alg=_search_alg(spec), scheduler=scheduler),
        run_config=tune.RunConfig(
            name=path.name, storage_path=str(path.parent),
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.base["keep_checkpoints"] or None),
            verbose=1,
        ),
    )
    return tuner.fit()


# ------------------------------------------------------------------------------------------ CLI
def _cmd_sweep(args) -> int:
    spec = load_sweep(args.space)
    check_resources(spec, args.address)
    if args.dry_run:
        print(f"{args.space}: ok -- {len(spec.space)} dimension(s), algo {spec.algo}, {spec.num_samples} "
              f"sample(s) x {spec.seed_repeats} seed(s), scheduler {spec.scheduler}, metric {spec.metric} "
              f"({spec.mode}); first points: {spec.points_to_evaluate}; "
              f"results in {experiment_path(spec, args.storage, args.name)}")
        return 0
    grid = run_sweep(args.space, resume=args.resume, storage=args.storage, name=args.name, address=args.address)
    errors = [r for r in grid if r.error]
    try:
        best = grid.get_best_result()
        shown = {k: best.metrics.get(k) for k in (spec.metric, "step")}
        print(f"best: {_flat(best.config)} -> {shown} ({best.path})")
    except RuntimeError:
        print("no trial reported the metric")
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
