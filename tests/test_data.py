"""Dataset registry, gold extraction, error reporting, prompt templates, arithmetic generator."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from verl_bench.arithmetic import generate
from verl_bench.data import (
    BENCHMARKS,
    DATA_ENV,
    DATASETS,
    HELD_OUT,
    DataError,
    DatasetSpec,
    arithmetic_problems,
    load_problems,
    load_problems_with_stats,
    normalize_gold,
    render_prompt,
    resolve_data_root,
)


def data_root() -> Path:
    """The benchmark folder: $VERL_BENCH_DATA, else /work/shared/data/math."""
    return Path(os.environ.get(DATA_ENV) or "/work/shared/data/math")


DATA = data_root()
needs_data = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"benchmark data folder {DATA} not found (set {DATA_ENV} to the data root)"
)

# Records per file, from shared/data/math/PROVENANCE.md.
PROVENANCE_COUNTS = {
    "gsm8k": 1319,
    "gsm8k_train": 7473,
    "math500": 500,
    "math_train": 7474,
    "aime_train": 975,
    "minerva_math": 272,
    "olympiadbench": 675,
    "aime24": 30,
    "aime25": 30,
    "amc23": 40,
    "amc24": 45,
    "gaokao2023en": 385,
    "gaokao2024_I": 14,
    "gaokao2024_II": 14,
    "gaokao2024_mix": 91,
}
# Records without a usable gold answer (1-based record/line numbers), skipped and counted:
# math_train: 887 and 1010 have answer=null (PROVENANCE), 5329 and 5331 have answer="" (multiple-choice
# problems whose answer was lost); gaokao2023en lines 168 and 193 have answer="" (answer pasted into the
# question text instead).
KNOWN_SKIPS = {"math_train": [887, 1010, 5329, 5331], "gaokao2023en": [168, 193]}


# ---------------------------------------------------------------------------------------- counts


@needs_data
@pytest.mark.parametrize("name", sorted(PROVENANCE_COUNTS))
def test_record_counts_match_provenance(name):
    problems, stats = load_problems_with_stats(name, data_root=DATA)
    assert stats.total_records == PROVENANCE_COUNTS[name]
    skipped = [n for n, _ in stats.skipped]
    assert skipped == KNOWN_SKIPS.get(name, [])
    assert len(problems) == stats.loaded == PROVENANCE_COUNTS[name] - len(skipped)
    assert all(p.gold and p.gold.strip() == p.gold for p in problems)
    assert all(isinstance(p.question, str) and p.question.strip() for p in problems)
    assert len({p.id for p in problems}) == len(problems)
    assert all(p.source == name for p in problems)


@needs_data
def test_math_train_null_answers_are_skipped_and_counted():
    raw = json.loads((DATA / "math_train" / "math.json").read_text())
    null_idx = [i + 1 for i, r in enumerate(raw) if r["answer"] is None]
    assert null_idx == [887, 1010]
    problems, stats = load_problems_with_stats("math_train", data_root=DATA)
    assert stats.n_skipped == 4 and set(null_idx) <= {n for n, _ in stats.skipped}
    assert len(problems) == 7470
    # the level 3-5 subset (PROVENANCE: 5563 records) minus the 4 unusable ones, all of level >= 3
    l35 = load_problems("math_train_l3to5", data_root=DATA)
    assert len(l35) == 5563 - 4 and min(p.level for p in l35) == 3


# ---------------------------------------------------------------------------------------- golds


@needs_data
def test_gold_extraction_on_real_records():
    gsm = load_problems("gsm8k", data_root=DATA)
    assert gsm[0].gold == "18" and gsm[0].question.startswith("Janet")
    assert "####" in gsm[0].solution
    # thousands separators are stripped: the record whose rationale ends "#### 70,000"-style
    raw = [json.loads(line) for line in (DATA / "gsm8k" / "test.jsonl").open()]
    with_commas = [i for i, r in enumerate(raw) if "," in r["answer"].split("####")[-1]]
    assert with_commas, "expected some comma-formatted golds in gsm8k"
    for i in with_commas:
        assert gsm[i].gold == raw[i]["answer"].split("####")[-1].strip().replace(",", "")
    assert all(re.fullmatch(r"-?\d+", p.gold) for p in gsm)

    amc = load_problems("amc23", data_root=DATA)
    assert amc[0].gold == "27"  # stored as 27.0
    assert all(re.fullmatch(r"-?\d+", p.gold) for p in amc) and amc[15].gold == "-1"  # -1.0 -> "-1"

    aime25 = load_problems("aime25", data_root=DATA)
    assert aime25[19].gold == "336"  # stored as 336^\circ
    assert load_problems("aime24", data_root=DATA)[0].gold == "204"

    minerva = load_problems("minerva_math", data_root=DATA)
    assert minerva[0].gold == "1.6"  # ...=\boxed{1.6} \mathrm{~cm}
    assert minerva[1].gold == "4.5e33"
    assert minerva[12].gold.startswith("\\frac{2 \\pi c^{2} R^{2}}")  # nested braces kept whole

    ob = load_problems("olympiadbench", data_root=DATA)
    assert ob[0].gold == "2"
    assert ob[1].gold == "\\frac{1}{2 n+2}"  # "$...$" delimiters removed
    assert ob[13].gold == "69,84" and ob[13].meta["is_multiple_answer"]  # ['$69$,$84$']

    m500 = load_problems("math500", data_root=DATA)
    assert m500[0].gold == "\\left( 3, \\frac{\\pi}{2} \\right)" and m500[0].level == 2
    assert m500[0].meta["unique_id"] == "test/precalculus/807.json"

    mix = load_problems("gaokao2024_mix", data_root=DATA)
    assert mix[0].gold == "C" and mix[0].meta["answer"].startswith("C.")  # choice_answer wins
    assert mix[10].gold == "(4,0)"  # no choice_answer: the answer field
    g1 = load_problems("gaokao2024_I", data_root=DATA)
    assert [p.gold for p in g1[8:11]] == ["BC", "ACD", "ABD"]

    g23 = load_problems("gaokao2023en", data_root=DATA)
    assert g23[0].gold == "\\{x|-2\\leq x < 1\\}"


def test_normalize_gold_forms():
    assert normalize_gold(27.0) == "27"
    assert normalize_gold(2.5) == "2.5"
    assert normalize_gold("336^\\circ") == "336"
    assert normalize_gold("30^{\\circ}") == "30"
    assert normalize_gold(["$\\frac{1}{2}$"]) == "\\frac{1}{2}"
    assert normalize_gold(["$3$", "$4$"]) == "3, 4"
    assert normalize_gold("$48$, $384$") == "48, 384"
    # an escaped dollar is a currency sign, not a delimiter: no stray backslash may survive (MATH-500 #243)
    assert normalize_gold("\\$32,\\!348") == "32,\\!348"
    assert normalize_gold("\\$18.90") == "18.90"
    assert normalize_gold("$\\$5$") == "5"
    # a full stop after the closing "$" is sentence punctuation (OlympiadBench #77); inside math it stays
    assert normalize_gold(["$(-\\infty, 0) \\cup\\{1\\}$."]) == "(-\\infty, 0) \\cup\\{1\\}"
    assert normalize_gold("$x$ and $y$.") == "x and y"
    # Python float literals in a ratio (Minerva #39, #50): "-1./3" means -1/3
    assert normalize_gold("-1./3") == "-1/3"
    assert normalize_gold("1.5/2") == "1.5/2"  # a real decimal is untouched
    # plain-text / numpy function names become LaTeX (Gaokao 2024 I #13 "ln2", Minerva #6)
    assert normalize_gold("ln2") == "\\ln 2"
    assert normalize_gold("np.arcsin(10/13)") == "\\arcsin (10/13)"
    assert normalize_gold("\\ln 2") == "\\ln 2" and normalize_gold("\\arcsin(x)") == "\\arcsin(x)"
    assert normalize_gold("\\text{since 2}") == "\\text{since 2}"  # not inside words
    assert normalize_gold(None) is None and normalize_gold("") is None and normalize_gold("  ") is None


@needs_data
def test_limit_and_split_seed():
    first = load_problems("math500", data_root=DATA, limit=5)
    assert [p.id for p in first] == [f"math500/{i}" for i in range(5)]
    a = load_problems("math500", data_root=DATA, limit=20, split_seed=7)
    b = load_problems("math500", data_root=DATA, limit=20, split_seed=7)
    c = load_problems("math500", data_root=DATA, limit=20, split_seed=8)
    assert [p.id for p in a] == [p.id for p in b] != [p.id for p in c]
    assert len(a) == 20 and len({p.id for p in a}) == 20


# ---------------------------------------------------------------------------------------- errors


def _write(root: Path, rel: str, text: str) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return p


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"gsm8k/test\.jsonl.*not found"):
        load_problems("gsm8k", data_root=tmp_path)


def test_malformed_json_line_names_file_and_line(tmp_path):
    good = json.dumps({"question": "q", "answer": "x\n#### 3"})
    path = _write(tmp_path, "gsm8k/test.jsonl", f"{good}\n{good}\n{{not json\n{good}\n")
    with pytest.raises(DataError) as ei:
        load_problems("gsm8k", data_root=tmp_path)
    msg = str(ei.value)
    assert f"{path}:3:" in msg and "malformed JSON" in msg


def test_missing_key_names_file_line_and_key(tmp_path):
    good = json.dumps({"question": "q", "answer": "x\n#### 3"})
    bad = json.dumps({"question": "q2"})
    path = _write(tmp_path, "gsm8k/test.jsonl", f"{good}\n\n{bad}\n")  # blank line still counted
    with pytest.raises(DataError) as ei:
        load_problems("gsm8k", data_root=tmp_path)
    msg = str(ei.value)
    assert f"{path}:3:" in msg and "'answer'" in msg
    assert isinstance(ei.value, ValueError)


def test_json_array_errors_and_null_answers(tmp_path):
    recs = [
        {"problem": "p1", "answer": "1"},
        {"problem": "p2", "answer": None},
        {"problem": "p3", "answer": "3"},
    ]
    _write(tmp_path, "math_train/math.json", json.dumps(recs))
    problems, stats = load_problems_with_stats("math_train", data_root=tmp_path)
    assert [p.gold for p in problems] == ["1", "3"] and [n for n, _ in stats.skipped] == [2]
    _write(tmp_path, "math_train/math.json", json.dumps(recs + [{"answer": "4"}]))
    with pytest.raises(DataError, match=r"math\.json: record 4: missing key 'problem'"):
        load_problems("math_train", data_root=tmp_path)
    _write(tmp_path, "math_train/math.json", '[{"problem": "p", "answer": "1"},\n oops]')
    with pytest.raises(DataError, match=r"math\.json:2: malformed JSON"):
        load_problems("math_train", data_root=tmp_path)


def test_data_root_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    with pytest.raises(DataError, match=DATA_ENV):
        resolve_data_root()
    with pytest.raises(DataError, match=DATA_ENV):
        load_problems("gsm8k")
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "nope"))
    with pytest.raises(DataError, match=DATA_ENV):
        resolve_data_root()
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert resolve_data_root() == tmp_path
    assert resolve_data_root(tmp_path) == tmp_path
    with pytest.raises(DataError):
        resolve_data_root(tmp_path / "missing")
    with pytest.raises(DataError, match="unknown dataset"):
        load_problems("no_such_set", data_root=tmp_path)


def test_registry_covers_all_sets():
    for name in list(PROVENANCE_COUNTS) + ["arithmetic", "arithmetic_test"]:
        assert name in DATASETS
    for name, n in PROVENANCE_COUNTS.items():
        assert DATASETS[name].expected_records == n
    assert DATASETS["gsm8k"].hub_id == "openai/gsm8k"


def test_the_answer_form_says_where_the_gold_is():
    """One record field per set, read as its registry row's answer form says (the gold audit reads the same)."""
    rat = "3 + 4 = 1,007\n#### 1,007"
    assert DATASETS["gsm8k"].stored_answer({"answer": rat}) == "1,007"
    assert DATASETS["gsm8k"].gold({"answer": rat}) == "1007"  # a comma after "####" separates thousands
    assert DATASETS["gsm8k"].gold({"answer": "no marker"}) is None
    sol = "so $x=\\boxed{\\frac{1}{2}}$ and finally \\boxed{27.0}"
    assert DATASETS["minerva_math"].stored_answer({"solution": sol}) == "27.0"
    assert DATASETS["minerva_math"].gold({"solution": sol}) == "27"
    assert DATASETS["olympiadbench"].gold({"final_answer": ["$3$", "$4$"]}) == "3, 4"
    mix = DATASETS["gaokao2024_mix"]
    assert mix.gold({"answer": "10 i", "choice_answer": " A "}) == "A"
    assert mix.gold({"answer": "$2$", "choice_answer": ""}) == "2"
    assert DATASETS["aime25"].gold({"answer": "336^\\circ"}) == "336"
    with pytest.raises(ValueError, match="answer_form"):
        DatasetSpec("x", "x/test.jsonl", answer_form="last line")


