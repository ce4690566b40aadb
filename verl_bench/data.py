"""Dataset registry (one table row per set), loading, gold normalisation and prompt templates.

Benchmark files are read in place from a data root (``data_root`` argument, else the
``VERL_BENCH_DATA`` environment variable); see ``shared/data/math/PROVENANCE.md`` for the files,
their fields and caveats. Nothing here downloads anything: ``DatasetSpec.hub_id`` only records where
an online copy of a set lives, for callers that want it.

Public API::

    load_problems(name, data_root=None, limit=None, split_seed=None) -> list[Problem]
    load_problems_with_stats(...) -> tuple[list[Problem], LoadStats]
    render_prompt(template, question, tokenizer=None) -> str
    arithmetic_problems(n, seed, level, split=None) -> list[Problem]   # from verl_bench.arithmetic
    DATASETS: name -> DatasetSpec; BENCHMARKS, HELD_OUT: the evaluation sets (files; generated)
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from verl_bench import arithmetic
from verl_bench.answers import DEGREE_TAIL_RE, extract_boxed
from verl_bench.errors import UserError

log = logging.getLogger(__name__)

DATA_ENV = "VERL_BENCH_DATA"

__all__ = [
    "ANSWER_FORMS",
    "BENCHMARKS",
    "BOXED_INSTRUCTION",
    "DATASETS",
    "DATA_ENV",
    "HELD_OUT",
    "PROMPT_TEMPLATES",
    "DataError",
    "DatasetSpec",
    "LoadStats",
    "Problem",
    "arithmetic_problems",
    "dataset_names",
    "iter_records",
    "load_problems",
    "load_problems_with_stats",
    "normalize_gold",
    "render_prompt",
    "resolve_data_root",
]


class DataError(UserError):
    """A data file is missing or malformed, or the data root cannot be found."""


# --------------------------------------------------------------------------------------------------
# Problem record
# --------------------------------------------------------------------------------------------------


@dataclass
class Problem:
    """One problem. ``question`` is the raw problem text (not yet wrapped in a prompt template);
    ``gold`` is the normalised gold answer string that ``verl_bench.reward.verify`` compares against."""

    id: str
    question: str
    gold: str
    source: str
    solution: str | None = None
    level: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> str:  # alias: the problem text
        return self.question

    @property
    def answer(self) -> str:  # alias: the gold answer
        return self.gold


@dataclass
class LoadStats:
    """What happened while loading a set: how many records the file held, how many became problems,
    and which were skipped (gold null or not extractable) with the reason."""

    name: str
    path: str | None
    total_records: int = 0
    loaded: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (1-based line/record, reason)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)


# --------------------------------------------------------------------------------------------------
# Gold normalisation / extraction
# --------------------------------------------------------------------------------------------------

_FLOAT_INT_RE = re.compile(r"^-?\d+\.0+$")
_PUNCT_AFTER_MATH_RE = re.compile(r"\$\s*[.。]\s*$")
_PY_FLOAT_DIV_RE = re.compile(r"(\d)\.(?=\s*/)")
_BARE_FUNC_RE = re.compile(r"(?<![\\A-Za-z])(?:np\.|math\.)?(arcsin|arccos|arctan|sin|cos|tan|ln|log|exp)(?=\s*[\d(])")


def normalize_gold(value: Any) -> str | None:
    """Turn a stored gold answer into a clean string, or None when there is none.

    Floats that are integers become integers (27.0 -> "27"), surrounding ``$...$`` math delimiters
    are removed ("$48$, $384$" -> "48, 384"), an escaped dollar sign goes with them ("\\$18.90" -> "18.90"),
    as does a full stop after the closing "$"; a trailing degree sign is dropped ("336^\\circ" -> "336");
    Python float literals divided by an integer lose their dot ("-1./3" -> "-1/3"); function names
    written as plain text or numpy code before a number or "(" become LaTeX ("ln2" -> "\\ln 2",
    "np.arcsin(10/13)" -> "\\arcsin (10/13)").
    LaTeX inside is left alone: the grader (math-verify) understands it.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, (list, tuple)):
        parts = [normalize_gold(v) for v in value]
        parts = [p for p in parts if p]
        return ", ".join(parts) if parts else None
    s = str(value).strip()
    if "$" in s:
        # "\$" is a dollar sign ("\$32,\!348", MATH), not a math delimiter: drop it whole, or the bare
        # "$" removal below would leave a stray backslash ("\32,\!348") that nothing can parse.
        s = s.replace("\\$", "")
        # sentence punctuation after the closing delimiter ("$(-\infty, 0) \cup\{1\}$.", OlympiadBench)
        s = _PUNCT_AFTER_MATH_RE.sub("$", s)
        s = s.replace("$", "").strip()
    s = _PY_FLOAT_DIV_RE.sub(r"\1", s)  # "-1./3" (a Python float literal, Minerva) -> "-1/3"
    # plain-text / numpy function names: "ln2" (Gaokao 2024 I) is l*n*2 to math-verify, so a model's
    # "\ln 2" would be scored wrong; "np.arcsin(10/13)" (Minerva) does not parse at all
    s = _BARE_FUNC_RE.sub(r"\\\1 ", s)
    s = DEGREE_TAIL_RE.sub("", s).strip()
    if _FLOAT_INT_RE.match(s):
        s = s.split(".")[0]
    return s or None


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------

