"""An lm-eval model backed by the training sampler (``verl_bench.rollout.CachedSamplingEngine``).

lm-eval's ``hf`` backend samples each of a problem's n repeats as its own sequence and keeps decoding a batch
until its longest member ends; on a CPU a decode step costs about the same for 1 or 32 rows, so that is most
of an evaluation's time (SmolLM2-135M: ~40 generated tokens/s on 2 cores, benchmarks/eval_throughput.py).
This backend (``--backend sampler``) gives lm-eval the sampler the training loop uses: each distinct prompt is
prefilled once for its n samples, finished samples leave the batch. Everything else -- tasks, filters,
scoring, per-sample logs -- is lm-eval's, unchanged. Generation only (the math tasks need nothing else).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from lm_eval.api.model import LM

PROMPTS_PER_BATCH = 16  # distinct prompts sampled together (x n samples each)


class SamplerLM(LM):
    def __init__(self, folder: str | Path, *, device: str | None = None, prompts_per_batch: int = PROMPTS_PER_BATCH):
        super().__init__()
        from verl_bench.models import load_model
        from verl_bench.rollout import CachedSamplingEngine

        model, tok = load_model(folder, device=device)
        self.engine = CachedSamplingEngine(model, tok)
        self.prompts_per_batch = prompts_per_batch

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """lm-eval passes a problem's ``repeats`` copies as repeated requests: each distinct (prompt, settings)
        is sampled once with n = its number of copies, and the copies get its samples in order."""
        from verl_bench.rollout import SamplingParams

        args = [(req.args[0], req.args[1]) for req in requests]
        key = [(ctx, _settings(kw)) for ctx, kw in args]
        copies = Counter(key)
        by_shape = defaultdict(list)  # (settings, n) -> distinct prompts
        for (ctx, settings), n in copies.items():
            by_shape[(settings, n)].append(ctx)
        samples: dict = {}
        for (settings, n), prompts in by_shape.items():
            until, temperature, top_p, max_tokens = settings
            params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_tokens)
            for i in range(0, len(prompts), self.prompts_per_batch):
                chunk = prompts[i: i + self.prompts_per_batch]
                texts = self.engine.generate(chunk, params).texts
                for j, ctx in enumerate(chunk):
                    samples[(ctx, settings)] = [_cut(t, until) for t in texts[j * n: (j + 1) * n]]
        out = []
        for k in key:  # the i-th copy of a request gets the i-th sample
            out.append(samples[k].pop(0))
        return out

    def loglikelihood(self, requests):
        raise NotImplementedError("the sampler backend only generates (use --backend hf for log-likelihood tasks)")

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError("the sampler backend only generates (use --backend hf for log-likelihood tasks)")


def _settings(kw: dict) -> tuple:
    """(stop strings, temperature, top_p, max new tokens) from lm-eval's generation kwargs; greedy is T 0."""
    until = kw.get("until") or []
    until = tuple([until] if isinstance(until, str) else until)
    sample = kw.get("do_sample", False) and float(kw.get("temperature", 0.0)) > 0
    return (until, float(kw["temperature"]) if sample else 0.0, float(kw.get("top_p", 1.0)) if sample else 1.0,
            int(kw.get("max_gen_toks", 256)))


def _cut(text: str, until: tuple) -> str:
    """The text up to the first stop string (lm-eval's hf backend cuts the same way)."""
    for stop in until:
        if stop and stop in text:
            text = text.split(stop, 1)[0]
    return text
