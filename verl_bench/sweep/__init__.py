"""Hyper-parameter sweeps over ``TrainConfig`` with Ray Tune: a strict YAML format and ``run_sweep``.

    verl-bench sweep search_spaces/demo.yaml            # validate, start a local Ray, run, print the best
    verl-bench sweep search_spaces/demo.yaml --resume   # continue an interrupted sweep (same storage/name)
    verl-bench sweep search_spaces/demo.yaml --dry-run  # validate only

A sweep file (everything is checked before Ray starts; errors name file:line: key)::

    base: ../verl_bench/configs/demo.yaml   # a config YAML, or an inline TrainConfig mapping; an inline
                                            # mapping may hold `from: PATH` plus keys that override it
    space:                                  # dotted TrainConfig keys -> one distribution each
      shaping.kappa: {loguniform: [0.5, 8]}
      shaping.tau: {uniform: [-0.5, 0.5]}
      rollout.n: {int: [4, 8]}              # inclusive bounds
      shaping.mode: {choice: [meta, sum]}
      shaping.placement: {grid: [last_token, all_tokens]}   # random / grid search only
    search: {algo: optuna, seed: 0, points_to_evaluate: [{shaping.kappa: 2.0, ...}]}
    scheduler: {kind: asha, grace_period: 2, max_t: 30}     # time unit: training steps
    metric: val/accuracy     # or a list, with a list of modes: a multi-objective Optuna search
    mode: max
    num_samples: 20          # Optuna/random: trials; grid: repeats of the whole grid
    resources: {cpu: 1, gpu: 0}             # per trial (its own process; see Ray Train workers below)
    max_concurrent: 1
    max_failures: 0          # retries of a failed trial, from its last checkpoint
    name: demo               # Ray run name (default: the file's stem); storage: default runs/sweeps

With ``algo: optuna`` (TPE) and no ``points_to_evaluate``, the base config's own values of the swept keys
(the paper's defaults in the provided spaces) are the first point, when they lie inside the space.

Multi-objective: ``metric: [val/accuracy, val/response_length]`` with ``mode: [max, min]`` (equal lengths)
needs ``algo: optuna``; the lists go to the Optuna searcher (TPE over both values, a Pareto front printed at
the end). ASHA ranks trials by one number: it stops on the first metric.

Seeds: the seed is a config key like any other; ``seed: {grid: [0, 1, 2]}`` makes it a grid dimension and
the report aggregates over it. (Comparing arms over models and seeds with a fixed evaluation protocol is a
study: ``verl_bench.study``, which runs its model x arm x seed grid through ``run.run_cells``.)

PBT: ``scheduler: {kind: pbt, perturbation_interval: 5, hyperparam_mutations: {KEY: DISTRIBUTION}}``
(mutations default to the space; optional ``quantile_fraction`` 0.25, ``resample_probability`` 0.25).
Every ``perturbation_interval`` steps a trial in the worst quantile restarts from a checkpoint of one in
the best quantile with that trial's config perturbed (numbers x0.8 or x1.2, kept inside their bounds;
choices move to a neighbour; or a fresh draw). Only keys ``train`` honours when it resumes with a new
config may be swept or mutated (``spec.PBT_MUTABLE``: lr, weight decay, clipping, KL/entropy weights,
sampling temperature/top_p, the shaping knobs). It needs ``algo: random`` (or grid), the base's
``checkpoint_every`` dividing the interval, ``keep_checkpoints`` 0 or >= 3, a population >= 2; the whole
population is alive at once (``max_concurrent`` defaults to it) and trials that do not fit are paused.

Each trial (``ray.num_workers: 1``) is a plain Tune function trial that calls ``verl_bench.train.train``
in its own process with ``run_dir`` inside the trial's directory, reports every step with its HF
checkpoint, and resumes from ``ray.tune.get_checkpoint()`` after a failure, ``--resume`` or a PBT exploit.
Trial processes are reused by the next trial (``reuse_actors``); a trial frees its memory when it ends.

Ray Train workers (``ray.num_workers: N > 1`` in the base): each trial fits a Ray Train TorchTrainer that
runs the same ``train`` loop on N DDP workers; their reports reach Tune through ``TuneReportCallback``
(checkpoints stay with the Train run; Tune gets ``checkpoint_path``), so ASHA still stops them. The Train
run is named after the trial and stored in the trial's folder: a retried or resumed trial continues from
its newest checkpoint. ``resources`` are then the trial's own process, which only waits on its workers
(``cpu: 0`` is allowed); each worker reserves ``ray.cpus_per_worker`` CPUs (and a GPU with
``ray.use_gpu``) when the run starts. Tune does not count the workers, so a local sweep is refused unless
``max_concurrent`` trial processes plus one trial's workers fit the machine. No PBT then.

Every report carries ``node_id`` and ``hostname`` (and ``world_size`` with Train workers, ``restored_from``:
the checkpoint the run resumed from, empty when it started fresh): with ``--address`` Ray places trials
across the cluster's nodes (the storage must then be a folder every node sees). While a sweep runs, a
status line shows running/pending/paused/done/errored trial counts and the best value so far. Tune's
``result.json`` / ``progress.csv`` (and so ``ResultGrid``'s ``metrics_dataframe``) keep every report of a
trial across PBT pauses, exploits and retries (``sweep/loggers.py``: Ray 2.60's own loggers lose rows there).
"""

from verl_bench.sweep.run import add_sweep_parser, experiment_path, finished_run, run_cells, run_sweep
from verl_bench.sweep.spec import SEARCH_SPACES, SweepSpec, check_resources, load_sweep

__all__ = ["SEARCH_SPACES", "SweepSpec", "add_sweep_parser", "check_resources", "experiment_path", "finished_run",
           "load_sweep", "run_cells", "run_sweep"]
