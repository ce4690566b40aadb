"""What a sweep trial reports to Tune: one running row of metrics, the same in-process and from Train workers.

No Ray import here: ``verl_bench.distributed`` uses it inside Ray Train workers.
"""

from __future__ import annotations

import math


class Carry:
    """Merges each step's metrics into one running row.

    ``train`` reports validation keys only at eval steps (step 0 holds nothing else), but Tune rejects a
    result that lacks the sweep's metric(s) and ASHA/PBT/Optuna read the newest result: so every report
    carries the newest value of every key seen so far, and nothing is sent before all ``required`` keys
    have appeared. ``extra`` (where the trial runs, what it resumed from) joins every row.
    """

    def __init__(self, required: list[str], extra: dict | None = None):
        self.required = list(required)
        self.extra = dict(extra or {})
        self.row: dict = {}

    def __call__(self, metrics: dict) -> dict | None:
        self.row.update(metrics)
        if any(k not in self.row for k in self.required):
            return None
        return {**self.row, **self.extra}


def clean(m: dict) -> dict:
    """Only plain scalars go to Tune; NaN and inf become None (JSON and Optuna reject them)."""
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in m.items()
            if isinstance(v, (int, float, str, bool)) or v is None}
