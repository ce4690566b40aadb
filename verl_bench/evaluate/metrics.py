"""Per-problem sampling metrics: avg@n, the unbiased pass@k estimator, maj@k.

All functions are pure and take one problem's n graded samples (in sampling order).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from verl_bench.answers import normalize_answer


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k).

    The probability that k samples drawn without replacement from the n contain a correct one. Computed as
    a running product (no huge binomials): C(n-c, k)/C(n, k) = prod_{i=n-c+1}^{n} (1 - k/i).
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n={n} samples")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def majority_vote(answers: Sequence[str | None]) -> int | None:
    """Index of the first sample carrying the most frequent answer (None answers never vote).

    Answers are compared after ``normalize_answer`` (so "1/2" and "\\frac{1}{2}" are different votes unless
    normalisation maps them together; symbolic clustering would need O(n^2) verifier calls). Ties go to the
    answer seen first, so the vote is deterministic.
    """
    keys = [normalize_answer(a) if a is not None else None for a in answers]
    counts = Counter(k for k in keys if k)
    if not counts:
        return None
    top = max(counts.values())
    return next(i for i, k in enumerate(keys) if k and counts[k] == top)


def problem_metrics(answers: Sequence[str | None], correct: Sequence[bool], ks: Sequence[int]) -> dict:
    """avg@n, pass@k and maj@k (k in ``ks``, k <= n) of one problem's n samples in sampling order.

    maj@k votes among the first k samples (the usual definition with n >= k drawn samples).
    """
    n = len(correct)
    if n == 0 or len(answers) != n:
        raise ValueError(f"{len(answers)} answers for {n} grades")
    c = sum(bool(x) for x in correct)
    out = {f"avg@{n}": c / n}
    for k in ks:
        if k > n:
            raise ValueError(f"k={k} > n={n} samples per problem")
        out[f"pass@{k}"] = pass_at_k(n, c, k)
        winner = majority_vote(answers[:k])
        out[f"maj@{k}"] = float(winner is not None and bool(correct[winner]))
    return out
