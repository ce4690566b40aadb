"""Studies: base models x arms x seeds, trained, evaluated under one protocol, compared on one endpoint.

    verl-bench study studies/demo.yaml                 # validate, train, evaluate, report (local Ray)
    verl-bench study studies/demo.yaml --resume        # after the driver died: finished work is kept
    verl-bench study studies/paper.yaml --dry-run      # validate and print the plan; resolves no model
    verl-bench study STUDY.yaml --address HEAD:6379 --storage /shared/studies

A study file (everything is checked before Ray starts; errors name file:line: key)::

    name: demo                     # the study's folder: <storage>/<name> (default: the file's stem)
    storage: ../runs/studies       # default runs/studies; relative paths are relative to this file
    report: ../reports/demo        # the report's folder (default: <study folder>/report)
    base: ../verl_bench/configs/demo.yaml   # the training config every trial starts from (a path, or an
                                   # inline mapping, optionally with `from: PATH`)
    budget: {steps: 8}             # training steps per trial (default: the base config's)
    models:                        # name -> a model spec (verl_bench.models) and its prompt template
      smollm2-135m: {model: smollm2-135m-instruct, template: chat-direct}
      qwen2.5-7b: {model: Qwen/Qwen2.5-7B, template: qwen-boxed, overrides: {algo.lr: 5.0e-7}}
    arms:                          # name -> dotted config overrides ({} = the base as is)
      grpo: {shaping.enabled: false}
      verl: {}                     # the base's shaping knobs (the paper's)
      dr_grpo+verl: {algo.estimator: dr_grpo}
    seeds: [0, 1]                  # a grid dimension: one trial per model x arm x seed
    evaluation:
      benchmarks: [arithmetic_test_l0]   # verl_bench.evaluate.tasks.EVAL_SETS (12 math sets + held-out arithmetic)
      preset: paper                # an evaluation preset (verl_bench.evaluate.presets) ...
      n: 4                         # ... with overrides: n, k, temperature, top_p, max_tokens, limit
      checkpoint: last             # or best (by select_metric, default val/accuracy; needs keep_checkpoints 0)
      base: true                   # also evaluate the untrained models (arm "base")
      resources: {cpu: 2, gpu: 0}  # per evaluation task (default: the evaluation machinery's)
      backend: auto                # lm-eval's model: auto (vllm on a GPU, else hf), hf, vllm, or sampler
                                   # (the training sampler: shared prefill per problem, fast on a CPU)
      vllm: {gpu_memory_utilization: 0.85, tensor_parallel_size: 1}   # the vllm backend's options: the
                                   # training config's rollout.vllm keys (max_model_len, enforce_eager, ...)
    primary:                       # the endpoint, declared before any result exists
      benchmark: arithmetic_test_l0   # one of the benchmarks, or `average` (their unweighted mean)
      metric: accuracy             # the mean of per-sample correctness (pass@1 estimated from n samples)
      compare: [verl, grpo]        # the difference A - B, per model (default with two arms: second - first)
    resources: {cpu: 2, gpu: 0}    # per trial; with ray.num_workers > 1 the trial process only (cpu 0 ok)
    max_concurrent: 1              # trials at a time
    max_failures: 0                # retries of a failed trial (it resumes from its newest checkpoint)

Arms and model overrides may not set model, seed, run_dir, steps or data.template: the study sets them.

Stages (``run.run_study``), each skipping what is already done, so a SIGKILLed driver rerun with
``--resume`` redoes no finished trial or benchmark:

1. train: a Ray Tune grid over model x arm x seed (``verl_bench.sweep.run.run_cells``: the sweep's trial
   function, reused trial processes, the status line); each trial's run is ``train/<trial>/run``. A run
   that is complete on disk is never trained again; an unfinished one resumes from its newest checkpoint.
2. evaluate: the chosen checkpoint of each trial (and each base model) as Ray tasks through
   ``verl_bench.evaluate`` (lm-eval, the training reward's checker); results and per-sample JSONL beside
   each checkpoint (``<checkpoint>/eval/<template>/<protocol>/``), the base models' in ``base/<model>/``.
   ``trials.json`` records model, arm, seed, trial id, run, checkpoint and evaluation folder of each.
3. report: ``samples.parquet`` (``verl_bench.analysis.frame``: one row per graded sample), the report
   (``verl_bench.report.build_report``), ``summary.json`` and one printed verdict per model on the primary
   endpoint (``verl_bench.analysis.stats``: paired difference, CI, p, MDE).
"""

from verl_bench.study.run import StudyError, StudyResult, describe, run_study
from verl_bench.study.spec import STUDIES, StudySpec, load_study

__all__ = ["STUDIES", "StudyError", "StudyResult", "StudySpec", "describe", "load_study", "run_study"]