# How the gold answer sits in a record's answer field (DatasetSpec.answer_form).
ANSWER_FORMS = {
    "value": "the field is the answer (a list is joined with ', ')",
    "####": "the text after the field's last '####' (GSM8K rationales); commas are thousands separators",
    "boxed": "the last \\boxed{} of the field (a worked solution)",
    "choice": "the 'choice_answer' letter when non-empty, else the field",
}


@dataclass(frozen=True)
class DatasetSpec:
    """How to read one named set (one row of the registry table).

    path: the file under the data root, ``.jsonl`` or ``.json`` (an array of records); None for a
    generated set. question_key / answer_key: the record fields with the problem text and the gold
    answer, the latter in ``answer_form`` (see :data:`ANSWER_FORMS`); every record must have both (a
    missing one is a DataError naming file, line and key); a record whose gold is null or not
    extractable is skipped and counted. split "test" marks an evaluation set.
    """

    name: str
    path: str | None
    question_key: str = "question"
    answer_key: str = "answer"
    answer_form: str = "value"
    split: str = "test"
    expected_records: int | None = None  # count of records in the file, per PROVENANCE.md
    solution_key: str | None = None  # the field with a worked solution
    level_key: str | None = None  # the field with a numeric difficulty level
    min_level: float | None = None  # keep only records whose level is at least this
    context_key: str | None = None  # a field whose text, when non-empty, goes before the question
    meta_keys: tuple[str, ...] = ()
    hub_id: str | None = None  # where an online copy lives (not used offline; not verified here)
    hub_config: str | None = None
    hub_split: str | None = None
    generator: dict[str, Any] | None = None  # arithmetic_problems' arguments, for a generated set
    notes: str = ""

    def __post_init__(self) -> None:
        if self.answer_form not in ANSWER_FORMS:
            raise ValueError(f"{self.name}: unknown answer_form {self.answer_form!r} ({list(ANSWER_FORMS)})")

    @property
    def fmt(self) -> str:
        """The file format: "jsonl", "json" (an array) or "generated"."""
        if self.path is None:
            return "generated"
        return "jsonl" if self.path.endswith(".jsonl") else "json"

    @property
    def is_eval(self) -> bool:
        return self.split == "test"

    @property
    def required_keys(self) -> tuple[str, ...]:
        return () if self.path is None else (self.question_key, self.answer_key)

    def stored_answer(self, rec: dict) -> Any:
        """The gold answer as the record stores it, before normalisation (None when there is none): the
        answer field's value, the text after its last "####", its last ``\\boxed{}`` or the choice letter,
        as ``answer_form`` says."""
        value = rec.get(self.answer_key)
        if self.answer_form == "choice":
            choice = rec.get("choice_answer")
            return choice.strip() if isinstance(choice, str) and choice.strip() else value
        if self.answer_form == "value":
            return value
        if not isinstance(value, str):
            return None
        if self.answer_form == "####":
            return value.split("####")[-1].strip() if "####" in value else None
        return extract_boxed(value)

    def gold(self, rec: dict) -> str | None:
        """The record's normalised gold answer (:func:`normalize_gold`), or None: skip the record."""
        stored = self.stored_answer(rec)
        if self.answer_form == "####" and stored is not None:
            stored = stored.replace(",", "")
        return normalize_gold(stored)


