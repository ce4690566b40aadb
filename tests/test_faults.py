"""Numerical faults in the loop: a non-finite loss or gradient norm skips the step and leaves the weights, the
optimizer and the shaper's baselines bit-identical; K such steps in a row stop the run naming the step."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.test_train import _cfg, alternating
from verl_bench import train as train_lib
from verl_bench.checkpoint import load_trainer_state
from verl_bench.train import NonFiniteError, train


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.slow
def test_nonfinite_steps_are_skipped_without_a_trace_and_too_many_stop_the_run(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, "nan", "steps=4", "data.eval_size=0", "max_nonfinite_steps=2",
               "shaping.baseline_init=bias_corrected")
    backward, calls = train_lib.policy_backward, []

    def injected(scorer, rollout, loss_fn, **kw):
        loss = backward(scorer, rollout, loss_fn, **kw)
        calls.append(1)
        if len(calls) == 2:  # step 2: a NaN loss (its gradients are finite)
            return loss * float("nan")
        if len(calls) == 3:  # step 3: a finite loss, one NaN in one gradient
            next(p for p in scorer.parameters() if p.grad is not None).grad.view(-1)[0] = float("nan")
        return loss

    monkeypatch.setattr(train_lib, "policy_backward", injected)
    rows = []
    with pytest.raises(NonFiniteError, match=r"step 3: the loss or gradient norm was not finite for 2 steps in a "
                                             r"row \(max_nonfinite_steps 2\); the weights are those of step 1"):
        train(cfg, report=lambda m, c: rows.append(m), grader=alternating)
    assert [r["step"] for r in rows] == [1, 2, 3]  # the run stopped at step 3, reported
    assert [r["train/nonfinite_steps"] for r in rows] == [0, 1, 2]
    assert rows[0]["verl/active"] == 0.0  # bias_corrected: the first batch sets the baselines...
    ckpts = [tmp_path / "nan" / "checkpoints" / f"step_{s:06d}" for s in (1, 2, 3)]
    states = [load_trainer_state(c) for c in ckpts]
    weights = [load_file(c / "model.safetensors") for c in ckpts]
    for skipped in (1, 2):  # ...and the skipped steps leave weights, optimizer and baselines as step 1 left them
        assert _same(weights[skipped], weights[0])
        assert _same(states[skipped]["optimizer"], states[0]["optimizer"])
        assert states[skipped]["shaper"] == states[0]["shaper"]
    assert states[2]["nonfinite"] == {"total": 2, "consecutive": 2}
    assert states[2]["stream_position"] > states[0]["stream_position"]  # the skipped batches were consumed
