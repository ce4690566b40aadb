"""Checkpoints and run folders: weights-only state, planted pickles refused, damaged checkpoints skipped,
a full disk, a kill mid-write, and a run folder that refuses a different run. No training: each test writes
checkpoints of a tiny model through the loop's own ``save``."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from verl_bench import checkpoint as ckpt_lib
from verl_bench import train as train_lib
from verl_bench.checkpoint import (
    MANIFEST_FILE,
    STATE_FILE,
    CheckpointError,
    checkpoint_problem,
    latest_checkpoint,
    load_trainer_state,
)
from verl_bench.config import ConfigError, load_config
from verl_bench.data import PromptStream
from verl_bench.distributed import World
from verl_bench.models import load_model
from verl_bench.runfolder import check_resume, record_config
from verl_bench.shaping import RankShaper


def _cfg(run_dir: Path, *sets: str):
    base = {"model": "tiny:test", "run_dir": str(run_dir), "steps": 3, "keep_checkpoints": 0,
            "data": {"eval_size": 0}, "rollout": {"prompts_per_step": 2, "n": 4, "max_new_tokens": 8}}
    return load_config(None, list(sets), base=base)


@pytest.fixture(scope="module")
def tiny():
    lm, tok = load_model("tiny:test", device="cpu")
    return lm, tok


def _run(tiny, cfg) -> SimpleNamespace:
    """The parts of a ``train.Run`` that ``save``/``restore`` touch, with an optimizer that has taken a step."""
    lm, tok = tiny
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-3)
    lm(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    opt.step()
    opt.zero_grad()
    shaper = RankShaper(cfg.shaping)
    shaper.compute(torch.rand(4, 3, dtype=torch.float64))
    return SimpleNamespace(cfg=cfg, world=World(), run_dir=Path(cfg.run_dir), lm=lm, tokenizer=tok, optimizer=opt,
                           shaper=shaper, stream=PromptStream(10, 0, position=6),
                           nonfinite={"total": 1, "consecutive": 0}, start_step=0)


def test_state_is_weights_only_and_restores_every_rng(tmp_path, tiny):
    cfg = _cfg(tmp_path / "run")
    run = _run(tiny, cfg)
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    folder = train_lib.save(run, 2)
    after_save = (random.random(), np.random.rand(), torch.rand(1).item())
    state = torch.load(folder / STATE_FILE, weights_only=True)  # plain tensors and containers only
    assert state["step"] == 2 and state["stream_position"] == 6 and state["nonfinite"]["total"] == 1
    assert checkpoint_problem(folder) is None
    assert json.loads((folder / MANIFEST_FILE).read_text())["config"] == json.loads(json.dumps(cfg.to_dict()))
    again = _run(tiny, cfg)
    train_lib.restore(again, folder)  # sets the RNGs to the state at the save
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == after_save
    assert again.start_step == 2 and again.stream.position == 6 and again.shaper.state_dict() == run.shaper.state_dict()


class _Payload:
    """What an attacker would put in a state file: unpickling it runs code (here: creates a file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_planted_pickle_is_refused_and_nothing_runs(tmp_path, tiny, monkeypatch):
    cfg = _cfg(tmp_path / "run")
    folder = train_lib.save(_run(tiny, cfg), 1)
    marker = tmp_path / "pwned"
    evil = folder / STATE_FILE
    torch.save({"format": 2, "step": _Payload(marker)}, evil)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())  # the attacker fixes the manifest up too
    manifest["files"][STATE_FILE] = evil.stat().st_size
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"trainer_state.pt: refused: .*never unpickles"):
        load_trainer_state(folder)
    assert not marker.exists()
    # through the loop: refused before training starts, nothing ran
    monkeypatch.setattr(train_lib.ENGINES["cached"], "generate", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(CheckpointError, match="refused"):
        train_lib.train(cfg)
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the payload is real: a plain unpickle runs it
    assert marker.exists()


def test_an_older_state_file_is_refused_with_a_message(tmp_path):
    folder = tmp_path / "run" / "checkpoints" / "step_000001"
    folder.mkdir(parents=True)
    torch.save({"step": 1, "rng": [{"numpy": np.random.get_state()}]}, folder / STATE_FILE)  # the old layout
    assert latest_checkpoint(tmp_path / "run") == folder  # found (so it is not silently restarted over)...
    with pytest.raises(CheckpointError, match="written by an older verl-bench"):
        load_trainer_state(folder)  # ...and refused


@pytest.mark.parametrize("damage", ["safetensors", "state"])
def test_a_damaged_newest_checkpoint_is_reported_and_the_previous_used(tmp_path, tiny, capsys, damage):
    cfg = _cfg(tmp_path / "run")
    run = _run(tiny, cfg)
    first, second = train_lib.save(run, 1), train_lib.save(run, 2)
    victim = second / ("model.safetensors" if damage == "safetensors" else STATE_FILE)
    with open(victim, "r+b") as f:
        f.truncate(victim.stat().st_size // 2)
    assert latest_checkpoint(cfg.run_dir) == first
    assert f"skipping damaged checkpoint {second}" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match=f"{second}: .*bytes"):
        load_trainer_state(second)  # named explicitly: refused, not half-read
    # the safetensors check alone (no manifest) sees a truncation too
    if damage == "safetensors":
        assert "bytes" in ckpt_lib.safetensors_problem(victim)
        assert ckpt_lib.safetensors_problem(first / "model.safetensors") is None


def test_a_full_disk_stops_with_a_clear_error_and_keeps_the_previous(tmp_path, tiny, monkeypatch):
    cfg = _cfg(tmp_path / "run")
    run = _run(tiny, cfg)
    first = train_lib.save(run, 1)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_lib.torch, "save", full)
    with pytest.raises(CheckpointError, match=r"disk full while writing the step 2 checkpoint .* \(No space left "
                                              r"on device\).*step_000001\) is intact"):
        train_lib.save(run, 2)
    root = Path(cfg.run_dir) / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step_000001"]  # the partial folder is gone
    assert latest_checkpoint(cfg.run_dir) == first and checkpoint_problem(first) is None