def test_evaluation_sets_come_from_the_registry():
    assert BENCHMARKS == ("gsm8k", "math500", "minerva_math", "olympiadbench", "aime24", "aime25", "amc23",
                          "amc24", "gaokao2023en", "gaokao2024_I", "gaokao2024_II", "gaokao2024_mix")
    assert HELD_OUT == ("arithmetic_test", *(f"arithmetic_test_l{i}" for i in range(4)))
    assert all(DATASETS[n].split == "train" for n in DATASETS if n not in BENCHMARKS + HELD_OUT)


# ---------------------------------------------------------------------------------------- prompts


def test_prompt_templates():
    q = "What is $\\{x\\}$ if {a}=2?"  # braces must survive untouched
    qb = render_prompt("qwen-boxed", q)
    assert qb == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{q}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    cot = render_prompt("qwen25-math-cot", q)
    assert cot.startswith(
        "<|im_start|>system\nPlease reason step by step, and put your final answer within "
        "\\boxed{}.<|im_end|>\n<|im_start|>user\n" + q
    )
    assert render_prompt("abel", q) == f"Question:\n{q}\nAnswer:\nLet's think step by step.\n"
    assert render_prompt("plain", q) == q
    with pytest.raises(ValueError):
        render_prompt("nope", q)
    with pytest.raises(ValueError):
        render_prompt("chat", q)

    class FakeTok:
        def apply_chat_template(self, messages, tokenize=True, add_generation_prompt=False):
            assert tokenize is False and add_generation_prompt is True
            return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages) + "<assistant>"

    chat = render_prompt("chat", q, tokenizer=FakeTok())
    assert chat.startswith(f"<user>{q}\n") and "\\boxed{}" in chat and chat.endswith("<assistant>")


