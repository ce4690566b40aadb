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
    metric: val/accuracy
    mode: max
    num_samples: 20          # Optuna/random: trials; grid: repeats of the whole grid
    seed_repeats: 1          # >1: each trial trains seeds seed, seed+1, ... one after another (no ASHA)
    resources: {cpu: 1, gpu: 0}             # per trial
    max_concurrent: 1
    max_failures: 0          # retries of a failed trial, from its last checkpoint
    name: demo               # Ray run name (default: the file's stem); storage: default runs/sweeps

With ``algo: optuna`` (TPE) and no ``points_to_evaluate``, the base config's own values of the swept keys
(the paper's defaults in the provided spaces) are the first point, when they lie inside the space.
Each trial is a plain Tune function (one process; no Ray Train) that calls ``verl_bench.train.train`` with
``run_dir`` inside the trial's directory, reports every step with its HF checkpoint, and resumes from
``ray.tune.get_checkpoint()`` after a failure or ``--resume``. Every report also carries ``node_id`` and
``hostname``: with ``--address`` Ray places trials across the cluster's nodes (the storage must then be a
folder every node sees).
"""

from verl_bench.sweep.run import add_sweep_parser, experiment_path, run_sweep
from verl_bench.sweep.spec import SEARCH_SPACES, SweepSpec, check_resources, load_sweep

__all__ = ["SEARCH_SPACES", "SweepSpec", "add_sweep_parser", "check_resources", "experiment_path", "load_sweep",
           "run_sweep"]
