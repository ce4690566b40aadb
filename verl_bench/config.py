"""Training configuration: nested dataclasses (the one source of truth for defaults) and a strict loader.

``load_config("run.yaml", ["shaping.kappa=4", "steps=50"])`` reads YAML, applies ``key=value`` overrides
and validates everything before any model is loaded: unknown keys (with a did-you-mean), wrong types and
bad values are ``ConfigError``s that name the file, the line and the dotted key.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from verl_bench.errors import UserError
from verl_bench.rollout_vllm import VLLMOptions
from verl_bench.shaping import ShapingConfig


class ConfigError(UserError):
    """A configuration problem, located: file, line and dotted key."""


@dataclass
class DataConfig:
    train: str = "arithmetic_l1"  # a registry name (verl_bench.data)
    eval: str = "arithmetic_test_l1"  # held-out set for the quick validation score
    data_root: str | None = None  # benchmark files; default: $VERL_BENCH_DATA
    template: str = "chat"  # prompt template: chat | qwen-boxed | abel | plain
    train_size: int | None = None  # cap on training problems (None: all)
    eval_size: int = 64  # problems in the quick validation


@dataclass
class RolloutConfig:
    engine: Literal["cached", "hf", "vllm"] = "cached"  # cached: shared prefill, finished samples leave the
    #                                                   batch; vllm: a colocated vLLM (verl_bench.rollout_vllm)
    prompts_per_step: int = 4  # across all workers
    n: int = 8  # samples per prompt (the GRPO group)
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    min_new_tokens: int = 0  # EOS cannot be sampled before this many tokens (HF's min_new_tokens); set it to
    #                          max_new_tokens to time steps at a fixed length (see benchmarks/grpo_step.py)
    eval_max_new_tokens: int | None = None  # default: max_new_tokens
    vllm: VLLMOptions = field(default_factory=VLLMOptions)  # read only with engine: vllm


@dataclass
class RewardConfig:
    scheme: Literal["binary", "boxed"] = "binary"
    timeout_s: float = 2.0  # hard bound per answer check


@dataclass
class RankConfig:
    stride: int = 40
    window: int = 512
    dtype: Literal["float64", "float32"] = "float64"


@dataclass
class AlgoConfig:
    estimator: str = "grpo"  # grpo | dr_grpo | rloo (verl_bench.grpo registry)
    lr: float = 1e-6
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    clip_low: float = 0.2
    clip_high: float | None = None  # None: symmetric
    loss_agg: Literal["token_mean", "seq_mean"] = "token_mean"
    kl_coef: float = 0.0  # low-variance k3 KL to the frozen initial policy
    entropy_coef: float = 0.0
    mini_batches: int = 1  # optimizer steps per rollout batch
    tis_cap: float | None = None  # truncated importance sampling of the sampler/policy mismatch (engine vllm
    #                               only): each token's loss weighted by min(pi_policy / pi_vllm, tis_cap)


@dataclass
class RayConfig:
    num_workers: int = 1  # Ray Train workers
    # ddp: every worker holds the whole model, gradients averaged after backward; fsdp: parameters, gradients
    # and optimizer state sharded over the workers (FSDP2, verl_bench.distributed.shard_scorer)
    strategy: Literal["ddp", "fsdp"] = "ddp"
    use_gpu: bool = False
    cpus_per_worker: int = 1
    address: str | None = None  # None: start a local Ray


@dataclass
class TrainConfig:
    model: str = "smollm2-135m-instruct"
    run_dir: str = "runs/default"
    seed: int = 0
    steps: int = 20
    checkpoint_every: int = 10  # 0: only at the end
    keep_checkpoints: int = 2  # newest checkpoints kept on disk (0: all)
    eval_every: int = 0  # steps between quick validations (0: only before and after)
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    device: str = "auto"
    gradient_checkpointing: bool = False  # HF per-layer recompute inside each micro-batch (less memory, slower)
    logits_chunk_tokens: int = 512  # LM-head rows per chunk: 512 x 49k vocab x 4 B = 100 MB of logits at a time
    micro_batch: int | None = 8  # responses per scoring micro-batch, grouped by length (None: all at once); the
    #                              update backpropagates one micro-batch at a time, so it bounds activation memory
    micro_batch_tokens: int | None = None  # and at most this many padded response positions (rows x width):
    #                                          bounds activation memory whatever the lengths (None: no cap)
    share_prompt: bool = False  # score each prompt once per rollout, its KV cache shared by its samples (exact)
    threads: int | None = None  # torch CPU threads (None: torch's default)
    max_nonfinite_steps: int = 3  # a non-finite loss or gradient norm skips the step; this many in a row stop the run
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    rank: RankConfig = field(default_factory=RankConfig)
    shaping: ShapingConfig = field(default_factory=ShapingConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        checks = [
            (self.steps >= 1, "steps", "must be >= 1"),
            (self.rollout.n >= 1, "rollout.n", "must be >= 1"),
            (self.rollout.prompts_per_step >= 1, "rollout.prompts_per_step", "must be >= 1"),
            (self.rollout.max_new_tokens >= 1, "rollout.max_new_tokens", "must be >= 1"),
            (0 <= self.rollout.min_new_tokens <= self.rollout.max_new_tokens, "rollout.min_new_tokens",
             "must be in [0, rollout.max_new_tokens]"),
            (self.rollout.temperature > 0, "rollout.temperature", "must be > 0 (GRPO samples; greedy is for evaluation)"),
            (0 < self.rollout.top_p <= 1, "rollout.top_p", "must be in (0, 1]"),
            (self.algo.lr > 0, "algo.lr", "must be > 0"),
            (self.algo.clip_low > 0, "algo.clip_low", "must be > 0"),
            (self.algo.mini_batches >= 1, "algo.mini_batches", "must be >= 1"),
            (self.rank.stride >= 1, "rank.stride", "must be >= 1"),
            (self.rank.window >= 1, "rank.window", "must be >= 1"),
            (self.rank.window >= 2 * self.rank.stride, "rank.window",
             (f"must be >= 2 x rank.stride ({2 * self.rank.stride}): ERV and ERA need two prefixes inside the "
              "window, else they are always 0")),
            (self.ray.num_workers >= 1, "ray.num_workers", "must be >= 1"),
            (self.ray.strategy in ("ddp", "fsdp"), "ray.strategy", "must be 'ddp' or 'fsdp'"),
            (self.checkpoint_every >= 0, "checkpoint_every", "must be >= 0"),
            (self.max_nonfinite_steps >= 1, "max_nonfinite_steps", "must be >= 1"),
            (self.micro_batch is None or self.micro_batch >= 1, "micro_batch", "must be >= 1 or null"),
            (self.micro_batch_tokens is None or self.micro_batch_tokens >= 1, "micro_batch_tokens",
             "must be >= 1 or null"),
            (self.rollout.prompts_per_step % max(self.ray.num_workers, 1) == 0, "rollout.prompts_per_step",
             f"must be a multiple of ray.num_workers ({self.ray.num_workers})"),
            (self.algo.mini_batches <= self.rollout.prompts_per_step * self.rollout.n, "algo.mini_batches",
             "must not exceed the responses per step"),
            (not (self.share_prompt and self.gradient_checkpointing), "share_prompt",
             ("cannot be combined with gradient_checkpointing: HF turns off the KV cache that carries the shared "
              "prompt under it (memory is bounded by micro_batch_tokens either way: lower it instead)")),
            (self.algo.tis_cap is None or self.algo.tis_cap >= 1, "algo.tis_cap", "must be >= 1 or null"),
            (self.algo.tis_cap is None or self.rollout.engine == "vllm", "algo.tis_cap",
             "corrects vLLM's sampling mismatch: it needs rollout.engine: vllm"),
            *self.rollout.vllm.checks(),
        ]
        for ok, key, why in checks:
            if not ok:
                raise ConfigError(f"{key}: {why} (got {_get(self, key)!r})")
        from verl_bench.data import PROMPT_TEMPLATES, dataset_names
        from verl_bench.grpo import ESTIMATORS  # the registries are the lists of valid names

        if self.algo.estimator not in ESTIMATORS:
            raise ConfigError(f"algo.estimator: unknown estimator {self.algo.estimator!r}; "
                              f"known: {sorted(ESTIMATORS)}")
        if self.data.template not in PROMPT_TEMPLATES:
            raise ConfigError(f"data.template: unknown prompt template {self.data.template!r}; "
                              f"known: {list(PROMPT_TEMPLATES)}")
        for key in ("train", "eval"):
            name = getattr(self.data, key)
            if name not in dataset_names():
                close = difflib.get_close_matches(name, dataset_names(), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"data.{key}: unknown dataset {name!r}{hint}")


def _get(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


# ----------------------------------------------------------------------------------------------- loading
def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict | None = None) -> TrainConfig:
    """YAML file (or ``base`` dict) + ``key=value`` overrides -> a validated TrainConfig."""
    data: dict[str, Any] = copy.deepcopy(base or {})  # the overrides below must not write into ``base``
    lines: dict[str, int] = {}
    source = "<config>"
    if path is not None:
        source = str(path)
        text = _read(Path(path))
        try:
            loaded = yaml.safe_load(text)
            lines = _key_lines(text)
        except yaml.YAMLError as e:
            raise yaml_error(source, e) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of keys, got {type(loaded).__name__}")
        data = _merge(data, loaded)
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. shaping.kappa=4")
        _set_dotted(data, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
        lines[key.strip()] = -1  # marks "came from --set"
    return from_dict(TrainConfig, data, source=source, lines=lines)


def _read(path: Path) -> str:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    return path.read_text()


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {p!r} is not a section")
    node[parts[-1]] = value


def yaml_error(source: str, e: yaml.YAMLError) -> ConfigError:
    """A YAML parse error in one line, ``file:line: not valid YAML: what``, not PyYAML's multi-line text."""
    mark = getattr(e, "problem_mark", None)
    where = f"{source}:{mark.line + 1}" if mark is not None else source
    what = " ".join(str(getattr(e, "problem", None) or e).split())
    return ConfigError(f"{where}: not valid YAML: {what}")