# ---------------------------------------------------------------------------------------- arithmetic

# Independent solvers: one regex per phrasing, written from the problem text, not from the generator.
_SOLVERS = [
    (r"(\w+) has (\d+) \w+\. \1 gets (\d+) more", lambda a, b: a + b),
    (r"has (\d+) \w+ and \w+ has (\d+) \w+\. How many \w+ do they have together", lambda a, b: a + b),
    (r"There are (\d+) \w+ on a table and (\d+) \w+ in a drawer", lambda a, b: a + b),
    (r"has (\d+) \w+\. \w+ buys (\d+) more and then gives (\d+) away", lambda a, b, c: a + b - c),
    (
        r"A shelf holds (\d+) \w+\. (\d+) \w+ are taken off the shelf, and later (\d+) new",
        lambda a, b, c: a - b + c,
    ),
    (r"collected (\d+) \w+ on Monday, (\d+) on Tuesday and (\d+) on Wednesday", lambda a, b, c: a + b + c),
    (
        r"buys (\d+) \w+ of \w+ with (\d+) \w+ in each\. \w+ then gives (\d+) \w+ to each of (\d+) friends",
        lambda a, b, c, d: a * b - c * d,
    ),
    (
        r"for (\d+) dollars each\. \w+ buys (\d+) \w+ on Monday and (\d+) on Tuesday, and pays with (\d+) dollars",
        lambda p, a, b, bill: bill - p * (a + b),
    ),
    (r"in (\d+) rows with (\d+) \w+ in each row, and has (\d+)", lambda r, c, e: r * c + e),
]


