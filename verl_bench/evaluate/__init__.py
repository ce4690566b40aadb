"""Evaluation: checkpoints -> lm-eval tasks over the data registry -> graded samples -> tidy tables.

``tasks`` builds the lm-eval tasks and group, ``metrics`` holds avg@n / pass@k / maj@k, ``presets`` the
sampling protocols, ``run`` evaluates models and sweeps, ``goldcheck`` checks the benchmarks' gold answers
against the verifier, ``cli`` is ``verl-bench eval``.
"""
