"""verl_bench.plan: parameter counts, activation bytes and the fp32 training state against real tensors;
the paper config on 8 x 80 GB (refused under ddp, accepted under fsdp); the CLI and the pre-launch check."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from verl_bench.cli import main
from verl_bench.config import ConfigError, load_config
from verl_bench.models import resolve_model
from verl_bench.plan import GB, activation_bytes, layer_activation_bytes, param_count, plan_memory, workload
from verl_bench.plan_arch import arch_from_config, known_models, model_arch
from verl_bench.plan_cli import check_plan, plans_for
from verl_bench.policy import ResponseScorer

PAPER = Path(__file__).resolve().parents[1] / "verl_bench" / "configs" / "qwen2.5-7b-grpo-paper.yaml"
TINY_LAYOUTS = {
    "llama": dict(model_type="llama", tie_word_embeddings=True),
    "llama-biased": dict(model_type="llama", attention_bias=True, mlp_bias=True, tie_word_embeddings=False,
                         head_dim=24),
    "qwen2": dict(model_type="qwen2", tie_word_embeddings=False),
    "mistral": dict(model_type="mistral"),
}


def _config(layout: str, layers: int = 2, **extra):
    fields = dict(TINY_LAYOUTS[layout])
    kind = fields.pop("model_type")
    fields = dict(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, **fields, **extra)
    return AutoConfig.for_model(kind, **fields)


def _model(cfg, dtype=torch.float32):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).to(dtype).train()


# ------------------------------------------------------------------------------------ parameter counts
@pytest.mark.parametrize("layout", TINY_LAYOUTS)
def test_param_count_equals_a_real_models_numel(layout):
    cfg = _config(layout)
    assert param_count(arch_from_config(cfg.to_dict())) == sum(p.numel() for p in _model(cfg).parameters())


def test_param_counts_of_the_shipped_architectures_equal_transformers_on_the_meta_device():
    for hub_id, fields in known_models().items():
        fields = dict(fields)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(fields.pop("model_type"), **fields))
        assert param_count(arch_from_config(known_models()[hub_id])) == sum(p.numel() for p in model.parameters())
    assert param_count(model_arch("Qwen/Qwen2.5-7B")) == 7_615_616_512  # the model card's 7.61 B


# ----------------------------------------------------------------------------------------- activations
def _saved_bytes(model, fn) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn`` runs (parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def _score(model, rows=4, prompt=24, response=40, padded=True, autocast=False):
    """The update's scoring forward (with grad) of a left-padded rollout, as train.py runs it."""
    ids = torch.randint(0, 300, (rows, prompt + response), generator=torch.Generator().manual_seed(0))
    attn = torch.ones_like(ids)
    if padded:
        attn[0, :5] = attn[1, :2] = 0
    mask = torch.ones(rows, response, dtype=torch.bool)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        ResponseScorer(model)(ids, attn, prompt, ids[:, prompt:], mask, 512, False, 1.0, None)


MODES = {"bf16": (torch.bfloat16, False), "fp32": (torch.float32, False), "autocast": (torch.float32, True)}