def _solve(question: str) -> int:
    hits = [(rx, f) for rx, f in _SOLVERS if re.search(rx, question)]
    assert len(hits) == 1, question
    rx, f = hits[0]
    nums = [int(g) for g in re.search(rx, question).groups() if g.isdigit()]
    return f(*nums)


@pytest.mark.parametrize("level", [1, 2, 3, "mixed"])
def test_arithmetic_answers_are_right(level):
    probs = arithmetic_problems(300, seed=3, level=level)
    assert len(probs) == 300
    for p in probs:
        assert re.fullmatch(r"\d+", p.gold)
        assert _solve(p.question) == int(p.gold), p.question
        assert p.level == (level if level != "mixed" else p.level) and p.level in (1, 2, 3)
        assert f"\\boxed{{{p.gold}}}" in p.solution
    if level == 1:
        assert all(p.meta["expression"].count("+") == 1 and "*" not in p.meta["expression"] for p in probs)
    if level == 3:
        assert all("*" in p.meta["expression"] for p in probs)
    if level == "mixed":
        assert {p.level for p in probs} == {1, 2, 3}


def test_the_generator_gives_plain_items_the_problems_wrap():
    items = generate(20, seed=4, level="mixed", split="test")
    probs = arithmetic_problems(20, seed=4, level="mixed", split="test")
    assert [(i.question, str(i.answer), i.level) for i in items] == [(p.question, p.gold, p.level) for p in probs]
    assert [p.id for p in probs] == [f"arith-Lm-s4-{i.index}" for i in items]
    assert all(eval(i.expression, {}) == i.answer for i in items)  # our own "a * b - c" strings
    with pytest.raises(ValueError, match="level"):
        generate(1, level=4)


