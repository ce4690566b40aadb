"""Analysis of studies and sweeps: the tidy per-sample frame (``frame``), accuracy intervals and paired
comparisons (``stats``, with ``curves`` for pass@k / maj@k and ``smallsample`` for exact and score methods),
and the sweep's trial table, knob importance and Pareto front (``hpo``). Pure functions; the report draws."""
