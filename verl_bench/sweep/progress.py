"""A one-line sweep status for the driver's console: trial counts and the best value so far."""

from __future__ import annotations

import math
import time
from collections import Counter

from ray.tune import Callback

# Tune's trial statuses, in the order they are shown
STATUSES = (("RUNNING", "running"), ("PENDING", "pending"), ("PAUSED", "paused"), ("TERMINATED", "done"),
            ("ERROR", "errored"))


class SweepProgress(Callback):
    """Prints ``[sweep 1m05s] 1 running, 2 pending, 0 paused, 3 done, 0 errored | best rank/er 12.3 (...)``.

    A line is printed when the trial counts change (a trial starts, ends or fails) and otherwise at most
    every ``every_s`` seconds while results arrive: a long sweep shows where it stands without flooding
    the console.
    """

    def __init__(self, metric: str, mode: str, every_s: float = 30.0, note: str = ""):
        self.metric, self.sign, self.every_s, self.note = metric, (1 if mode == "max" else -1), every_s, note
        self.best: tuple | None = None  # (value, trial id, step)
        self._t0 = self._last = time.time()
        self._shown: tuple | None = None  # the counts last printed, and the best value then
        self._shown_best: tuple | None = None
        self._new_results = False

    def setup(self, **info) -> None:
        self._t0 = self._last = time.time()  # also after --resume (this object comes back from the pickle)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        v = result.get(self.metric)
        usable = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if usable and (self.best is None or self.sign * v > self.sign * self.best[0]):
            self.best = (v, trial.trial_id, result.get("step"))
        self._new_results = True

    def on_step_end(self, iteration, trials, **info) -> None:
        due = self._new_results and time.time() - self._last >= self.every_s
        self._print(self._counts(trials), force=due)

    def on_experiment_end(self, trials, **info) -> None:
        self._print(self._counts(trials), force=self.best != self._shown_best)

    def line(self, counts: tuple) -> str:
        elapsed = int(time.time() - self._t0)
        head = f"[sweep {elapsed // 60}m{elapsed % 60:02d}s] " + ", ".join(
            f"{n} {label}" for n, (_, label) in zip(counts, STATUSES))
        if self.best is None:
            return f"{head} | no {self.metric} yet"
        v, trial_id, step = self.best
        return f"{head} | best {self.metric}{self.note} {v:.4g} (trial {trial_id}, step {step})"

    def _counts(self, trials) -> tuple:
        c = Counter(t.status for t in trials)
        return tuple(c.get(status, 0) for status, _ in STATUSES)

    def _print(self, counts: tuple, force: bool = False) -> None:
        """Print when the counts changed, or when ``force``d (new results and the time is due)."""
        if not force and counts == self._shown:
            return
        print(self.line(counts), flush=True)
        self._shown, self._shown_best, self._last, self._new_results = counts, self.best, time.time(), False
