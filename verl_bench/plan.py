"""GPU memory plan of a training run: per-GPU bytes of every term, from the model's architecture alone.

Pure functions, no torch: :class:`Arch` (the numbers of a decoder-only transformer's config),
:func:`param_count` (exact for Llama / Qwen2 / Mistral layouts), :func:`plan_memory` (one
:class:`MemoryPlan` per strategy, its peak and whether it fits). The table, the verdicts and the checks
``train`` and ``sweep`` run are in verl_bench/plan_cli.py.

What is assumed (printed under the table):

* mixed precision: fp32 master weights, fp32 gradients, fp32 AdamW state (m, v); forward/backward compute
  in ``dtype`` (bf16 on GPUs). Under ``fsdp`` the compute copies are FSDP2's unsharded bf16 parameters of
  about two decoder layers at a time (current + prefetched) plus the root module's (embeddings, LM head),
  and one layer's unsharded gradient (bf16, then fp32 for the reduce-scatter). Under ``ddp`` autocast
  keeps a bf16 copy of every Linear weight alive through a micro-batch's forward and backward.
* rollouts sample from a bf16 copy of the weights held for the whole run and refreshed after each update
  (full on every GPU, also under fsdp, as a vLLM-style rollout engine would); the frozen reference model
  (``algo.kl_coef > 0``) is bf16, sharded under fsdp.
* peak = persistent terms + the larger of the rollout phase (KV cache, sampler buffers; validation uses
  ``eval_size / gpus`` greedy rows) and the update phase (compute copies, one micro-batch's activations,
  one LM-head chunk, the rollout's hidden states). The usable memory is ``capacity - RESERVED_BYTES``
  (CUDA context, NCCL, allocator) minus ``HEADROOM`` of the rest (fragmentation, transient buffers).

Activations are the bytes autograd saves for backward, counted per token per decoder layer from the
architecture (:func:`layer_activation_bytes`); tests/test_plan.py checks the formula against the bytes
``torch.autograd.graph.saved_tensors_hooks`` sees on real tiny models, exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

GB = 1e9
RESERVED_BYTES = 2 * 2**30  # CUDA context + NCCL buffers + allocator slack, per GPU
HEADROOM = 0.10  # of what is left: fragmentation and buffers the plan does not model
STRATEGIES = ("ddp", "fsdp")
FP32, ADAM_STATES = 4, 2  # master weights / grads / optimizer states are fp32; AdamW keeps m and v


@dataclass(frozen=True)
class Arch:
    """A decoder-only transformer (Llama / Qwen2 / Mistral layout: RMSNorm, GQA attention, SwiGLU MLP)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    head_dim: int = 0  # 0: hidden // heads
    qkv_bias: bool = False  # Qwen2: q, k, v projections have a bias
    o_bias: bool = False
    mlp_bias: bool = False
    name: str = ""
    source: str = ""  # where the numbers came from (a config.json, plan_models.yaml)

    @property
    def dim(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def q_dim(self) -> int:
        return self.heads * self.dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.dim


def layer_params(a: Arch) -> int:
    """Parameters of one decoder layer: q, k, v, o projections, the SwiGLU MLP and two RMSNorm weights."""
    attn = a.hidden * (a.q_dim + 2 * a.kv_dim) + a.q_dim * a.hidden
    attn += (a.q_dim + 2 * a.kv_dim) * a.qkv_bias + a.hidden * a.o_bias
    mlp = 3 * a.hidden * a.intermediate + (2 * a.intermediate + a.hidden) * a.mlp_bias
    return attn + mlp + 2 * a.hidden


def root_params(a: Arch) -> int:
    """Parameters outside the decoder layers: embeddings, LM head (unless tied), final norm."""
    return a.vocab * a.hidden * (1 if a.tied else 2) + a.hidden


def param_count(a: Arch) -> int:
    return a.layers * layer_params(a) + root_params(a)


def linear_params(a: Arch) -> int:
    """Parameters autocast casts to the compute dtype: every Linear weight, the (tied) LM head included."""
    norms = (2 * a.layers + 1) * a.hidden
    embedding_only = 0 if a.tied else a.vocab * a.hidden
    return param_count(a) - norms - embedding_only


def layer_activation_bytes(a: Arch, compute: int, autocast: bool, masked: bool = True) -> int:
    """Bytes autograd saves per token in one decoder layer (HF Llama/Qwen2/Mistral code, SDPA attention).

    ``compute``: bytes of the compute dtype (2 for bf16). With the parameters in the compute dtype (FSDP2
    MixedPrecisionPolicy, or a pure-dtype model): each RMSNorm saves its input upcast to fp32, rsqrt, the
    normalised value and the weighted output (the next Linear's input): (4 + 2c) h + 4; attention saves
    rotated q, k and v, the output (the o_proj input shares it) and a log-sum-exp per head; the MLP saves
    gate, up, silu(gate) and their product. Under autocast with fp32 parameters the residual stream stays
    fp32 and every Linear saves its own bf16 cast of its input (q, k, v: 3; gate, up: 2). ``masked``: with
    a padding mask (every batch of left-padded prompts) transformers repeats k and v to all heads for SDPA.
    """
    c = compute
    kv = a.q_dim if masked and a.kv_heads < a.heads else a.kv_dim
    attention = c * (2 * a.q_dim + 2 * kv) + 4 * a.heads
    mlp = 4 * c * a.intermediate
    if autocast and c < FP32:
        norms = 2 * (8 * a.hidden + 4) + 5 * c * a.hidden
    else:
        norms = 2 * ((4 + 2 * c) * a.hidden + 4)
    return norms + attention + mlp


def activation_bytes(a: Arch, rows: int, seq: int, response: int, compute: int, autocast: bool,
                     checkpointing: bool) -> int:
    """Saved bytes of one padded scoring micro-batch of ``rows`` x ``seq`` tokens, ``response`` of them scored.

    Without checkpointing every layer keeps :func:`layer_activation_bytes` per token, and SDPA's additive
    copy of the padding mask (rows x seq x seq in the compute dtype); with HF's per-layer checkpoint each
    layer keeps only its input, and one layer is recomputed at a time in backward. Plus the input ids,
    RoPE's cos and sin, the final norm and the response rows the checkpointed LM head keeps.
    """
    tokens = rows * seq
    residual = FP32 if autocast else compute  # the residual stream's dtype (fp32 under autocast)
    layer = tokens * layer_activation_bytes(a, compute, autocast) + rows * seq * seq * compute
    body = a.layers * tokens * residual * a.hidden + layer if checkpointing else a.layers * layer
    per_token = 8 + 2 * a.dim * residual + (FP32 + compute) * a.hidden + 4  # ids, cos + sin, final norm
    head_rows = rows * response * (residual * a.hidden + 16)  # + the indices of the scored tokens
    return body + tokens * per_token + head_rows + 8 * rows


def kv_cache_bytes(a: Arch, rows: int, tokens: int, compute: int) -> int:
    return rows * tokens * a.layers * 2 * a.kv_dim * compute


@dataclass
class Workload:
    """The per-GPU shapes a config implies (see :func:`workload`)."""

    gpus: int
    rollout_rows: int  # responses sampled per GPU per step
    prompts: int  # prompts per GPU per step
    eval_rows: int  # greedy validation rows per GPU
    prompt_tokens: int
    max_new_tokens: int
    eval_new_tokens: int
    micro_rows: int  # rows of the largest scoring micro-batch
    compute_bytes: int
    checkpointing: bool
    reference: bool
    chunk_tokens: int  # LM-head rows per chunk
    share_prompt: bool = False


def workload(cfg, gpus: int | None = None, prompt_tokens: int = 512) -> Workload:
    """The per-GPU shapes of a ``TrainConfig`` on ``gpus`` GPUs (default ``ray.num_workers``).

    ``prompt_tokens``: the padded prompt length (not in the config; MATH prompts with the paper's templates
    are 100-300 tokens). The largest micro-batch holds ``micro_batch`` of the longest responses (at most
    ``micro_batch_tokens // max_new_tokens`` of them, and no more than a mini-batch).
    """
    gpus = gpus or cfg.ray.num_workers
    prompts = math.ceil(cfg.rollout.prompts_per_step / gpus)
    rows = prompts * cfg.rollout.n
    mini = math.ceil(rows / cfg.algo.mini_batches)
    micro = min(cfg.micro_batch or mini, mini)
    if cfg.micro_batch_tokens:
        micro = max(1, min(micro, cfg.micro_batch_tokens // cfg.rollout.max_new_tokens))
    return Workload(
        gpus=gpus, rollout_rows=rows, prompts=prompts, eval_rows=math.ceil(cfg.data.eval_size / gpus),
        prompt_tokens=prompt_tokens, max_new_tokens=cfg.rollout.max_new_tokens,
        eval_new_tokens=cfg.rollout.eval_max_new_tokens or cfg.rollout.max_new_tokens, micro_rows=micro,
        compute_bytes=FP32 if cfg.dtype == "float32" else 2, checkpointing=cfg.gradient_checkpointing,
        reference=cfg.algo.kl_coef > 0, chunk_tokens=cfg.logits_chunk_tokens, share_prompt=cfg.share_prompt)


@dataclass
class Term:
    key: str  # stable name, used in messages and tests
    label: str
    bytes: int
    phase: str  # persistent | rollout | update | info (shown, not summed)


@dataclass
class MemoryPlan:
    strategy: str
    arch: Arch
    work: Workload
    terms: list[Term] = field(default_factory=list)

    def term(self, key: str) -> Term:
        return next(t for t in self.terms if t.key == key)

    def phase_bytes(self, phase: str) -> int:
        return sum(t.bytes for t in self.terms if t.phase == phase)

    @property
    def peak(self) -> int:
        return self.phase_bytes("persistent") + max(self.phase_bytes("rollout"), self.phase_bytes("update"))

    def fits(self, capacity_bytes: float) -> bool:
        return self.peak <= usable_bytes(capacity_bytes)

    def biggest(self) -> Term:
        """The largest term that counts toward the peak (the phase that sets it, plus the persistent terms)."""
        phase = "rollout" if self.phase_bytes("rollout") > self.phase_bytes("update") else "update"
        return max((t for t in self.terms if t.phase in ("persistent", phase)), key=lambda t: t.bytes)


def usable_bytes(capacity_bytes: float) -> float:
    return (capacity_bytes - RESERVED_BYTES) * (1 - HEADROOM)


def plan_memory(a: Arch, w: Workload, strategy: str) -> MemoryPlan:
    """Per-GPU bytes of each term under ``ddp`` (everything replicated) or ``fsdp`` (sharded over the GPUs)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    n, c = param_count(a), w.compute_bytes
    shard = w.gpus if strategy == "fsdp" else 1
    low = c < FP32  # a separate compute / rollout copy exists only when computing below fp32
    seq, eval_seq = w.prompt_tokens + w.max_new_tokens, w.prompt_tokens + w.eval_new_tokens
    act = lambda ckpt: activation_bytes(a, w.micro_rows, seq, w.max_new_tokens, c, strategy == "ddp", ckpt)
    if w.share_prompt:  # each prompt's activations stay alive for all its samples' micro-batches
        act = lambda ckpt, _f=act: _f(ckpt) + activation_bytes(a, w.prompts, w.prompt_tokens, 0, c,
                                                              strategy == "ddp", ckpt)
    if strategy == "fsdp":
        compute_copy = c * root_params(a) + (2 * c + c + FP32) * layer_params(a)  # 2 layers' params, 1's grads
    else:
        compute_copy = c * linear_params(a) if low else 0
    ckpt_key = "activations_ckpt" if w.checkpointing else "activations"
    other_key = "activations" if w.checkpointing else "activations_ckpt"
    terms = [
        Term("weights", "weights (fp32 master)", FP32 * n // shard, "persistent"),
        Term("gradients", "gradients (fp32)", FP32 * n // shard, "persistent"),
        Term("optimizer", "optimizer state (AdamW m, v; fp32)", ADAM_STATES * FP32 * n // shard, "persistent"),
        Term("reference", f"reference model ({dtype_name(c)}, kl_coef > 0)", c * n // shard if w.reference else 0,
             "persistent"),
        Term("rollout_copy", f"rollout weights ({dtype_name(c)} copy)", c * n if low else 0, "persistent"),
        Term("kv_cache", f"KV cache: {w.rollout_rows} rows x {seq} tokens",
             kv_cache_bytes(a, w.rollout_rows, seq, c), "rollout"),
        Term("kv_cache_eval", f"KV cache, validation: {w.eval_rows} rows x {eval_seq} tokens",
             kv_cache_bytes(a, w.eval_rows, eval_seq, c), "info"),
        Term("sampler", "sampler buffers (hidden states, logits)",
             w.rollout_rows * (w.max_new_tokens * a.hidden * c + a.vocab * (c + 20)), "rollout"),
        Term("compute_copy", "compute copies (ddp: autocast casts; fsdp: unsharded layers)", compute_copy,
             "update"),
        Term(ckpt_key, _act_label(w, seq, w.checkpointing), act(w.checkpointing), "update"),
        Term(other_key, _act_label(w, seq, not w.checkpointing) + " *", act(not w.checkpointing), "info"),
        Term("lm_head", f"LM-head chunk ({w.chunk_tokens} rows x {a.vocab} logits)",
             min(w.chunk_tokens, w.micro_rows * w.max_new_tokens) * a.vocab * (c + 16), "update"),
        Term("rollout_tensors", "rollout hidden states, log-probs",
             w.rollout_rows * w.max_new_tokens * (a.hidden * c + 16), "update"),
    ]
    plan = MemoryPlan(strategy, a, w, terms)
    kv_train, kv_eval = plan.term("kv_cache"), plan.term("kv_cache_eval")
    if kv_eval.bytes > kv_train.bytes:  # validation's greedy rows need more cache than training's rollouts
        kv_eval.phase, kv_train.phase = "rollout", "info"
    return plan


def dtype_name(c: int) -> str:
    return "bf16" if c == 2 else "fp32"


def _act_label(w: Workload, seq: int, ckpt: bool) -> str:
    how = "checkpointed" if ckpt else "no checkpointing"
    return f"activations ({how}): {w.micro_rows} rows x {seq} tokens"