def _table(text: str) -> list[dict[str, str | None]]:
    """The rows of a whitespace-aligned table as dicts keyed by its header; "-" is None."""
    head, *rows = (line.split() for line in text.strip().splitlines())
    return [{k: (None if v == "-" else v) for k, v in zip(head, row, strict=True)} for row in rows]


# The benchmark files: the fields holding the question, the gold answer (in the form ANSWER_FORMS names),
# a worked solution and a difficulty level; split "test" = an evaluation set; n: records in the file
# (PROVENANCE.md).
_FILE_SETS = """
name              file                       question  answer        form    split  n     solution  level
gsm8k             gsm8k/test.jsonl           question  answer        ####    test   1319  answer    -
gsm8k_train       gsm8k_train/train.jsonl    question  answer        ####    train  7473  answer    -
math500           math500/test.jsonl         problem   answer        value   test   500   solution  level
math_train        math_train/math.json       problem   answer        value   train  7474  -         difficulty
math_train_l3to5  math_train/math.json       problem   answer        value   train  7474  -         difficulty
aime_train        aime_train/aime.json       problem   answer        value   train  975   solution  difficulty
minerva_math      minerva_math/test.jsonl    problem   solution      boxed   test   272   solution  -
olympiadbench     olympiadbench/test.jsonl   question  final_answer  value   test   675   -         -
aime24            aime24/test.jsonl          question  answer        value   test   30    solution  -
aime25            aime25/test.jsonl          question  answer        value   test   30    -         -
amc23             amc23/test.jsonl           question  answer        value   test   40    -         -
amc24             amc24/test.jsonl           problem   answer        value   test   45    -         -
gaokao2023en      gaokao2023en/test.jsonl    question  answer        value   test   385   -         -
gaokao2024_I      gaokao2024_I/test.jsonl    question  answer        value   test   14    -         -
gaokao2024_II     gaokao2024_II/test.jsonl   question  answer        value   test   14    -         -
gaokao2024_mix    gaokao2024_mix/test.jsonl  question  answer        choice  test   91    -         -
"""
# Record fields copied into Problem.meta.
_META_KEYS = {
    "gsm8k": ("idx",),
    "math500": ("subject", "unique_id"),
    "math_train": ("type",),
    "math_train_l3to5": ("type",),
    "aime_train": ("year", "aime_number", "problem_number"),
    "minerva_math": ("type", "idx"),
    "olympiadbench": ("id", "subfield", "is_multiple_answer", "unit", "answer_type"),
    "aime24": ("id", "url"),
    "amc23": ("id", "url"),
    "amc24": ("exam", "problem_number"),
    "gaokao2023en": ("id", "source"),
    "gaokao2024_I": ("type",),
    "gaokao2024_II": ("type",),
    "gaokao2024_mix": ("idx", "answer", "choice_answer"),
}
# Where an online copy lives: (hub id, config, split).
_HUB = {
    "gsm8k": ("openai/gsm8k", "main", "test"),
    "gsm8k_train": ("openai/gsm8k", "main", "train"),
    "math500": ("HuggingFaceH4/MATH-500", None, "test"),
    "minerva_math": ("math-ai/minervamath", None, "test"),
    "aime24": ("HuggingFaceH4/aime_2024", None, "train"),
    "aime25": ("math-ai/aime25", None, "test"),
    "amc23": ("math-ai/amc23", None, "test"),
}
_MORE: dict[str, dict[str, Any]] = {
    "math_train_l3to5": {"min_level": 3},
    "olympiadbench": {"context_key": "context"},
}
_NOTES = {
    "math_train": "2 records have answer=null: skipped and counted",
    "math_train_l3to5": "MATH train levels 3-5 (the SimpleRL-Zoo training distribution)",
    "minerva_math": "gold = last \\boxed{} of the solution",
    "olympiadbench": "final_answer list joined with ', '",
    "aime25": "record #20 stores 336^\\circ; normalised to 336",
    "amc23": "answers stored as floats (27.0 -> '27')",
    "gaokao2024_I": "Chinese",
    "gaokao2024_II": "Chinese",
    "gaokao2024_mix": "Chinese; gold = choice_answer when non-empty, else answer",
    "arithmetic": "procedural arithmetic word problems, train split",
    "arithmetic_test": "procedural arithmetic word problems, held-out split (disjoint from 'arithmetic')",
}

