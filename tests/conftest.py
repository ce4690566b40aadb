"""Shared test set-up: fully offline, data read in place from the data root."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
_default_data = Path(__file__).resolve().parents[2] / "shared" / "data" / "math"
if "VERL_BENCH_DATA" not in os.environ and _default_data.is_dir():
    os.environ["VERL_BENCH_DATA"] = str(_default_data)
