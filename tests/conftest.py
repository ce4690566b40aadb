"""Shared test set-up: fully offline, data read in place from the data root; the tiny training config;
Ray fixtures."""

import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
_default_data = Path(__file__).resolve().parents[2] / "shared" / "data" / "math"
if "VERL_BENCH_DATA" not in os.environ and _default_data.is_dir():
    os.environ["VERL_BENCH_DATA"] = str(_default_data)

# The smallest training run (verl_bench/configs/tiny.yaml); tests override what they vary: {**TINY_BASE, ...}
_TINY_YAML = Path(__file__).resolve().parents[1] / "verl_bench" / "configs" / "tiny.yaml"
TINY_BASE = yaml.safe_load(_TINY_YAML.read_text())
_RAY_ENV = ("HF_HUB_OFFLINE", "VERL_BENCH_DATA", "TOKENIZERS_PARALLELISM")


@pytest.fixture
def fresh_ray():
    """No Ray before or after the test: the code under test starts (and ends) its own."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module's in-process runs (run_sweep joins it instead of starting its own)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k in _RAY_ENV}})
    yield
    ray.shutdown()


@pytest.fixture
def model_builds(monkeypatch):
    """Counts, in this process, what the test made of models: ``"tiny"`` and ``"smollm2"`` folders built
    (cache misses of ``verl_bench.models``) and ``"loaded"`` models read by transformers
    (``AutoModelForCausalLM.from_pretrained``). Tests check cache reuse, or that bad input stopped before
    any model was loaded, by asserting on this Counter; work in Ray workers or subprocesses is not seen."""
    from collections import Counter

    from transformers import AutoModelForCausalLM

    from verl_bench import models

    counts: Counter = Counter()

    def counted(kind, fn):
        def wrapper(*args, **kwargs):
            counts[kind] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(models, "build_tiny_model", counted("tiny", models.build_tiny_model))
    monkeypatch.setattr(models, "_convert_smollm2", counted("smollm2", models._convert_smollm2))
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained",
                        counted("loaded", AutoModelForCausalLM.from_pretrained))
    return counts
