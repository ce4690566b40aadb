"""Group advantage estimators and the PPO-clip policy loss, against hand-computed values and plain loops."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_bench.grpo import (
    ESTIMATORS,
    aggregate,
    compute_advantage,
    kl_k3,
    masked_mean,
    policy_loss,
    register_estimator,
)

# --------------------------------------------------------------------------------- loop references


def _groups(group_ids):
    out = {}
    for i, g in enumerate(group_ids):
        out.setdefault(g, []).append(i)
    return out


def adv_ref(name, rewards, group_ids):
    """One group at a time, in float64 Python."""
    rewards = [float(np.float32(r)) for r in rewards]  # what a float32 tensor holds
    adv = [0.0] * len(rewards)
    for idx in _groups(group_ids).values():
        rs = [rewards[i] for i in idx]
        n = len(rs)
        if n == 1:
            continue
        mean = sum(rs) / n
        std = math.sqrt(sum((r - mean) ** 2 for r in rs) / (n - 1))
        for i in idx:
            if name == "grpo":
                adv[i] = (rewards[i] - mean) / (std + 1e-6)
            elif name == "dr_grpo":
                adv[i] = rewards[i] - mean
            elif name == "rloo":
                adv[i] = rewards[i] - (sum(rs) - rewards[i]) / (n - 1)
    return adv


# ------------------------------------------------------------------------------------- estimators

# non-contiguous, unequal groups with arbitrary ids: 3 -> {0, 2, 4}, 7 -> {1, 3}, 9 -> {5} (singleton)
R = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.0, 2.0])
G = torch.tensor([3, 7, 3, 7, 3, 9])


def test_grpo_hand_computed():
    # group 3: mean 0.5, unbiased std 0.5; group 7: mean 0.5, std sqrt(0.5); group 9: singleton -> 0
    a = 0.5 / (0.5 + 1e-6)
    b = 0.5 / (math.sqrt(0.5) + 1e-6)
    expect = torch.tensor([a, -b, 0.0, b, -a, 0.0])
    torch.testing.assert_close(compute_advantage("grpo", R, G), expect, rtol=1e-6, atol=1e-7)


def test_dr_grpo_hand_computed():
    expect = torch.tensor([0.5, -0.5, 0.0, 0.5, -0.5, 0.0])
    torch.testing.assert_close(compute_advantage("dr_grpo", R, G), expect, rtol=0, atol=1e-7)


def test_rloo_hand_computed():
    # r_i - mean of the others: 1 - 0.25, 0 - 1, 0.5 - 0.5, 1 - 0, 0 - 0.75, singleton 0
    expect = torch.tensor([0.75, -1.0, 0.0, 1.0, -0.75, 0.0])
    torch.testing.assert_close(compute_advantage("rloo", R, G), expect, rtol=0, atol=1e-7)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_matches_loop_reference_on_fixed_grouping(name):
    expect = torch.tensor(adv_ref(name, R.tolist(), G.tolist()), dtype=torch.float32)
    torch.testing.assert_close(compute_advantage(name, R, G), expect, rtol=1e-6, atol=1e-7)


_batch = st.lists(
    st.tuples(st.floats(-3, 3, allow_nan=False, width=32), st.integers(-4, 6)), min_size=1, max_size=24
)


@settings(max_examples=60, deadline=None)
@given(_batch, st.sampled_from(["grpo", "dr_grpo", "rloo"]))
def test_matches_loop_reference_random(batch, name):
    rewards = [r for r, _ in batch]
    gids = [g for _, g in batch]
    got = compute_advantage(name, torch.tensor(rewards), torch.tensor(gids))
    expect = torch.tensor(adv_ref(name, rewards, gids), dtype=torch.float64)
    # grpo divides by (std + 1e-6): a nearly constant group amplifies float32 rounding of the output only
    torch.testing.assert_close(got.double(), expect, rtol=1e-5, atol=1e-5)
    assert got.dtype == torch.float32


@settings(max_examples=60, deadline=None)
@given(
    st.floats(-10, 10, allow_nan=False, width=32),
    st.integers(2, 9),
    st.sampled_from(["grpo", "dr_grpo", "rloo"]),
    st.sampled_from([torch.float32, torch.float64]),
)
def test_equal_rewards_give_exactly_zero(value, n, name, dtype):
    # e.g. a group of 0.1s: float32 group sums do not give 0.1 back; the advantage must still be exactly 0
    rewards = torch.full((n,), value, dtype=dtype)
    rewards = torch.cat([rewards, torch.tensor([value + 1.0, value - 1.0], dtype=dtype)])
    gids = torch.tensor([5] * n + [6, 6])
    adv = compute_advantage(name, rewards, gids)
    assert torch.equal(adv[:n], torch.zeros(n, dtype=dtype))
    assert (adv[n:] != 0).all()  # the other group does carry signal


def test_equal_rewards_point_one_regression():
    adv = compute_advantage("grpo", torch.full((3,), 0.1), torch.zeros(3, dtype=torch.long))
    assert torch.equal(adv, torch.zeros(3))


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_singletons_are_zero(name):
    adv = compute_advantage(name, torch.tensor([3.0, -1.0, 2.0]), torch.tensor([0, 1, 2]))
    assert torch.equal(adv, torch.zeros(3))


@settings(max_examples=40, deadline=None)
@given(_batch, st.randoms(use_true_random=False), st.sampled_from(["grpo", "dr_grpo", "rloo"]))
def test_permutation_equivariance(batch, rnd, name):
    rewards = torch.tensor([r for r, _ in batch])
    gids = torch.tensor([g for _, g in batch])
    perm = list(range(len(batch)))
    rnd.shuffle(perm)
    perm = torch.tensor(perm)
    a = compute_advantage(name, rewards, gids)
    b = compute_advantage(name, rewards[perm], gids[perm])
    torch.testing.assert_close(b, a[perm], rtol=1e-6, atol=1e-6)


def test_group_ids_relabelling_does_not_matter():
    a = compute_advantage("grpo", R, G)
    b = compute_advantage("grpo", R, torch.tensor([-100, 10**12, -100, 10**12, -100, 0]))
    assert torch.equal(a, b)


def test_grpo_std_is_unbiased():
    # r = (0, 2): the biased std is 1 (A = -+1), the unbiased one sqrt(2) (A = -+1/sqrt(2))
    adv = compute_advantage("grpo", torch.tensor([0.0, 2.0]), torch.tensor([0, 0]))
    torch.testing.assert_close(adv, torch.tensor([-1.0, 1.0]) / (math.sqrt(2) + 1e-6))


def test_integer_rewards_and_no_grad():
    r = torch.tensor([1, 0, 0, 1])
    adv = compute_advantage("dr_grpo", r, torch.tensor([0, 0, 1, 1]))
    assert adv.dtype == torch.float32
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, -0.5, 0.5]))
    rg = torch.tensor([1.0, 0.0], requires_grad=True)
    assert not compute_advantage("grpo", rg, torch.tensor([0, 0])).requires_grad


def test_registry():
    assert {"grpo", "dr_grpo", "rloo"} <= set(ESTIMATORS)
    with pytest.raises(ValueError, match="unknown advantage estimator 'nope'"):
        compute_advantage("nope", R, G)
    with pytest.raises(ValueError, match="already registered"):
        register_estimator("grpo")(lambda r, g: r)

    @register_estimator("test_raw_reward")
    def raw(rewards, group_ids):
        return rewards * 2

    try:
        assert torch.equal(compute_advantage("test_raw_reward", R, G), R * 2)
    finally:
        del ESTIMATORS["test_raw_reward"]


def test_bad_shapes():
    with pytest.raises(ValueError, match="must both be"):
        compute_advantage("grpo", torch.zeros(3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        compute_advantage("grpo", torch.zeros(3), torch.zeros(3))


# ------------------------------------------------------------------------------------ policy loss

LOG15, LOG05 = math.log(1.5), math.log(0.5)


def _clip_case():
    # row 0: A = +1 with ratios (1.5, 0.5); row 1: A = -1 with ratios (1.5, 0.5)
    old = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]])
    logp = old + torch.tensor([[LOG15, LOG05], [LOG15, LOG05]])
    return logp, old, torch.tensor([1.0, -1.0]), torch.ones(2, 2, dtype=torch.bool)


def test_clip_hand_computed_symmetric():
    logp, old, adv, mask = _clip_case()
    logp.requires_grad_(True)
    loss, stats = policy_loss(logp, old, adv, mask, clip_low=0.2)
    # A=+1, r=1.5: max(-1.5, -1.2) = -1.2 (clipped)   A=+1, r=0.5: max(-0.5, -0.8) = -0.5
    # A=-1, r=1.5: max(1.5, 1.2) = 1.5                A=-1, r=0.5: max(0.5, 0.8) = 0.8 (clipped)
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.5 + 0.8) / 4, abs=1e-6)
    assert stats["pg_loss"].item() == pytest.approx(0.15, abs=1e-6)
    assert stats["clip_frac"].item() == pytest.approx(0.5)
    assert stats["ratio_mean"].item() == pytest.approx(1.0, abs=1e-6)
    assert stats["ratio_max"].item() == pytest.approx(1.5, abs=1e-6)
    loss.backward()
    # clipped tokens get no gradient; unclipped ones d(-A r)/dlogp / N = -A r / 4
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -0.5 / 4], [1.5 / 4, 0.0]]))


def test_clip_asymmetric_high():
    logp, old, adv, mask = _clip_case()
    loss, stats = policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28)
    assert loss.item() == pytest.approx((-1.28 - 0.5 + 1.5 + 0.8) / 4, abs=1e-6)
    assert stats["clip_frac"].item() == pytest.approx(0.5)
    # a wide upper clip no longer binds at r = 1.5: only the A<0, r=0.5 token is clipped
    loss, stats = policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.6)
    assert loss.item() == pytest.approx((-1.5 - 0.5 + 1.5 + 0.8) / 4, abs=1e-6)
    assert stats["clip_frac"].item() == pytest.approx(0.25)
    # a wider LOWER clip frees the A<0, r=0.5 token instead
    loss, stats = policy_loss(logp, old, adv, mask, clip_low=0.6, clip_high=0.2)
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.5 + 0.5) / 4, abs=1e-6)
    assert stats["clip_frac"].item() == pytest.approx(0.25)


def test_on_policy_ratio_one_gives_minus_mean_advantage():
    adv = torch.tensor([[0.3, -1.2, 2.0]])
    logp = torch.tensor([[-1.0, -2.0, -0.1]])
    loss, stats = policy_loss(logp, logp.clone(), adv, torch.ones(1, 3))
    assert loss.item() == pytest.approx(-(0.3 - 1.2 + 2.0) / 3, abs=1e-6)
    assert stats["clip_frac"].item() == 0.0


def test_k3_kl():
    logp = torch.tensor([[-1.0, -2.0, -0.5]])
    assert torch.equal(kl_k3(logp, logp.clone()), torch.zeros(1, 3))
    ref = logp + torch.tensor([[0.5, -1.0, 0.0]])
    expect = [math.exp(0.5) - 0.5 - 1, math.exp(-1.0) + 1.0 - 1, 0.0]
    torch.testing.assert_close(kl_k3(logp, ref), torch.tensor([expect]))
    mask = torch.ones(1, 3)
    adv = torch.zeros(1, 3)
    loss0, s0 = policy_loss(logp, logp, adv, mask, ref_logp=logp.clone(), kl_coef=0.1)
    assert s0["kl"].item() == 0.0 and loss0.item() == 0.0
    loss, s = policy_loss(logp, logp, adv, mask, ref_logp=ref, kl_coef=0.1)
    assert s["kl"].item() == pytest.approx(sum(expect) / 3, rel=1e-6)
    assert loss.item() == pytest.approx(0.1 * sum(expect) / 3, rel=1e-6)
    # kl stat is reported even with kl_coef = 0, but then does not enter the loss
    loss, s = policy_loss(logp, logp, adv, mask, ref_logp=ref, kl_coef=0.0)
    assert loss.item() == 0.0 and s["kl"].item() > 0


def test_kl_gradient_pulls_toward_reference():
    logp = torch.tensor([[-1.0]], requires_grad=True)
    ref = torch.tensor([[-0.5]])  # ref more likely: raising logp lowers the KL
    loss, _ = policy_loss(logp, logp.detach(), torch.zeros(1), torch.ones(1, 1), ref_logp=ref, kl_coef=1.0)
    loss.backward()
    # d/dlogp [exp(ref - logp) - (ref - logp) - 1] = -exp(ref - logp) + 1
    assert logp.grad.item() == pytest.approx(1 - math.exp(0.5), rel=1e-6)


def test_entropy_bonus():
    logp = torch.zeros(2, 2)
    ent = torch.tensor([[1.0, 2.0], [3.0, 99.0]], requires_grad=True)
    mask = torch.tensor([[1, 1], [1, 0]])
    loss, s = policy_loss(logp, logp, torch.zeros(2), mask, entropy=ent, entropy_coef=0.01)
    assert s["entropy"].item() == pytest.approx(2.0)  # (1 + 2 + 3) / 3, padding's 99 ignored
    assert loss.item() == pytest.approx(-0.02)
    loss.backward()
    torch.testing.assert_close(ent.grad, torch.tensor([[-0.01 / 3, -0.01 / 3], [-0.01 / 3, 0.0]]))


def test_token_mean_vs_seq_mean_unequal_lengths():
    # ratio 1, so the per-token loss is -A: sequence 0 has one token (A=2), sequence 1 three tokens (A=1)
    adv = torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    logp = torch.zeros(2, 3)
    tok, _ = policy_loss(logp, logp, adv, mask, agg="token_mean")
    seq, _ = policy_loss(logp, logp, adv, mask, agg="seq_mean")
    assert tok.item() == pytest.approx(-(2 + 3) / 4)
    assert seq.item() == pytest.approx(-(2 + 1) / 2)


def test_seq_mean_skips_empty_rows_and_agg_validation():
    x = torch.tensor([[1.0, 3.0], [5.0, 7.0]])
    mask = torch.tensor([[1, 1], [0, 0]])
    assert aggregate(x, mask, "seq_mean").item() == pytest.approx(2.0)
    assert aggregate(x, mask, "token_mean").item() == pytest.approx(2.0)
    assert aggregate(x, torch.zeros(2, 2), "seq_mean").item() == 0.0
    with pytest.raises(ValueError, match="agg"):
        aggregate(x, mask, "sum")


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.integers(1, 7), st.integers(0, 10_000))
def test_aggregations_match_loops(b, t, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, generator=g, dtype=torch.float64)
    mask = torch.rand(b, t, generator=g) < 0.6
    tok_vals = [x[i, j].item() for i in range(b) for j in range(t) if mask[i, j]]
    seq_vals = []
    for i in range(b):
        row = [x[i, j].item() for j in range(t) if mask[i, j]]
        if row:
            seq_vals.append(sum(row) / len(row))
    tok_expect = sum(tok_vals) / len(tok_vals) if tok_vals else 0.0
    seq_expect = sum(seq_vals) / len(seq_vals) if seq_vals else 0.0
    assert aggregate(x, mask, "token_mean").item() == pytest.approx(tok_expect, abs=1e-12)
    assert aggregate(x, mask, "seq_mean").item() == pytest.approx(seq_expect, abs=1e-12)
    assert masked_mean(x, mask).item() == pytest.approx(tok_expect, abs=1e-12)


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean"])
@pytest.mark.parametrize("garbage", [1e4, -1e4, float("nan"), float("inf")])
def test_padding_never_changes_loss_or_grad(agg, garbage):
    g = torch.Generator().manual_seed(0)
    b, t = 3, 6
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 1, 0]], dtype=torch.bool)
    logp = -torch.rand(b, t, generator=g) * 3
    old = logp + 0.3 * torch.randn(b, t, generator=g)
    ref = logp + 0.3 * torch.randn(b, t, generator=g)
    ent = torch.rand(b, t, generator=g)
    adv = torch.randn(b, t, generator=g)

    def run(fill):
        def f(x):
            return torch.where(mask, x, torch.full_like(x, fill))

        lp = f(logp).requires_grad_(True)
        en = f(ent).requires_grad_(True)
        loss, stats = policy_loss(
            lp,
            f(old),
            f(adv),
            mask,
            clip_low=0.2,
            clip_high=0.28,
            agg=agg,
            ref_logp=f(ref),
            kl_coef=0.05,
            entropy=en,
            entropy_coef=0.01,
        )
        loss.backward()
        return loss, stats, lp.grad, en.grad

    clean = run(0.0)
    dirty = run(garbage)
    assert torch.isfinite(clean[0])
    assert torch.equal(clean[0], dirty[0])
    for k in clean[1]:
        assert torch.equal(clean[1][k], dirty[1][k]), k
    assert torch.equal(clean[2], dirty[2]) and torch.equal(clean[3], dirty[3])
    assert (dirty[2][~mask] == 0).all() and (dirty[3][~mask] == 0).all()


def test_sequence_advantage_broadcasts():
    logp = -torch.rand(2, 3, generator=torch.Generator().manual_seed(1))
    old = logp + 0.1
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    a = torch.tensor([0.7, -0.4])
    l1, _ = policy_loss(logp, old, a, mask)
    l2, _ = policy_loss(logp, old, a[:, None].expand(2, 3), mask)
    assert torch.equal(l1, l2)


def test_bad_inputs():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="must match"):
        policy_loss(x, torch.zeros(2, 4), torch.zeros(2), torch.ones(2, 3))
    with pytest.raises(ValueError, match="clip_low"):
        policy_loss(x, x, torch.zeros(2), torch.ones(2, 3), clip_low=-0.1)
