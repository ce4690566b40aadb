"""A run folder keeps its identity: what may change when a run resumes, the record of every config it ran
with, and its ``metrics.jsonl`` (each row names the config that produced it).

    <run_dir>/config.yaml              the config of the newest (re)start (what evaluation reads)
    <run_dir>/configs/config_NNN.yaml  every distinct config the run has run with, in order, never overwritten
    <run_dir>/metrics.jsonl            one row per step; ``config_version`` is the NNN of its config
"""

from __future__ import annotations

import errno
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from verl_bench.config import ConfigError, TrainConfig, dump_config
from verl_bench.errors import UserError

# how a run is run, not what it trains: may differ on every resume
OPERATIONAL_KEYS = (
    "run_dir", "steps", "checkpoint_every", "keep_checkpoints", "eval_every", "threads", "device",
    "max_nonfinite_steps", "logits_chunk_tokens", "micro_batch", "micro_batch_tokens", "share_prompt",
    "gradient_checkpointing", "data.data_root", "data.eval_size", "rollout.eval_max_new_tokens",
    "ray.num_workers", "ray.strategy", "ray.use_gpu", "ray.cpus_per_worker", "ray.address",
)


def resumable_keys() -> tuple[str, ...]:
    """Keys a resumed run may change: the operational ones and those Tune's PBT mutates when it restarts a
    trial from another trial's checkpoint (``verl_bench.sweep.spec.PBT_MUTABLE``: the loop re-reads them at
    every start and the checkpoint holds nothing that depends on them)."""
    from verl_bench.sweep.spec import PBT_MUTABLE

    return OPERATIONAL_KEYS + tuple(PBT_MUTABLE)


def config_changes(old: dict, new: dict) -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every key that differs (a key missing on one side: None).
    Both sides as JSON holds them (lists, not tuples). A key one side lacks and the other holds at its
    default is no change: a config written before a newer version added that key ran with its default."""
    from verl_bench.sweep.spec import flatten

    a, b = flatten(old), flatten(new)
    defaults = flatten(json.loads(json.dumps(TrainConfig().to_dict())))
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
            and not (k in defaults and (k not in a or k not in b) and a.get(k, b.get(k)) == defaults[k])]


def check_resume(saved: dict, cfg: TrainConfig, checkpoint: Path) -> list[tuple[str, Any, Any]]:
    """Refuse to resume ``checkpoint`` (trained with ``saved``) under a config that changes what is trained;
    return the allowed changes (for the log). Runs before anything is loaded."""
    changes = config_changes(saved, json.loads(json.dumps(cfg.to_dict())))
    allowed = set(resumable_keys())
    refused = [c for c in changes if c[0] not in allowed]
    if refused:
        diff = "; ".join(f"{k}: {o!r} -> {n!r}" for k, o, n in refused)
        raise ConfigError(f"cannot resume {checkpoint} with a different run: {diff}. A run folder keeps the "
                          "model, data, algorithm and shaping it started with: use a new run_dir for a new run "
                          f"(keys that may change on resume: {sorted(allowed)})")
    return changes


def record_config(run_dir: Path, cfg: TrainConfig, start_step: int) -> int:
    """Add ``cfg`` to the run's config history unless it is the newest entry; write ``config.yaml``.
    Returns the version (NNN) the metrics rows of this start carry."""
    history = run_dir / "configs"
    history.mkdir(parents=True, exist_ok=True)
    versions = sorted(history.glob("config_*.yaml"))
    plain = yaml.safe_load(yaml.safe_dump(json.loads(json.dumps(cfg.to_dict())), sort_keys=False))
    if versions and yaml.safe_load(versions[-1].read_text()) == plain:
        version = int(versions[-1].stem.split("_")[1])
    else:
        version = int(versions[-1].stem.split("_")[1]) + 1 if versions else 0
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        path = history / f"config_{version:03d}.yaml"
        dump_config(cfg, path)
        path.write_text(f"# started at step {start_step}, {stamp}\n" + path.read_text())
    dump_config(cfg, run_dir / "config.yaml")
    return version


class RunFolderError(UserError):
    """The run folder cannot be written (a full disk)."""


def append_metrics(run_dir: Path, row: dict) -> None:
    """One JSON line per step (non-finite floats as null)."""
    line = json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()})
    try:
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(line + "\n")
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise RunFolderError(f"disk full while appending to {run_dir / 'metrics.jsonl'}: the run stops here; "
                                 "free space and rerun the same command to resume from the newest checkpoint") from e
        raise


def truncate_metrics(run_dir: Path, last_step: int) -> None:
    """Drop the rows after ``last_step`` (they will be redone; -1: a fresh start drops them all)."""
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
        path.write_text("".join(line + "\n" for line in keep))