def _key_lines(text: str) -> dict[str, int]:
    """Dotted key -> 1-based line of that key in the YAML text."""
    out: dict[str, int] = {}

    def walk(node, prefix):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = f"{prefix}{k.value}"
                out[key] = k.start_mark.line + 1
                walk(v, key + ".")

    walk(yaml.compose(text), "")
    return out


def _where(source: str, lines: dict[str, int], key: str) -> str:
    line = lines.get(key)
    if line == -1:
        return f"--set {key}"
    return f"{source}:{line}: {key}" if line else f"{source}: {key}"


def from_dict(cls, data: Any, *, source: str = "<config>", lines: dict[str, int] | None = None,
              prefix: str = ""):
    """Build dataclass ``cls`` from a (nested) dict, strictly."""
    lines = lines or {}
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{_where(source, lines, prefix.rstrip('.'))}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{_where(source, lines, dotted)}: unknown key{hint}; "
                              f"known keys here: {sorted(fields)}")
        kwargs[key] = _coerce(hints[key], value, source, lines, dotted)
    try:
        obj = cls(**kwargs)
    except (ValueError, TypeError) as e:
        # ShapingConfig validates in __post_init__ and names its own field ("ShapingConfig.kappa ..."):
        # locate that field's line when the message names one, else the section's
        named = re.search(rf"\b{cls.__name__}\.(\w+)", str(e))
        key = f"{prefix}{named.group(1)}" if named else (prefix.rstrip(".") or cls.__name__)
        raise ConfigError(f"{_where(source, lines, key)}: {e}") from None
    if prefix == "" and hasattr(obj, "validate"):
        try:
            obj.validate()
        except ConfigError as e:
            key = str(e).split(":", 1)[0]
            raise ConfigError(f"{_where(source, lines, key)}:{str(e).split(':', 1)[1]}") from None
    return obj


def _coerce(tp, value, source, lines, dotted):
    where = _where(source, lines, dotted)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, source=source, lines=lines, prefix=dotted + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, source, lines, dotted)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: must be one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} numbers, got {value!r}")
        return tuple(_coerce(a, v, source, lines, dotted) for a, v in zip(args, value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        # YAML 1.1 reads "5e-7" (no dot) as a string; a number written that way is still a number
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+(\.\d*)?[eE][+-]?\d+", value.strip()):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def dump_config(cfg: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(_plain(cfg.to_dict()), sort_keys=False))


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x
