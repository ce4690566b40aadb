"""Analysis of studies and sweeps: the tidy per-sample frame (``frame``); accuracy intervals and paired
comparisons (``stats``, on the array arithmetic of ``intervals``; ``curves`` for pass@k / maj@k,
``smallsample`` for exact and score methods); the sweep's trial table, knob importance, seed-noise floor
and Pareto front (``hpo``). Pure functions; the report draws."""