@pytest.mark.parametrize("layout", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padded", [True, False])
def test_per_layer_activation_bytes_equal_what_autograd_saves(layout, mode, padded):
    dtype, autocast = MODES[mode]
    compute = 2 if autocast or dtype == torch.bfloat16 else 4
    measured = {}
    for layers in (1, 3):
        model = _model(_config(layout, layers), dtype)
        measured[layers] = _saved_bytes(model, lambda m=model: _score(m, padded=padded, autocast=autocast))
    per_layer = (measured[3] - measured[1]) / 2
    arch = arch_from_config(_config(layout).to_dict())
    expected = 4 * 64 * layer_activation_bytes(arch, compute, autocast, masked=padded)
    if padded:
        expected += 4 * 64 * 64 * compute  # SDPA's additive copy of the padding mask, per layer
    if autocast:  # autocast's bf16 weight casts are saved too: the plan's compute_copy term, not activations
        expected += compute * (arch.hidden * (arch.q_dim + 2 * arch.kv_dim) + arch.q_dim * arch.hidden
                               + 3 * arch.hidden * arch.intermediate)
    assert per_layer == expected


@pytest.mark.parametrize("mode", ["bf16", "fp32"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_a_micro_batchs_activation_bytes_match_the_measured_saved_bytes(mode, checkpointing):
    dtype, _ = MODES[mode]
    compute = 2 if dtype == torch.bfloat16 else 4
    cfg = _config("llama", 3)
    model = _model(cfg, dtype)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    measured = _saved_bytes(model, lambda: _score(model))
    arch = arch_from_config(cfg.to_dict())
    planned = activation_bytes(arch, 4, 64, 40, compute, False, checkpointing)
    if checkpointing:  # the hooks see the forward only: the layer recomputed in backward is not there yet
        planned -= 4 * 64 * layer_activation_bytes(arch, compute, False) + 4 * 64 * 64 * compute
    print(f"\n{mode} checkpointing={checkpointing}: planned {planned} B, autograd saved {measured} B")
    assert measured <= planned <= 1.1 * measured


# ----------------------------------------------------------------- the fp32 training state vs real tensors
def test_weights_gradients_and_optimizer_state_match_the_real_tensors_after_one_step(tmp_path):
    cfg = load_config(None, ["model=tiny:plan"])
    arch = model_arch(cfg.model)  # from the tiny model's config.json
    model = AutoModelForCausalLM.from_pretrained(resolve_model(cfg.model), dtype=torch.float32).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    ids = torch.randint(0, arch.vocab, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    real = {
        "weights": sum(p.numel() * p.element_size() for p in model.parameters()),
        "gradients": sum(p.grad.numel() * p.grad.element_size() for p in model.parameters()),
        "optimizer": sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                         if torch.is_tensor(t)),
    }
    plan = plan_memory(arch, workload(cfg, 1), "ddp")
    for key, nbytes in real.items():
        assert abs(plan.term(key).bytes - nbytes) <= 0.05 * nbytes, (key, plan.term(key).bytes, nbytes)
    sharded = plan_memory(arch, workload(cfg, 4), "fsdp")
    assert sharded.term("optimizer").bytes == plan.term("optimizer").bytes // 4


# ------------------------------------------------------------------------------------- the paper config
def test_the_paper_config_on_8_x_80gb_is_refused_under_ddp_and_accepted_under_fsdp():
    cfg = load_config(PAPER)
    with pytest.raises(ConfigError, match=r"ddp: does not fit.*biggest term is optimizer state.*fsdp would fit"):
        check_plan(cfg, gpus=8, gpu_memory_gb=80, strategy="ddp")
    plan = check_plan(cfg, gpus=8, gpu_memory_gb=80, strategy="fsdp")
    assert plan.peak < 80 * GB
    ddp, fsdp = plans_for(cfg, 8)
    assert ddp.term("weights").bytes == 4 * 7_615_616_512 == 8 * fsdp.term("weights").bytes
    # without gradient checkpointing the activations alone overflow an 80 GB GPU even under fsdp
    no_ckpt = dataclasses.replace(cfg, gradient_checkpointing=False)
    with pytest.raises(ConfigError, match=r"biggest term is activations \(no checkpointing\).*gradient_checkpointing"):
        check_plan(no_ckpt, gpus=8, gpu_memory_gb=80, strategy="fsdp")


def test_check_plan_does_nothing_on_a_cpu_machine_unless_told_the_gpus():
    assert not torch.cuda.is_available()
    assert check_plan(load_config(PAPER)) is None
    assert check_plan(load_config(PAPER), gpu_memory_gb=80, strategy="fsdp") is not None
    # a model the plan cannot count is trained anyway (with a warning), not refused
    unknown = dataclasses.replace(load_config(PAPER), model="nobody/no-such-model")
    assert check_plan(unknown, gpus=8, gpu_memory_gb=80) is None


def test_arch_sources(tmp_path):
    assert "plan_models.yaml" in model_arch("qwen/qwen2.5-7b").source  # the hub id, any case, offline
    assert model_arch("Mathstral-7B-v0.1").vocab == 32768  # the name without its org
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(_config("qwen2").to_dict()))
    assert model_arch(str(folder)).qkv_bias and model_arch(str(folder)).source.endswith("config.json")
    with pytest.raises(ConfigError, match="not in plan_models.yaml"):
        model_arch("nobody/no-such-model")
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ConfigError, match="model_type 'gpt2'"):
        model_arch(str(folder) + "/")


# -------------------------------------------------------------------------------------------------- CLI
def test_plan_cli_prints_the_table_and_the_verdicts(capsys):
    assert main(["plan", str(PAPER), "--gpus", "8", "--gpu-memory", "80"]) == 0
    out = capsys.readouterr().out
    assert "optimizer state (AdamW m, v; fp32)" in out and "KV cache" in out and "activations (no checkpointing)" in out
    assert "ddp: does not fit" in out and "fsdp: fits" in out
    assert main(["plan", str(PAPER), "--gpus", "1", "--strategy", "ddp", "--gpu-memory", "80"]) == 1
    assert main(["plan", str(PAPER), "--gpus", "0"]) == 2
    assert "--gpus: must be positive" in capsys.readouterr().err
    assert main(["plan", str(PAPER), "--set", "model=nobody/no-such-model"]) == 2


def test_a_sweep_is_refused_when_a_trial_cannot_fit_its_share_of_a_gpu(tmp_path, monkeypatch):
    from verl_bench import plan_cli
    from verl_bench.sweep import load_sweep

    sweep = tmp_path / "space.yaml"
    sweep.write_text(f"""
base: {{from: {PAPER}, model: Qwen/Qwen2.5-0.5B, ray: {{num_workers: 1}}}}
space:
  rollout.max_new_tokens: {{int: [512, 16384]}}
search: {{algo: random, seed: 0}}
num_samples: 2
resources: {{cpu: 1, gpu: 0.5}}
""")
    spec = load_sweep(sweep)
    monkeypatch.setattr(plan_cli, "local_gpu_bytes", lambda: 80 * GB)  # as on one 80 GB GPU
    # 0.5 GB of parameters fits easily, but 48 prompts x 4 samples x 16k new tokens of KV cache on half a
    # GPU does not: the message names the trial's values, the biggest term and what to change
    with pytest.raises(ConfigError, match=r"space.yaml: a trial with \{'rollout.max_new_tokens': 16384\}.*KV cache"):
        plan_cli.check_sweep_plan(spec)
    sweep.write_text(sweep.read_text().replace("16384]", "1024]"))
    plan_cli.check_sweep_plan(load_sweep(sweep))  # fits


def _fsdp_worker(rank: int, port: int, out_dir: str) -> None:
    """FSDP2 over 2 gloo processes, bf16 compute over fp32 shards: one AdamW step, then this rank's bytes."""
    import torch.distributed as dist
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        model = _model(_config("qwen2", 2))
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for layer in model.model.layers:
            fully_shard(layer, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
        ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(rank))
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        local = lambda t: t.to_local() if hasattr(t, "to_local") else t
        nbytes = lambda ts: sum(local(t).numel() * local(t).element_size() for t in ts)
        sizes = {"weights": nbytes(model.parameters()), "gradients": nbytes(p.grad for p in model.parameters()),
                 "optimizer": nbytes(t for s in opt.state.values() for t in s.values() if t.numel() > 1),
                 "dtypes": sorted({str(local(p).dtype) for p in model.parameters()})}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(sizes))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_fsdp_shards_hold_the_planned_bytes_per_rank(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_fsdp_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    cfg = load_config(None, ["ray.num_workers=2"])
    plan = plan_memory(arch_from_config(_config("qwen2", 2).to_dict()), workload(cfg, 2), "fsdp")
    for rank in (0, 1):
        real = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert real["dtypes"] == ["torch.float32"]  # the shards are the fp32 master weights
        for key in ("weights", "gradients", "optimizer"):
            assert abs(plan.term(key).bytes - real[key]) <= 0.05 * real[key], (rank, key, plan.term(key).bytes, real)