def test_arithmetic_is_deterministic_with_stable_ids():
    a = arithmetic_problems(50, seed=11, level=2)
    b = arithmetic_problems(50, seed=11, level=2)
    assert [(p.id, p.question, p.gold) for p in a] == [(p.id, p.question, p.gold) for p in b]
    longer = arithmetic_problems(80, seed=11, level=2)
    assert [p.id for p in longer[:50]] == [p.id for p in a]  # a larger n extends a smaller one
    other = arithmetic_problems(50, seed=12, level=2)
    assert [p.question for p in other] != [p.question for p in a]
    assert len({p.question for p in longer}) == 80


def test_arithmetic_train_and_test_are_disjoint():
    train = load_problems("arithmetic")
    test = load_problems("arithmetic_test")
    assert len(train) == 2000 and len(test) == 500
    assert not ({p.question for p in train} & {p.question for p in test})
    assert not ({p.id for p in train} & {p.id for p in test})
    # also with the same seed: the split is a function of the text
    tr = {p.question for p in arithmetic_problems(400, seed=5, level=1, split="train")}
    te = {p.question for p in arithmetic_problems(100, seed=5, level=1, split="test")}
    assert len(tr) == 400 and len(te) == 100 and not (tr & te)
    assert len(load_problems("arithmetic", limit=10)) == 10
    assert [p.id for p in load_problems("arithmetic_test", limit=10)] == [p.id for p in test[:10]]
