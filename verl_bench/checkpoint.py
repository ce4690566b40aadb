"""Checkpoint folders: written whole or not at all, verified before use, loaded without unpickling.

    <run_dir>/checkpoints/step_000010/   an HF folder (model.safetensors, config.json, tokenizer files: loads
                                         as is in transformers, lm-eval and vLLM)
        trainer_state.pt                 optimizer, shaper, data position, RNG, fault counters: tensors and
                                         plain containers only, so ``torch.load(weights_only=True)`` reads it
                                         (under fsdp the whole model and optimizer state, gathered on rank 0:
                                         the optimizer's keyed by parameter name, for any number of workers)
        verl_bench_checkpoint.json       the manifest, written last: format, step, the run's config, the size
                                         of every file above

A checkpoint is written into ``.tmp_step_N`` and renamed into place, so a kill mid-write leaves at most a
``.tmp_`` folder nobody reads (the next save removes it); a full disk removes the partial folder and stops
the run with ``CheckpointError``. ``latest_checkpoint`` skips (and reports) a folder whose files do not match
its manifest or whose safetensors are truncated, so a damaged newest checkpoint falls back to the previous.
Nothing is unpickled: a state file that ``weights_only`` refuses (an older format, or a planted pickle) is
refused with a message.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import torch

from verl_bench.errors import UserError

STATE_FILE = "trainer_state.pt"
MANIFEST_FILE = "verl_bench_checkpoint.json"
FORMAT = 2  # 1: trainer_state.pt pickled numpy objects and had no manifest


class CheckpointError(UserError):
    """A checkpoint that cannot be written, trusted or read; the message names the folder."""


# ------------------------------------------------------------------------------------------------ writing
def save_checkpoint(run_dir: str | Path, step: int, lm, tokenizer, state: dict, config: dict,
                    keep: int = 0, weights: dict | None = None) -> Path:
    """Write ``step_{step}`` (HF folder + ``state`` + manifest) atomically; keep the newest ``keep`` (0: all).
    ``weights``: the state dict to write as ``lm``'s (gathered from FSDP shards); default ``lm``'s own."""
    root = Path(run_dir) / "checkpoints"
    final, tmp = root / f"step_{step:06d}", root / f".tmp_step_{step:06d}"
    for partial in root.glob(".tmp_step_*"):  # left by a save that was killed
        shutil.rmtree(partial, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        lm.save_pretrained(tmp, state_dict=weights, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        torch.save({"format": FORMAT, **state}, tmp / STATE_FILE)
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = {"format": FORMAT, "step": step, "config": config, "files": files}
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
        _fsync_tree(tmp)  # the rename below must not publish files still only in the page cache
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            previous = latest_checkpoint(run_dir, quiet=True)
            raise CheckpointError(
                f"disk full while writing the step {step} checkpoint under {root} ({e.strerror}): the run stops "
                f"here; the newest complete checkpoint ({previous or 'none'}) is intact: free space and rerun "
                f"the same command to resume from it") from e
        raise
    shutil.rmtree(final, ignore_errors=True)  # a step redone after a resume replaces its old folder
    os.replace(tmp, final)
    _fsync_dir(root)
    if keep > 0:
        for old in sorted(root.glob("step_*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_tree(folder: Path) -> None:
    for p in folder.iterdir():
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------- verifying
def checkpoint_problem(folder: str | Path) -> str | None:
    """Why ``folder`` cannot be trusted (a missing or truncated file, a manifest that does not match), or
    None. Cheap: sizes and safetensors headers, no tensor is read. A folder without a manifest but with a
    state file is an older format: None here, refused with its own message when loaded."""
    folder = Path(folder)
    manifest = folder / MANIFEST_FILE
    if not manifest.is_file():
        return None if (folder / STATE_FILE).is_file() else f"no {MANIFEST_FILE} (an unfinished write?)"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError) as e:
        return f"{MANIFEST_FILE} is unreadable ({e})"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} is {path.stat().st_size} bytes, {size} were written"
        if name.endswith(".safetensors"):
            problem = safetensors_problem(path)
            if problem:
                return f"{name}: {problem}"
    return None


def safetensors_problem(path: Path) -> str | None:
    """A safetensors file is an 8-byte header length, a JSON header and the tensor bytes it indexes: check
    that the header parses and the file holds every byte it promises."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return "truncated (no header)"
        n = struct.unpack("<Q", head)[0]
        if 8 + n > size:
            return "truncated (inside the header)"
        try:
            header = json.loads(f.read(n))
        except ValueError:
            return "header is not valid JSON"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    return None if 8 + n + end == size else f"holds {size} bytes, its header indexes {8 + n + end}"


def latest_checkpoint(run_dir: str | Path, *, quiet: bool = False) -> Path | None:
    """The newest checkpoint folder under ``run_dir`` that passes ``checkpoint_problem``; damaged newer
    ones are reported on stderr and skipped (``quiet``: skipped silently)."""
    for folder in sorted((Path(run_dir) / "checkpoints").glob("step_*"), reverse=True):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        if not quiet:
            print(f"[verl-bench] skipping damaged checkpoint {folder}: {problem}", file=sys.stderr, flush=True)
    return None


def checkpoint_config(folder: str | Path) -> dict:
    """The training config a checkpoint was written with (from its manifest; nothing heavy is read)."""
    folder = Path(folder)
    _require_current_format(folder)
    return json.loads((folder / MANIFEST_FILE).read_text())["config"]


def _require_current_format(folder: Path) -> None:
    problem = checkpoint_problem(folder) if folder.is_dir() else "not a folder"
    if problem:
        raise CheckpointError(f"checkpoint {folder}: {problem}")
    if not (folder / MANIFEST_FILE).is_file():
        raise CheckpointError(
            f"checkpoint {folder}: written by an older verl-bench (trainer_state.pt pickles numpy objects, no "
            f"{MANIFEST_FILE}); it is not loaded, since reading it would run a pickle: start a new run_dir, or "
            "load its model folder as `model:` for a fresh run")
    if (folder / "pytorch_model.bin").exists() or not any(folder.glob("*.safetensors")):
        raise CheckpointError(f"checkpoint {folder}: weights are read from safetensors only, and it has none")


# --------------------------------------------------------------------------------------------- reading
def load_trainer_state(folder: str | Path) -> dict:
    """``trainer_state.pt`` of a verified checkpoint, read with ``weights_only=True`` (no code can run).
    Memory-mapped: under FSDP every worker opens the full optimizer state and reads only its shard."""
    folder = Path(folder)
    _require_current_format(folder)
    path = folder / STATE_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - whatever the unpickler objects to, the answer is the same
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: refused: not a tensors-and-containers file ({first}); verl-bench never "
                              "unpickles a checkpoint") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {state.get('format') if isinstance(state, dict) else '?'}, "
                              f"expected {FORMAT}")
    return state


# ------------------------------------------------------------------------------------------------- RNG
def rng_state() -> dict:
    """Every RNG the loop draws from, as tensors and plain numbers (``weights_only`` loads them)."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