# The generated arithmetic sets (verl_bench.arithmetic); level 0 has only 18 x 18 distinct sums: 250 of
# them hash into the train split and 70 into test.
_GENERATED_SETS = """
name                level  split  n     seed
arithmetic          mixed  train  2000  0
arithmetic_test     mixed  test   500   1000003
arithmetic_l0       0      train  250   0
arithmetic_test_l0  0      test   64    1000003
arithmetic_l1       1      train  2000  0
arithmetic_test_l1  1      test   500   1000003
arithmetic_l2       2      train  2000  0
arithmetic_test_l2  2      test   500   1000003
arithmetic_l3       3      train  2000  0
arithmetic_test_l3  3      test   500   1000003
"""


def _file_spec(row: dict[str, Any]) -> DatasetSpec:
    name = row["name"]
    hub_id, hub_config, hub_split = _HUB.get(name, (None, None, None))
    return DatasetSpec(
        name, row["file"], row["question"], row["answer"], row["form"], row["split"], int(row["n"]),
        solution_key=row["solution"], level_key=row["level"], meta_keys=_META_KEYS.get(name, ()),
        hub_id=hub_id, hub_config=hub_config, hub_split=hub_split, notes=_NOTES.get(name, ""),
        **_MORE.get(name, {}),
    )  # fmt: skip


def _generated_spec(row: dict[str, Any]) -> DatasetSpec:
    level = row["level"] if row["level"] == "mixed" else int(row["level"])
    gen = {"seed": int(row["seed"]), "level": level, "n": int(row["n"]), "split": row["split"]}
    name = row["name"]
    return DatasetSpec(name, None, split=row["split"], generator=gen, notes=_NOTES.get(name, ""))


DATASETS: dict[str, DatasetSpec] = {
    s.name: s for s in [*map(_file_spec, _table(_FILE_SETS)), *map(_generated_spec, _table(_GENERATED_SETS))]
}
# The evaluation sets: the benchmark files (the paper's table), and the held-out arithmetic sets.
BENCHMARKS: tuple[str, ...] = tuple(n for n, s in DATASETS.items() if s.is_eval and s.path is not None)
HELD_OUT: tuple[str, ...] = tuple(n for n, s in DATASETS.items() if s.is_eval and s.path is None)


def dataset_names() -> list[str]:
    return list(DATASETS)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def resolve_data_root(data_root: str | os.PathLike | None = None) -> Path:
    """The benchmark data folder: ``data_root`` if given, else ``$VERL_BENCH_DATA``."""
    if data_root is not None:
        p = Path(data_root).expanduser()
        if not p.is_dir():
            raise DataError(f"data root {str(p)!r} is not an existing folder (set data_root or {DATA_ENV})")
        return p
    env = os.environ.get(DATA_ENV)
    if not env:
        raise DataError(
            f"no data root: pass data_root=... or set the environment variable {DATA_ENV} "
            "to the folder holding the benchmark files (e.g. .../shared/data/math)"
        )
    p = Path(env).expanduser()
    if not p.is_dir():
        raise DataError(f"{DATA_ENV}={env!r} does not name an existing folder")
    return p


