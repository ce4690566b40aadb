"""A model spec -> its architecture (:class:`verl_bench.plan.Arch`), from a config.json only: no weights.

Where the numbers come from, in order: a local HF folder's ``config.json``; a ``tiny:`` spec's folder (built
in the cache in about a second, as training would); the embedded default's converted folder when it is
cached; a hub id's ``config.json`` in the local Hugging Face cache; ``plan_models.yaml`` shipped with the
package (the paper's models and a few smaller ones); and, when the hub may be used, the hub's
``config.json`` alone.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import yaml

from verl_bench.config import ConfigError
from verl_bench.plan import Arch

KNOWN_FILE = Path(__file__).resolve().parent / "plan_models.yaml"
LAYOUTS = ("llama", "qwen2", "mistral")  # RMSNorm + GQA attention + SwiGLU MLP, as plan.layer_params counts


class UnknownArchitecture(ConfigError):
    """The model's architecture cannot be had or is not one the plan counts (the pre-launch check skips it)."""


def arch_from_config(cfg: dict, name: str = "", source: str = "") -> Arch:
    """An :class:`Arch` from a config.json mapping; refuses layouts the plan does not count."""
    kind = cfg.get("model_type", "")
    if kind not in LAYOUTS:
        raise UnknownArchitecture(f"{source or name}: model_type {kind!r}: the memory plan counts "
                                  f"{list(LAYOUTS)} layouts")
    heads = cfg["num_attention_heads"]
    bias = bool(cfg.get("attention_bias", False))
    return Arch(
        layers=cfg["num_hidden_layers"], hidden=cfg["hidden_size"], intermediate=cfg["intermediate_size"],
        heads=heads, kv_heads=cfg.get("num_key_value_heads") or heads, vocab=cfg["vocab_size"],
        tied=bool(cfg.get("tie_word_embeddings", kind != "mistral")),  # transformers' defaults per layout
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        qkv_bias=kind == "qwen2" or (kind == "llama" and bias),  # Qwen2: q, k, v always carry a bias
        o_bias=kind == "llama" and bias, mlp_bias=kind == "llama" and bool(cfg.get("mlp_bias", False)),
        name=name, source=source)


@functools.cache
def known_models() -> dict[str, dict]:
    return yaml.safe_load(KNOWN_FILE.read_text())


def _known(spec: str) -> tuple[str, dict] | None:
    key = spec.lower()
    for hub_id, cfg in known_models().items():
        if key in (hub_id.lower(), hub_id.lower().split("/")[-1]):
            return hub_id, cfg
    return None


def _read(folder: Path, name: str) -> Arch:
    path = folder / "config.json"
    return arch_from_config(json.loads(path.read_text()), name=name, source=str(path))


@functools.cache
def model_arch(spec: str, cache_dir: str | None = None) -> Arch:
    """The architecture of a model spec (see the module docstring); ConfigError when it cannot be had."""
    from verl_bench import models

    text = spec.strip()
    local = Path(text).expanduser()
    if local.is_dir() and (local / "config.json").is_file():
        return _read(local, text)
    key = text.lower()
    if key == "tiny" or key.startswith("tiny:"):
        return _read(models.resolve_model(text, cache_dir=cache_dir), text)
    if key in (models.DEFAULT_MODEL, "default"):
        folder = models.cache_root(cache_dir) / "models" / models.DEFAULT_MODEL
        if (folder / models.META_FILE).is_file():
            return _read(folder, text)
        text = "HuggingFaceTB/SmolLM2-135M-Instruct"
    cached = _hub_config(text, local_only=True)
    if cached is not None:
        return _read(cached.parent, text)
    known = _known(text)
    if known is not None:
        return arch_from_config(known[1], name=known[0], source=f"{KNOWN_FILE.name} (no config.json needed)")
    online = None if models._hub_offline() else _hub_config(text, local_only=False)
    if online is not None:
        return _read(online.parent, text)
    raise UnknownArchitecture(f"model {spec!r}: no local config.json and not in {KNOWN_FILE.name} (known: "
                      f"{sorted(known_models())}); give a local model folder or add its architecture there")


def _hub_config(repo_id: str, local_only: bool) -> Path | None:
    """The hub model's config.json (only that file), from the local cache or downloaded; None if unavailable."""
    from verl_bench.models import _HUB_ID

    if repo_id.count("/") != 1 or not _HUB_ID.match(repo_id):
        return None
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id, "config.json", local_files_only=local_only))
    except Exception:  # not cached / offline / no such repo: the caller tries the next source
        return None