_KILL_MID_SAVE = """
import sys, time
from pathlib import Path
from tests.test_checkpoint import _cfg, _run
from verl_bench import train as train_lib
from verl_bench.models import load_model
run = _run(load_model("tiny:test", device="cpu"), _cfg(Path(sys.argv[1])))
train_lib.save(run, 1)
def stall(folder, *a, **k):  # the model is written; the tokenizer never will be
    Path(sys.argv[2]).touch()
    time.sleep(600)
run.tokenizer.save_pretrained = stall
train_lib.save(run, 2)
"""


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write_leaves_the_previous_loadable(tmp_path, tiny):
    run_dir, mid_save = tmp_path / "run", tmp_path / "mid_save"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_MID_SAVE, str(run_dir), str(mid_save)],
                            cwd=Path(__file__).resolve().parents[1])
    try:
        while not mid_save.exists():
            assert proc.poll() is None, "the writer died before reaching the save"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    root = run_dir / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == [".tmp_step_000002", "step_000001"]
    assert latest_checkpoint(run_dir) == root / "step_000001"  # the half-written one is never picked up
    assert load_trainer_state(root / "step_000001")["step"] == 1
    train_lib.save(_run(tiny, _cfg(run_dir)), 2)  # the next save clears the leftover
    assert sorted(p.name for p in root.iterdir()) == ["step_000001", "step_000002"]


def test_a_run_folder_refuses_a_different_run_before_loading(tmp_path, tiny, monkeypatch):
    cfg = _cfg(tmp_path / "run")
    folder = train_lib.save(_run(tiny, cfg), 1)
    monkeypatch.setattr(train_lib, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    other = _cfg(tmp_path / "run", "model=tiny:other", "shaping.enabled=false", "algo.lr=0.5")
    with pytest.raises(ConfigError, match=r"cannot resume .*step_000001 with a different run: model: 'tiny:test' "
                                          r"-> 'tiny:other'; shaping.enabled: True -> False\. A run folder"):
        train_lib.train(other)
    # more steps and what PBT mutates may change (and are reported); nothing else
    allowed = check_resume(json.loads((folder / MANIFEST_FILE).read_text())["config"],
                           _cfg(tmp_path / "elsewhere", "steps=9", "algo.lr=0.5", "shaping.kappa=4"), folder)
    assert [k for k, _, _ in allowed] == ["algo.lr", "run_dir", "shaping.kappa", "steps"]


def test_every_config_a_run_ran_with_is_kept(tmp_path):
    run_dir = tmp_path / "run"
    assert record_config(run_dir, _cfg(run_dir), 0) == 0
    assert record_config(run_dir, _cfg(run_dir), 0) == 0  # restarted unchanged: same version
    assert record_config(run_dir, _cfg(run_dir, "algo.lr=0.5"), 3) == 1
    files = sorted(p.name for p in (run_dir / "configs").iterdir())
    assert files == ["config_000.yaml", "config_001.yaml"]
    assert (run_dir / "configs" / "config_001.yaml").read_text().startswith("# started at step 3")
    assert "lr: 0.5" in (run_dir / "config.yaml").read_text()  # config.yaml: the newest


def test_a_full_disk_while_logging_stops_with_a_clear_error(tmp_path, monkeypatch):
    from verl_bench import runfolder
    from verl_bench.runfolder import RunFolderError, append_metrics

    append_metrics(tmp_path, {"step": 1, "loss": float("nan")})

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runfolder, "open", full, raising=False)
    with pytest.raises(RunFolderError, match=r"disk full while appending to .*metrics.jsonl: the run stops here"):
        append_metrics(tmp_path, {"step": 2})
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 1, "loss": None}  # NaN as null


def test_a_key_added_by_a_newer_version_at_its_default_is_no_change():
    """A run or study recorded before a key existed ran with that key's default: resuming it under a newer
    version (which writes the key at its default) is the same run; a non-default value is a change."""
    from verl_bench.config import TrainConfig
    from verl_bench.runfolder import config_changes

    new = json.loads(json.dumps(TrainConfig().to_dict()))
    old = json.loads(json.dumps(new))
    del old["algo"]["tis_cap"], old["rollout"]["vllm"]
    assert config_changes(old, new) == []
    new["algo"]["tis_cap"] = 2.0
    assert config_changes(old, new) == [("algo.tis_cap", None, 2.0)]
    old["algo"]["retired_key"] = 1  # a key this version no longer has: a change
    assert ("algo.retired_key", 1, None) in config_changes(old, new)
