"""Tune's result files (``result.json``, ``progress.csv``), without the restore that loses rows (Ray 2.60).

When a trial restarts from a checkpoint (a PBT exploit, a retry after a failure), Tune's JSON and CSV
loggers copy the trial's file from the experiment's storage over the driver's local copy. The storage copy
is only synced from the local one every few minutes, so while the experiment runs it is the older of the
two: every row since the last sync is lost. Measured on a 2-trial PBT sweep (tests/test_sweep_pbt.py): in 3
runs out of 5 a trial's ``result.json`` ended with 0-2 of its 6 rows, and ``ResultGrid`` gave it an empty
``metrics_dataframe``. The local copy is only missing, never stale: a new driver (``--resume``) stages into
a fresh folder. So these loggers restore from storage only when there is no local copy.
"""

from __future__ import annotations

from pathlib import Path

from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback


class _RestoreOnlyWhenMissing:
    def _restore_from_remote(self, file_name: str, trial) -> None:
        if Path(trial.local_path, file_name).exists():
            return  # this driver has been writing it: it holds every row the storage copy has, and newer ones
        super()._restore_from_remote(file_name, trial)


class JsonResultLogger(_RestoreOnlyWhenMissing, JsonLoggerCallback):
    """``result.json``: one JSON line per report."""


class CsvResultLogger(_RestoreOnlyWhenMissing, CSVLoggerCallback):
    """``progress.csv``: one row per report."""


def result_loggers() -> list:
    """Pass in ``RunConfig(callbacks=...)``: Tune then adds no default JSON/CSV logger of its own."""
    return [JsonResultLogger(), CsvResultLogger()]
