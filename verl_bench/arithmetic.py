"""Procedural arithmetic word problems with verifiable integer answers (offline, deterministic).

Plain data, no dependence on the rest of the package: :func:`generate` returns :class:`Item` tuples
(question, expression, answer, ...); ``verl_bench.data.arithmetic_problems`` turns them into problems and
the registry names the train/test sets built from them.

Levels: 0 a bare sum "What is a + b?" of numbers 2-19; 1 one addition of small numbers in a sentence;
2 two additive operations; 3 several steps with multiplication; "mixed" cycles 1, 2, 3.
"""

from __future__ import annotations

import random
import zlib
from typing import NamedTuple

__all__ = ["LEVELS", "Item", "generate", "split_of"]

LEVELS = (0, 1, 2, 3, "mixed")


class Item(NamedTuple):
    """One generated problem. ``index`` is the candidate number it came from (stable: the same
    (seed, level, index) always gives the same problem); ``expression`` is the arithmetic ``answer`` comes
    from."""

    index: int
    level: int
    question: str
    expression: str
    answer: int


# fmt: off
_NAMES = ["Ava", "Ben", "Chloe", "Dan", "Emma", "Finn", "Grace", "Hugo", "Ivy", "Jack", "Kira", "Leo", "Mia",
          "Noah", "Olga", "Pablo", "Quinn", "Rosa", "Sam", "Tara", "Umar", "Vera", "Will", "Yara", "Zoe"]
_ITEMS = ["apples", "marbles", "stickers", "pencils", "cookies", "stamps", "shells", "books", "coins", "cards",
          "eggs", "buttons", "beads", "candles", "balloons", "oranges"]
_CONTAINERS = ["boxes", "bags", "packs", "jars", "crates", "baskets"]
# fmt: on
_TEST_BUCKETS = 5  # 1 in 5 candidate problems belongs to the held-out split


def split_of(question: str) -> str:
    """Train/test membership is a function of the problem text, so the splits are disjoint."""
    return "test" if zlib.crc32(question.encode("utf-8")) % _TEST_BUCKETS == 0 else "train"


def _gen_level0(r: random.Random) -> tuple[str, str, int]:
    # bare sums of small numbers: the level SmolLM2-135M gets right about 30% of the time at T=0.7, so a
    # GRPO group of 8 usually holds both right and wrong answers (the signal the embedded demo learns from)
    a, b = r.randint(2, 19), r.randint(2, 19)
    return f"What is {a} + {b}?", f"{a} + {b}", a + b


def _gen_level1(r: random.Random) -> tuple[str, str, int]:
    name, item = r.choice(_NAMES), r.choice(_ITEMS)
    a, b = r.randint(1, 60), r.randint(1, 60)
    t = r.randrange(3)
    if t == 0:
        q = f"{name} has {a} {item}. {name} gets {b} more {item}. How many {item} does {name} have now?"
    elif t == 1:
        other = r.choice([n for n in _NAMES if n != name])
        q = f"{name} has {a} {item} and {other} has {b} {item}. How many {item} do they have together?"
    else:
        q = f"There are {a} {item} on a table and {b} {item} in a drawer. How many {item} are there in total?"
    return q, f"{a} + {b}", a + b


def _gen_level2(r: random.Random) -> tuple[str, str, int]:
    name, item = r.choice(_NAMES), r.choice(_ITEMS)
    t = r.randrange(3)
    if t == 0:
        a, b = r.randint(10, 90), r.randint(1, 50)
        c = r.randint(1, a + b)
        q = (
            f"{name} has {a} {item}. {name} buys {b} more and then gives {c} away. "
            f"How many {item} does {name} have left?"
        )
        return q, f"{a} + {b} - {c}", a + b - c
    if t == 1:
        a = r.randint(20, 99)
        b = r.randint(1, a)
        c = r.randint(1, 50)
        q = (
            f"A shelf holds {a} {item}. {b} {item} are taken off the shelf, and later {c} new {item} "
            f"are put on it. How many {item} are on the shelf now?"
        )
        return q, f"{a} - {b} + {c}", a - b + c
    a, b, c = r.randint(1, 60), r.randint(1, 60), r.randint(1, 60)
    q = (
        f"{name} collected {a} {item} on Monday, {b} on Tuesday and {c} on Wednesday. "
        f"How many {item} did {name} collect in these three days?"
    )
    return q, f"{a} + {b} + {c}", a + b + c


def _gen_level3(r: random.Random) -> tuple[str, str, int]:
    name, item = r.choice(_NAMES), r.choice(_ITEMS)
    t = r.randrange(3)
    if t == 0:
        box = r.choice(_CONTAINERS)
        a, b = r.randint(2, 12), r.randint(2, 15)
        d = r.randint(2, min(6, a * b))  # so that a * b // d >= 1
        c = r.randint(1, (a * b) // d)
        q = (
            f"{name} buys {a} {box} of {item} with {b} {item} in each. {name} then gives {c} {item} "
            f"to each of {d} friends. How many {item} does {name} keep?"
        )
        return q, f"{a} * {b} - {c} * {d}", a * b - c * d
    if t == 1:
        p, a, b = r.randint(2, 9), r.randint(2, 12), r.randint(2, 12)
        bill = p * (a + b) + r.randint(0, 40)
        q = (
            f"A shop sells {item} for {p} dollars each. {name} buys {a} {item} on Monday and {b} on "
            f"Tuesday, and pays with {bill} dollars in total. How many dollars of change does {name} get?"
        )
        return q, f"{bill} - {p} * ({a} + {b})", bill - p * (a + b)
    rows, cols, extra = r.randint(2, 12), r.randint(2, 12), r.randint(1, 30)
    q = (
        f"{name} arranges {item} in {rows} rows with {cols} {item} in each row, and has {extra} "
        f"{item} left over. How many {item} does {name} have?"
    )
    return q, f"{rows} * {cols} + {extra}", rows * cols + extra


_GENERATORS = {0: _gen_level0, 1: _gen_level1, 2: _gen_level2, 3: _gen_level3}


def generate(n: int, seed: int = 0, level: int | str = 1, split: str | None = None) -> list[Item]:
    """``n`` distinct problems. Candidate ``i`` depends only on (seed, level, i), so a larger ``n`` extends
    a smaller one. ``split`` "train"/"test" keeps only candidates whose text hashes into that split (1 in 5
    go to test), which makes the two splits disjoint whatever the seeds."""
    if n < 0:
        raise ValueError("n must be >= 0")
    if level not in LEVELS:
        raise ValueError(f"level must be 0, 1, 2, 3 or 'mixed', got {level!r}")
    if split not in (None, "train", "test"):
        raise ValueError(f"split must be None, 'train' or 'test', got {split!r}")
    out: list[Item] = []
    seen: set[str] = set()
    max_candidates = 200 * n + 1000
    for i in range(max_candidates):
        if len(out) == n:
            return out
        lvl = (i % 3) + 1 if level == "mixed" else int(level)
        question, expression, answer = _GENERATORS[lvl](random.Random(f"verl-bench-arith/{seed}/{level}/{i}"))
        if question in seen or (split is not None and split_of(question) != split):
            continue
        seen.add(question)
        assert answer >= 0
        out.append(Item(i, lvl, question, expression, answer))
    if len(out) == n:
        return out
    raise RuntimeError(f"could not generate {n} distinct problems (level={level!r}, split={split!r})")
