"""lm-eval tasks built from the data registry: one task per benchmark, one group averaging them.

The problems come from ``verl_bench.data`` (local files under the data root, gold answers normalised per
set) and are handed to lm-eval as an in-memory dataset, with the prompt already rendered in the model's
template, so a benchmark is scored the same way whatever lm-eval's hub index holds. Scoring is
``process_results`` calling ``verl_bench.reward`` -- the extraction, math-verify check and hard time bound
the training reward uses -- and ``verl_bench.evaluate.metrics`` for avg@n / pass@k / maj@k.
"""

from __future__ import annotations

from typing import Any

from verl_bench import data as data_lib
from verl_bench.evaluate.metrics import problem_metrics
from verl_bench.evaluate.presets import EvalPreset
from verl_bench.reward import DEFAULT_TIMEOUT_S, grade_batch

BENCHMARKS = data_lib.BENCHMARKS  # the registry's evaluation files (split "test")
# the procedural arithmetic held-out sets (disjoint from the training splits): what the CPU demo can learn
HELD_OUT = data_lib.HELD_OUT
EVAL_SETS = BENCHMARKS + HELD_OUT  # every name ``check_benchmarks`` accepts; "all" means BENCHMARKS
GROUP = "verl_math"
TASK_VERSION = 2  # bump when prompts or scoring change: it is recorded in every results file
# 2: every sample's grade ({"correct", "answer"}) is logged per problem under GRADES in the samples JSONL
GRADES = "grades"

# Stop strings per template beyond the tokenizer's EOS (lm-eval adds that itself): the end of an assistant
# turn for the chat-style templates, the next few-shot-style header for abel.
_STOPS = {"qwen-boxed": ["<|im_end|>", "<|endoftext|>"], "qwen25-math-cot": ["<|im_end|>", "<|endoftext|>"],
          "abel": ["\nQuestion:"], "chat": ["<|im_end|>"], "chat-direct": ["<|im_end|>"]}


def task_name(benchmark: str) -> str:
    return f"verl_{benchmark}"


def metric_names(preset: EvalPreset) -> list[str]:
    """The metrics every task reports, headline first: pass@k for each k, maj@k for k > 1, avg@n."""
    return ([f"pass@{k}" for k in preset.ks] + [f"maj@{k}" for k in preset.ks if k > 1]
            + [f"avg@{preset.n}"])


def check_benchmarks(benchmarks) -> list[str]:
    unknown = [b for b in benchmarks if b not in EVAL_SETS]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(EVAL_SETS)}")
    return list(dict.fromkeys(benchmarks))


def build_docs(benchmark: str, template: str, tokenizer: Any = None, data_root=None,
               limit: int | None = None) -> list[dict]:
    """The benchmark's problems as lm-eval docs, each with its prompt rendered in ``template``."""
    problems = data_lib.load_problems(benchmark, data_root=data_root, limit=limit)
    return [{"id": p.id, "question": p.question, "gold": p.gold,
             "prompt": data_lib.render_prompt(template, p.question, tokenizer)} for p in problems]


def mean_sample_accuracy(per_problem: list[list[dict]]) -> float:
    """lm-eval aggregation of the GRADES lists: the mean over problems of each problem's sample accuracy."""
    return sum(sum(g["correct"] for g in gs) / len(gs) for gs in per_problem) / max(len(per_problem), 1)


def make_process_results(preset: EvalPreset, timeout_s: float = DEFAULT_TIMEOUT_S):
    """lm-eval's per-doc hook: grade the doc's n responses with the training reward's checker."""
    keep = set(metric_names(preset))

    def process_results(doc: dict, results: list) -> dict:
        # with the take_first_k filter lm-eval hands over [[response_1, ..., response_n]]
        responses = results[0] if results and isinstance(results[0], list) else list(results)
        if len(responses) != preset.n:
            raise RuntimeError(f"{doc.get('id')}: expected {preset.n} responses, got {len(responses)}")
        grades = grade_batch(responses, [doc["gold"]] * len(responses), timeout_s)
        m = problem_metrics([g.answer for g in grades], [g.correct for g in grades], preset.ks)
        out = {k: v for k, v in m.items() if k in keep}
        # every sample's own grade, so the per-sample table (verl_bench.analysis.frame) needs no re-grading
        out[GRADES] = [{"correct": float(g.correct), "answer": g.answer} for g in grades]
        return out

    return process_results


def task_config(benchmark: str, preset: EvalPreset, docs: list[dict], template: str,
                timeout_s: float = DEFAULT_TIMEOUT_S) -> dict:
    """An lm-eval task config dict (ConfigurableTask) for one benchmark under one protocol."""
    from datasets import Dataset, DatasetDict

    def dataset(**_):  # lm-eval calls this with the task's metadata as keyword arguments
        return DatasetDict({"test": Dataset.from_list(docs)})

    gen = {"until": list(_STOPS.get(template, [])), **preset.generation_kwargs()}
    return {
        "task": task_name(benchmark),
        "custom_dataset": dataset,
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{gold}}",
        "target_delimiter": "",
        "generation_kwargs": gen,
        "repeats": preset.n,
        # keep all n samples of a doc for process_results (the default filter would keep the first only)
        "filter_list": [{"name": "all", "filter": [{"function": "take_first_k", "k": preset.n}]}],
        "process_results": make_process_results(preset, timeout_s),
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                        for m in metric_names(preset)]
                       # lists of per-sample grades: aggregated to the mean sample accuracy (= avg@n), which
                       # ``run.read_results`` leaves out of the tidy rows
                       + [{"metric": GRADES, "aggregation": mean_sample_accuracy, "higher_is_better": True}],
        "metadata": {"version": TASK_VERSION, "benchmark": benchmark, "template": template,
                     "preset": preset.name, "protocol": preset.key(), "problems": len(docs)},
    }


def build_task(benchmark: str, preset: EvalPreset, template: str, tokenizer: Any = None, data_root=None,
               timeout_s: float = DEFAULT_TIMEOUT_S):
    """One ready lm-eval ``ConfigurableTask``."""
    from lm_eval.api.task import ConfigurableTask

    docs = build_docs(benchmark, template, tokenizer, data_root, preset.limit)
    if not docs:
        raise ValueError(f"{benchmark}: no problems to evaluate")
    return ConfigurableTask(config=task_config(benchmark, preset, docs, template, timeout_s))


def build_group(benchmarks, preset: EvalPreset, template: str, tokenizer: Any = None, data_root=None,
                timeout_s: float = DEFAULT_TIMEOUT_S):
    """The ``verl_math`` lm-eval group: the benchmarks' tasks and their unweighted average (the paper's
    "Avg": every benchmark counts the same, whatever its size)."""
    from lm_eval.api.group import Group
    from lm_eval.config.group import GroupConfig

    benchmarks = check_benchmarks(benchmarks)
    # lm-eval 0.4.13 cannot take an inline group dict (it passes the group's keys on to its tasks), so the
    # Group object is built here and handed to simple_evaluate as is
    group = Group.from_config(GroupConfig(
        group=GROUP, task=[task_name(b) for b in benchmarks],
        aggregate_metric_list=[{"metric": m, "aggregation": "mean", "weight_by_size": False}
                               for m in metric_names(preset)],
        metadata={"version": TASK_VERSION}))
    for b in benchmarks:
        group.add(build_task(b, preset, template, tokenizer, data_root, timeout_s))
    return group