def iter_records(path: Path):
    """Yield (1-based line or record number, record dict). Malformed input -> DataError."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.suffix == ".jsonl":
        with path.open("r", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(
                        f"{path}:{lineno}: malformed JSON line ({e.msg} at column {e.colno})"
                    ) from e
                if not isinstance(rec, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
                yield lineno, rec
    else:
        try:
            with path.open("r", encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from e
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON array of records, got {type(data).__name__}")
        for i, rec in enumerate(data, 1):
            if not isinstance(rec, dict):
                raise DataError(f"{path}: record {i}: expected a JSON object, got {type(rec).__name__}")
            yield i, rec


def _load_file(spec: DatasetSpec, root: Path) -> tuple[list[Problem], LoadStats]:
    assert spec.path is not None
    path = root / spec.path
    where = "line" if path.suffix == ".jsonl" else "record"
    stats = LoadStats(name=spec.name, path=str(path))
    problems: list[Problem] = []
    for n, rec in iter_records(path):
        stats.total_records += 1
        for key in spec.required_keys:
            if key not in rec:
                loc = f"{path}:{n}" if where == "line" else f"{path}: record {n}"
                raise DataError(f"{loc}: missing key {key!r} (dataset {spec.name!r})")
        if spec.min_level is not None and not (
            isinstance(rec.get(spec.level_key), (int, float)) and rec[spec.level_key] >= spec.min_level
        ):
            continue
        question = rec[spec.question_key]
        if not isinstance(question, str) or not question.strip():
            loc = f"{path}:{n}" if where == "line" else f"{path}: record {n}"
            raise DataError(
                f"{loc}: key {spec.question_key!r} is not a non-empty string (dataset {spec.name!r})"
            )
        context = rec.get(spec.context_key) if spec.context_key else None
        if isinstance(context, str) and context.strip():
            question = context.strip() + "\n" + question
        gold = spec.gold(rec)
        if not gold:
            stats.skipped.append((n, "gold answer is null or could not be extracted"))
            continue
        level = None
        if spec.level_key and isinstance(rec.get(spec.level_key), (int, float)):
            level = int(rec[spec.level_key])
        solution = rec.get(spec.solution_key) if spec.solution_key else None
        if isinstance(solution, list):
            solution = "\n\n".join(str(s) for s in solution)
        meta = {k: rec[k] for k in spec.meta_keys if k in rec}
        meta[where] = n
        problems.append(
            Problem(
                id=f"{spec.name}/{stats.total_records - 1}",  # 0-based record index in the file
                question=question,
                gold=gold,
                source=spec.name,
                solution=solution if isinstance(solution, str) else None,
                level=level,
                meta=meta,
            )
        )
    stats.loaded = len(problems)
    if stats.total_records == 0:
        raise DataError(f"{path}: no records: the file of dataset {spec.name!r} is empty")
    if stats.skipped:
        log.warning(
            "%s: skipped %d record(s) without a usable gold answer: %s",
            spec.name,
            stats.n_skipped,
            ", ".join(f"{where} {k}" for k, _ in stats.skipped),
        )
    return problems, stats


def load_problems_with_stats(name: str, data_root: str | os.PathLike | None = None, limit: int | None = None,
                             split_seed: int | None = None) -> tuple[list[Problem], LoadStats]:
    """Like :func:`load_problems`, also returning the :class:`LoadStats` (skipped records)."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if limit is not None and limit < 0:
        raise ValueError("limit must be >= 0")
    spec = DATASETS[name]
    if spec.fmt == "generated":
        g = dict(spec.generator or {})
        n = g.pop("n") if limit is None else limit
        problems = arithmetic_problems(n, g["seed"], g["level"], split=g["split"], source=name)
        stats = LoadStats(name=name, path=None, total_records=len(problems), loaded=len(problems))
    else:
        problems, stats = _load_file(spec, resolve_data_root(data_root))
    if split_seed is not None:
        random.Random(split_seed).shuffle(problems)
    if limit is not None:
        problems = problems[:limit]
    return problems, stats


def load_problems(name: str, data_root: str | os.PathLike | None = None, limit: int | None = None,
                  split_seed: int | None = None) -> list[Problem]:
    """Load a registered set as a list of :class:`Problem`.

    ``split_seed`` shuffles deterministically before ``limit`` is applied (so ``limit`` with a seed is a
    random subset; without a seed it is the first ``limit`` records in file order). Records with a null
    gold answer (math_train has 2) are skipped and counted: see :func:`load_problems_with_stats`.
    """
    return load_problems_with_stats(name, data_root, limit, split_seed)[0]


# --------------------------------------------------------------------------------------------------
# Prompt templates
# --------------------------------------------------------------------------------------------------

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

