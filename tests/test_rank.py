"""ER / ERV / ERA against an independent float64 numpy SVD per response and per prefix."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.reference import dynamics_ref, er_ref
from verl_bench.rank import effective_rank, rank_dynamics, velocity_acceleration


def _inputs(kind: str, b: int, t: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        return torch.randn(b, t, d, generator=g)
    if kind == "random_walk":  # hidden states drift: strongly correlated rows, a wide spectrum
        return torch.randn(b, t, d, generator=g).cumsum(dim=1) * 0.1
    if kind == "low_rank":
        return torch.randn(b, t, 3, generator=g) @ torch.randn(b, 3, d, generator=g) + 5.0
    raise ValueError(kind)


def _check_against_reference(hidden, lengths, stride, window):
    t = hidden.shape[1]
    mask = torch.arange(t)[None, :] < lengths[:, None]
    er, erv, era = rank_dynamics(hidden, mask, stride=stride, window=window)
    er_only = effective_rank(hidden, mask)
    for i, n in enumerate(lengths.tolist()):
        ref = dynamics_ref(hidden[i, :n].double().numpy(), stride, window)
        assert er[i].item() == pytest.approx(ref[0], rel=1e-4, abs=1e-6), f"ER row {i}"
        assert er_only[i].item() == pytest.approx(ref[0], rel=1e-4, abs=1e-6), f"effective_rank row {i}"
        assert erv[i].item() == pytest.approx(ref[1], abs=1e-3), f"ERV row {i}"
        assert era[i].item() == pytest.approx(ref[2], abs=1e-3), f"ERA row {i}"
    return er, erv, era


@pytest.mark.parametrize("kind", ["random", "random_walk", "low_rank"])
@pytest.mark.parametrize(("t", "d"), [(96, 160), (140, 24)])  # L < D (Gram route) and L > D (covariance)
def test_matches_float64_svd(kind, t, d):
    hidden = _inputs(kind, 5, t, d)
    lengths = torch.tensor([t, t - 7, 61, 19, 45])  # includes responses shorter than 2*stride
    _check_against_reference(hidden, lengths, stride=10, window=512)


def test_window_shorter_than_responses():
    # the window cuts every long response: ERV/ERA are over the LAST `window` rows only
    hidden = _inputs("random_walk", 4, 150, 48, seed=3)
    lengths = torch.tensor([150, 121, 70, 33])
    _check_against_reference(hidden, lengths, stride=8, window=64)


def test_short_responses_have_zero_velocity():
    hidden = _inputs("random", 3, 40, 16)
    lengths = torch.tensor([39, 20, 1])  # all < 2*stride = 40
    er, erv, era = rank_dynamics(hidden, torch.arange(40)[None] < lengths[:, None], stride=20)
    assert torch.all(erv == 0) and torch.all(era == 0)
    assert er[2] == pytest.approx(er_ref(hidden[2, :1].numpy()), abs=1e-6)  # one row: centred to zero
    assert er[0] > 1


def test_padding_rows_never_change_results():
    hidden = _inputs("random_walk", 3, 90, 32, seed=1)
    lengths = torch.tensor([90, 50, 71])
    mask = torch.arange(90)[None] < lengths[:, None]
    base = rank_dynamics(hidden, mask, stride=10)
    junk = hidden.clone()
    junk[~mask] = 1e3 * torch.randn(int((~mask).sum()), 32)
    extended = torch.cat([junk, torch.randn(3, 25, 32)], dim=1)  # extra padded columns too
    ext_mask = torch.cat([mask, torch.zeros(3, 25, dtype=torch.bool)], dim=1)
    for a, b in zip(base, rank_dynamics(extended, ext_mask, stride=10)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_left_padding_equals_right_padding():
    hidden = _inputs("random", 2, 60, 20, seed=2)
    lengths = torch.tensor([60, 37])
    right_mask = torch.arange(60)[None] < lengths[:, None]
    left = torch.zeros_like(hidden)
    left_mask = torch.zeros_like(right_mask)
    for i, n in enumerate(lengths.tolist()):
        left[i, 60 - n :] = hidden[i, :n]
        left_mask[i, 60 - n :] = True
    for a, b in zip(rank_dynamics(hidden, right_mask, stride=8), rank_dynamics(left, left_mask, stride=8)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_rank_r_matrix_has_effective_rank_at_most_r():
    # ER of an exactly rank-r (after centring) matrix is at most r, and equals r for equal singular values
    r, length, d = 4, 50, 30
    q_left = torch.linalg.qr(torch.randn(length, r, dtype=torch.float64)).Q
    q_left = q_left - q_left.mean(dim=0)  # centred columns stay orthogonal only approximately: re-orthonormalise
    q_left = torch.linalg.qr(q_left).Q
    q_right = torch.linalg.qr(torch.randn(d, r, dtype=torch.float64)).Q
    z = (q_left @ q_right.T)[None]  # singular values all 1: ER = r exactly
    er = effective_rank(z, torch.ones(1, length, dtype=torch.bool))
    assert er.item() == pytest.approx(r, rel=1e-4)
    spiky = (q_left * torch.tensor([10.0, 1.0, 0.1, 0.01], dtype=torch.float64)) @ q_right.T
    er2 = effective_rank(spiky[None], torch.ones(1, length, dtype=torch.bool))
    assert 1 < er2.item() < r
    assert er2.item() == pytest.approx(er_ref(spiky.numpy()), rel=1e-4)


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 5),
    t=st.integers(2, 40),
    d=st.integers(2, 24),
    seed=st.integers(0, 10_000),
)
def test_bounds_and_permutation_invariance(b, t, d, seed):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, d, generator=g)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    mask = torch.arange(t)[None] < lengths[:, None]
    er, erv, era = rank_dynamics(hidden, mask, stride=3, window=16)
    # ER <= min(L - 1, D): centring removes one dimension; >= 1 unless the centred matrix is zero
    limit = torch.minimum(lengths - 1, torch.tensor(d)).clamp_min(1).float()
    assert torch.all(er <= limit * (1 + 1e-5) + 1e-6)
    assert torch.all(er[lengths > 1] >= 1 - 1e-5)
    perm = torch.randperm(b, generator=g)
    er_p, erv_p, era_p = rank_dynamics(hidden[perm], mask[perm], stride=3, window=16)
    torch.testing.assert_close(er_p, er[perm], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(erv_p, erv[perm], rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(era_p, era[perm], rtol=1e-6, atol=1e-5)


def test_velocity_acceleration_hand_computed():
    # e = [1, 3, 2, 6]: v = [3-1, 2-2, 6-2] = [2, 0, 4]; a = [0-2, 4-0] = [-2, 4]
    e = torch.tensor([[1.0, 3.0, 2.0, 6.0], [5.0, 7.0, 0.0, 0.0]], dtype=torch.float64)
    valid = torch.tensor([[True, True, True, True], [True, True, False, False]])
    erv, era = velocity_acceleration(e, valid)
    assert erv.tolist() == pytest.approx([2.0, 2.0])
    assert era.tolist() == pytest.approx([1.0, 0.0])  # second row: one velocity, no acceleration


def test_float32_input_and_bfloat16_input():
    hidden = _inputs("random_walk", 2, 64, 40, seed=5)
    mask = torch.ones(2, 64, dtype=torch.bool)
    ref = [er_ref(hidden[i].numpy()) for i in range(2)]
    assert effective_rank(hidden, mask).tolist() == pytest.approx(ref, rel=1e-4)
    # bf16 hidden states (the GPU policy dtype) are upcast before any product; the result is the ER of the
    # bf16-rounded rows, which the reference reproduces from the same rounded rows
    hb = hidden.to(torch.bfloat16)
    ref_b = [er_ref(hb[i].float().numpy()) for i in range(2)]
    assert effective_rank(hb, mask).tolist() == pytest.approx(ref_b, rel=1e-4)


def test_chunking_does_not_change_results():
    hidden = _inputs("random", 7, 50, 20, seed=4)
    mask = torch.arange(50)[None] < torch.tensor([50, 3, 44, 21, 50, 9, 30])[:, None]
    a = rank_dynamics(hidden, mask, stride=5, chunk_size=2)
    b = rank_dynamics(hidden, mask, stride=5, chunk_size=64)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)


def test_float32_gram_would_lose_small_singular_values():
    """Why float64: with a fast-decaying spectrum (s_k = k^-2), a float32 Gram loses the tail of s."""
    length, d, r = 200, 300, 150
    g = torch.Generator().manual_seed(7)
    u = torch.linalg.qr(torch.randn(length, r, dtype=torch.float64, generator=g)).Q
    u = torch.linalg.qr(u - u.mean(dim=0)).Q
    v = torch.linalg.qr(torch.randn(d, r, dtype=torch.float64, generator=g)).Q
    s = torch.arange(1, r + 1, dtype=torch.float64) ** -2.0
    hidden = ((u * s) @ v.T).float()[None]
    mask = torch.ones(1, length, dtype=torch.bool)
    ref = er_ref(hidden[0].numpy())
    assert effective_rank(hidden, mask).item() == pytest.approx(ref, rel=1e-4)
    sloppy = effective_rank(hidden, mask, dtype=torch.float32).item()
    assert abs(sloppy - ref) / ref > 1e-2


def test_empty_response_and_bad_shapes():
    hidden = torch.randn(2, 10, 4)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, :5] = True
    er, erv, era = rank_dynamics(hidden, mask, stride=2)
    assert er[1] == 0 and erv[1] == 0 and era[1] == 0
    with pytest.raises(ValueError, match="mask must be"):
        effective_rank(hidden, mask[:, :5])
    with pytest.raises(ValueError, match="hidden must be"):
        effective_rank(hidden[0], mask[0])
    with pytest.raises(ValueError, match="stride"):
        rank_dynamics(hidden, mask, stride=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    hidden = _inputs("random_walk", 4, 120, 64)
    mask = torch.arange(120)[None] < torch.tensor([120, 90, 60, 30])[:, None]
    cpu = rank_dynamics(hidden, mask, stride=10)
    gpu = rank_dynamics(hidden.cuda(), mask.cuda(), stride=10)
    for a, b in zip(cpu, gpu):
        assert b.is_cuda
        np.testing.assert_allclose(a.numpy(), b.cpu().numpy(), rtol=1e-4, atol=1e-4)
