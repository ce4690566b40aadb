"""verl_bench.precision: fp32 master weights move under bf16 compute at the paper's lr; bf16 weights do not."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from verl_bench.precision import (
    PrecisionError,
    autocast,
    compute_dtype,
    master_weights_check,
    parse_dtype,
    refresh_rollout_copy,
    rollout_copy,
)

LR = 5e-7  # the paper's learning rate


def _tiny(seed=0) -> LlamaForCausalLM:
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).float()


def _one_step(model, compute, ids) -> dict[str, torch.Tensor]:
    """One AdamW step on a language-modelling loss; returns each parameter's change (in float64)."""
    before = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    with autocast("cpu", compute):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    return {n: p.detach().double() - before[n] for n, p in model.named_parameters()}


def _flat(changes: dict) -> torch.Tensor:
    return torch.cat([d.reshape(-1) for d in changes.values()])


@pytest.fixture(scope="module")
def steps():
    ids = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(1))
    fp32 = _flat(_one_step(_tiny(), torch.float32, ids))
    mixed_model = _tiny()
    mixed = _flat(_one_step(mixed_model, torch.bfloat16, ids))
    pure_model = _tiny().to(torch.bfloat16)  # deliberately wrong: the optimizer steps bf16 weights
    pure = _flat(_one_step(pure_model, torch.bfloat16, ids))
    return fp32, mixed, pure, mixed_model


def test_bf16_compute_moves_fp32_master_weights_like_an_fp32_run(steps):
    fp32, mixed, _, model = steps
    assert all(p.dtype == torch.float32 for p in model.parameters())
    moved = fp32 != 0
    assert moved.float().mean() > 0.99  # AdamW's first step moves every weight with a gradient by ~lr
    frac_mixed = (mixed != 0).float().mean()
    ratio = mixed.abs().mean() / fp32.abs().mean()
    same_direction = (torch.sign(mixed) == torch.sign(fp32))[moved].float().mean()
    print(f"\nbf16 compute, fp32 master: {frac_mixed:.4f} of weights moved, mean |change| ratio to fp32 "
          f"{ratio:.4f}, same sign as fp32 {same_direction:.4f}")
    assert frac_mixed > 0.99
    assert 0.9 < ratio < 1.1
    assert same_direction > 0.9  # bf16 rounding flips the sign of a few near-zero gradients only
    assert fp32.abs().max() < 1.5 * LR  # sanity: the first AdamW step is lr * sign(grad), a 5e-7 move


def test_a_pure_bf16_step_does_not_move_the_weights(steps):
    fp32, _, pure, _ = steps
    frac = (pure != 0).float().mean()
    ratio = pure.abs().mean() / fp32.abs().mean()
    print(f"\npure bf16: {frac:.4f} of weights moved, mean |change| ratio to fp32 {ratio:.3f}")
    assert frac < 0.05
    # the few that move are near zero, where bf16 spacing is fine
    assert ratio < 0.1


def test_the_optimizer_never_steps_bf16_parameters():
    model = _tiny()
    master_weights_check(torch.optim.AdamW(model.parameters(), lr=LR))  # fp32: fine
    model.model.layers[0].to(torch.bfloat16)
    with pytest.raises(PrecisionError, match=r"bfloat16 parameters: master weights must be float32"):
        master_weights_check(torch.optim.AdamW(model.parameters(), lr=LR))


def test_autocast_computes_in_bf16_with_fp32_gradients():
    model = _tiny()
    ids = torch.randint(0, 256, (2, 8))
    seen = []
    hook = model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with autocast("cpu", "bf16"):
        model(input_ids=ids, labels=ids).loss.backward()
    hook.remove()
    assert seen == [torch.bfloat16]
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)
    with autocast("cpu", torch.float32):  # fp32 compute: no autocast at all
        assert not torch.is_autocast_enabled("cpu")


def test_compute_dtype_names():
    assert compute_dtype("auto", "cpu") == torch.float32
    assert compute_dtype(None, "cuda") == torch.bfloat16
    assert compute_dtype("bfloat16", "cpu") == torch.bfloat16
    assert parse_dtype("torch.float16") == torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        parse_dtype("fp8")


def test_rollout_copy_follows_the_master_weights():
    model = _tiny()
    clone = rollout_copy(model, "bf16")
    assert clone is not model and all(p.dtype == torch.bfloat16 and not p.requires_grad for p in clone.parameters())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    refresh_rollout_copy(clone, model)
    for c, m in zip(clone.parameters(), model.parameters()):
        assert torch.equal(c, m.to(torch.bfloat16))
    assert rollout_copy(model, "fp32") is model
