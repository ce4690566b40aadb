"""Evaluation: checkpoints -> lm-eval tasks over the data registry -> graded samples -> tidy tables.

``tasks`` builds the lm-eval tasks and group, ``metrics`` holds avg@n / pass@k / maj@k, ``presets`` the
sampling protocols, ``run`` evaluates models and sweeps, ``cli`` is ``verl-bench eval``. The benchmarks'
gold answers are checked against the verifier by ``verl_bench.audit``.
"""