# Texts follow QwenLM/Qwen2.5-Math evaluation/utils.py PROMPT_TEMPLATES (also used by
# simpleRL-reason's simplelr_math_eval, which the VERL paper's eval scripts run with "qwen-boxed").
PROMPT_TEMPLATES: dict[str, str | None] = {
    # SimpleRL-Zoo / Qwen eval "qwen-boxed": default system, instruction after the question.
    "qwen-boxed": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n{input}\n" + BOXED_INSTRUCTION + "<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    # Qwen2.5-Math-Instruct CoT: the instruction is the system message.
    "qwen25-math-cot": (
        "<|im_start|>system\n" + BOXED_INSTRUCTION + "<|im_end|>\n"
        "<|im_start|>user\n{input}<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    "abel": "Question:\n{input}\nAnswer:\nLet's think step by step.\n",
    "mathstral": "{input}\n" + BOXED_INSTRUCTION,
    "plain": "{input}",
    "chat": None,  # tokenizer.apply_chat_template, see render_prompt
    "chat-direct": None,  # the same, asking for the boxed answer without step-by-step reasoning
}
# small models asked to "reason step by step" ramble past a short token budget and never answer
DIRECT_INSTRUCTION = "Put your final answer within \\boxed{}."


def render_prompt(template: str, question: str, tokenizer: Any = None) -> str:
    """Wrap a problem text in a prompt template.

    "qwen-boxed", "qwen25-math-cot", "abel", "mathstral", "plain" are fixed strings; "chat" ("chat-direct":
    without "reason step by step") uses the
    tokenizer's own chat template (one user turn: question + boxed instruction, generation prompt added)
    and needs ``tokenizer``.
    """
    if template not in PROMPT_TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r}; known: {', '.join(PROMPT_TEMPLATES)}")
    if not isinstance(question, str):
        raise TypeError("question must be a string")
    if template in ("chat", "chat-direct"):
        if tokenizer is None or not hasattr(tokenizer, "apply_chat_template"):
            raise ValueError(f"prompt template {template!r} needs a tokenizer with apply_chat_template")
        instruction = BOXED_INSTRUCTION if template == "chat" else DIRECT_INSTRUCTION
        messages = [{"role": "user", "content": f"{question}\n{instruction}"}]
        out = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if not isinstance(out, str):
            raise TypeError(f"apply_chat_template returned {type(out).__name__}, expected str")
        return out
    tpl = PROMPT_TEMPLATES[template]
    assert tpl is not None
    # str.replace, not str.format: problem texts are full of LaTeX braces.
    return tpl.replace("{input}", question).strip(" ")


# --------------------------------------------------------------------------------------------------
# Procedural arithmetic word problems (the generator: verl_bench.arithmetic)
# --------------------------------------------------------------------------------------------------


def arithmetic_problems(
    n: int,
    seed: int = 0,
    level: int | str = 1,
    split: str | None = None,
    source: str = "arithmetic",
) -> list[Problem]:
    """``n`` deterministic arithmetic word problems (:func:`verl_bench.arithmetic.generate`) as problems.

    Ids ``arith-L{level}-s{seed}-{candidate}`` ("Lm" for "mixed") are stable, and a larger ``n`` extends a
    smaller one; ``split`` "train"/"test" gives disjoint sets whatever the seeds. ``meta["expression"]``
    holds the arithmetic the answer comes from; the solution states it and boxes the answer.
    """
    tag = "m" if level == "mixed" else level
    return [
        Problem(
            id=f"arith-L{tag}-s{seed}-{it.index}",
            question=it.question,
            gold=str(it.answer),
            source=source,
            solution=f"{it.expression} = {it.answer}. The answer is \\boxed{{{it.answer}}}.",
            level=it.level,
            meta={"expression": it.expression, "seed": seed, "index": it.index, "split": split},
        )
        for it in arithmetic.generate(n, seed, level, split)
    ]


class PromptStream:
    """A seeded, epoch-shuffled stream of training problem indices; its position is part of a checkpoint."""

    def __init__(self, n: int, seed: int, position: int = 0):
        self.n, self.seed, self.position = n, seed, position
        self._epoch, self._epoch_order = -1, []

    def _order(self, epoch: int) -> list[int]:
        if epoch != self._epoch:  # one shuffle per epoch, a pure function of (seed, epoch)
            self._epoch_order = list(range(self.n))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(self._epoch_order)
            self._epoch = epoch
        return self._epoch_order

    def take(self, k: int) -> list[int]:
        out = []
        for p in range(self.position, self.position + k):
            out.append(self._order(p // self.n)[p % self.n])
        self.position += k
        return out
