"""Answers as text: extraction from a response, normalisation, and the checks that need no sympy.

Public API::

    extract_boxed(text) -> str | None
    extract_answer(response) -> tuple[str | None, bool]          # (answer, boxed)
    normalize_answer(s) -> str
    ascii_digits(s) -> str
    as_number(s) -> tuple[Fraction, str] | None
    fast_check(pred, gold) -> bool | None                         # None: ask math-verify
    DEGREE_TAIL_RE, E_NOTATION_RE                                 # shared with data.py / the verifier

Pure functions over strings: nothing here is evaluated as code, and every function runs in time linear in
its input, whatever the input (a model's response can be a million characters of ``$``, ``{`` or ``\\(``):
the patterns use possessive quantifiers where a greedy one would backtrack quadratically, and brace
matching is one pass. Digits of other scripts ("٤٢", "４２", "𝟒𝟐") are read as the ASCII digits they
stand for, everywhere: in the fast path and in what math-verify is given (it cannot read them itself).
"""

from __future__ import annotations

import re
import unicodedata
from collections import deque
from fractions import Fraction

__all__ = [
    "DEGREE_TAIL_RE",
    "E_NOTATION_RE",
    "MAX_RESPONSE_CHARS",
    "as_number",
    "ascii_digits",
    "extract_answer",
    "extract_boxed",
    "fast_check",
    "normalize_answer",
]

# A trailing degree sign: "336^\circ" -> "336" (strip the spaces before it afterwards: a leading \s* here
# would rescan every run of spaces from each of its positions). Used for golds (data.py) and answers.
DEGREE_TAIL_RE = re.compile(r"(\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|°)\s*$")
# "4.5e33": math-verify reads it as 4.5*E*33, so the verifier rewrites it to 4.5\times10^{33}.
E_NOTATION_RE = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))[eE]([+-]?\d+)$")

# --------------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------------

MAX_RESPONSE_CHARS = 32_000  # a longer response has no answer (never cut: a cut could forge one); about
# 8k tokens, 5x the longest eval generation (1536 tokens), and what bounds the parent's work per response
_BOX_CMD_RE = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")
_ESCAPE_RE = re.compile(r"\\.", re.DOTALL)
_SPACES_RE = re.compile(r"[ \t]*+")
_BARE_TOKEN_RE = re.compile(r"[^\s$]+")
_CANDIDATES = 20  # only the last 20 \boxed commands, and the last 20 "answer is" lines, are looked at


def _closing_braces(text: str, opens: list[int]) -> dict[int, int]:
    """For each ``{`` position in ``opens``: the position of its matching ``}`` (absent if it never closes).

    A backslash escapes the next character (``\\{`` and ``\\}`` do not count): escape pairs are blanked
    left to right from the first opening, then brace depth is a cumulative sum (numpy: a million braces
    cost milliseconds, not a Python loop each). Each position in ``opens`` follows a letter or a space,
    never a backslash, so the pairing reads it as an opening brace exactly as a scan starting there would.
    """
    import numpy as np  # here, not at the top: the verifier's worker processes import this module

    first = min(opens)
    t = _ESCAPE_RE.sub("__", text[first:])  # same length: positions stay put
    code = np.frombuffer(t.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    depth = np.cumsum((code == ord("{")).astype(np.int32) - (code == ord("}")))
    close = {}
    for j in opens:
        r = j - first
        below = depth[r + 1 :] < depth[r]  # depth steps by one: the first drop below is the match
        k = int(below.argmax()) if below.size else 0
        if below.size and below[k]:
            close[j] = j + 1 + k
    return close


def extract_boxed(text: str) -> str | None:
    """Content of the last complete, non-empty ``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces).

    ``\\boxed 5`` (no braces) is also accepted. An unclosed or empty box is passed over in favour of an
    earlier complete one. Returns None when there is none.
    """
    if not isinstance(text, str) or "\\" not in text:
        return None
    candidates = [(m, _SPACES_RE.match(text, m.end()).end())  # (command, where its argument starts)
                  for m in deque(_BOX_CMD_RE.finditer(text), maxlen=_CANDIDATES)]
    opens = [j for _, j in candidates if j < len(text) and text[j] == "{"]
    close = _closing_braces(text, opens) if opens else {}
    for m, j in reversed(candidates):
        if j < len(text) and text[j] == "{":
            end = close.get(j)
            content = text[j + 1 : end] if end is not None else None
        elif m.group(0) == "\\boxed" and j > m.end():  # "\boxed 5"
            tok = _BARE_TOKEN_RE.match(text, j)
            content = tok.group(0) if tok else None
        else:
            content = None
        if content is not None and content.strip():
            return content.strip()
    return None


# Possessive \s*+ / \s++: a greedy \s* before (.+) backtracks quadratically over a long run of trailing
# whitespace; the only matches it could still find there have a blank answer, which is skipped anyway.
_ANSWER_IS_RE = re.compile(r"(?:final\s++answer|answer)\s*+(?:is|:|=)\s*+:?\s*+(.+)", re.IGNORECASE)
_HASHES_RE = re.compile(r"####\s*+(.+)")
_LAST_NUMBER_RE = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")
_DOLLAR_MATH_RE = re.compile(r"\$([^$]+)\$")  # the same content as \$+([^$]+)\$+, without its O(n^2) worst case
_SENTENCE_END_RE = re.compile(r"\.(?:\s|$)")


def _paren_math(s: str) -> str | None:
    """Content of the first ``\\(...\\)`` on a line (the shortest, non-empty), found without a regex
    (a lazy ``\\\\\\((.+?)\\\\\\)`` rescans the line from every unclosed ``\\(``)."""
    p = s.find("\\(")
    if p < 0:
        return None
    q = s.find("\\)", p + 3)  # no close after the first opening: none after any later one either
    return s[p + 2 : q] if q >= 0 else None


def _clean_fallback(s: str) -> str | None:
    s = s.strip().split("\n", 1)[0].strip()
    m = _DOLLAR_MATH_RE.search(s)
    inner = m.group(1) if m else _paren_math(s)
    if inner is not None:
        s = inner
    else:
        end = _SENTENCE_END_RE.search(s)
        s = s[: end.start()] if end else s
    s = s.strip().strip("*").strip().rstrip(".,;:!").strip()
    if not s or len(s) > 200:
        return None
    return s


def extract_answer(response: str) -> tuple[str | None, bool]:
    """(answer, boxed). The last ``\\boxed{}`` if any (boxed=True); otherwise a fallback: the last
    "answer is X" / "final answer: X", then a GSM8K-style "#### X", then the last number in the text
    (boxed=False). (None, False) when nothing is found, and for a response over ``MAX_RESPONSE_CHARS``."""
    if not isinstance(response, str) or not response or len(response) > MAX_RESPONSE_CHARS:
        return None, False
    boxed = extract_boxed(response)
    if boxed is not None:
        return boxed, True
    for rx in (_ANSWER_IS_RE, _HASHES_RE):
        for m in reversed(deque(rx.finditer(response), maxlen=_CANDIDATES)):
            ans = _clean_fallback(m.group(1))
            if ans:
                return ans, False
    nums = _LAST_NUMBER_RE.findall(response)
    return (nums[-1], False) if nums else (None, False)


# --------------------------------------------------------------------------------------------------
# Normalisation, exact and numeric compare (no eval, no sympy)
# --------------------------------------------------------------------------------------------------

_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|operatorname|mbox)\s*\{([^{}]*)\}")
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_INT_RE = re.compile(r"[+-]?\d+")
_DEC_RE = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+)")
_FRAC_RE = re.compile(r"([+-]?)\\frac\{([+-]?\d+)\}\{([+-]?\d+)\}")
_FRAC_SHORT_RE = re.compile(r"([+-]?)\\frac(\d)(\d)")
_SLASH_RE = re.compile(r"([+-]?\d+)/([+-]?\d+)")
_SCI_RE = re.compile(
    r"([+-]?(?:\d+\.?\d*|\.\d+))(?:[eE]([+-]?\d+)|(?:\\times|\\cdot|\*)10\^\{?([+-]?\d+)\}?)"
)
_ASSIGN_RE = re.compile(r"[a-zA-Z]=(.+)")
_CHOICE_GOLD_RE = re.compile(r"\(?([A-E]{1,5})\)?")


def ascii_digits(s: str) -> str:
    """Every decimal digit of any script ("٤", "４", "𝟒", category Nd) as its ASCII digit."""
    if s.isascii():
        return s
    return "".join(str(unicodedata.decimal(c)) if unicodedata.category(c) == "Nd" else c for c in s)


def normalize_answer(s: str) -> str:
    """Cheap canonical form for string comparison: ASCII digits; no math delimiters, spacing commands,
    \\left/\\right, \\text{} wrappers, degree signs, percent signs, whitespace, trailing period;
    1,000 -> 1000 (but a comma followed by a space separates answers: "48, 384" stays a list, as
    math-verify reads it); "x=5" -> "5" when the right side is a plain number."""
    s = ascii_digits(s).strip().replace("\\$", "")  # \$18 (dollars) -> 18
    s = s.lstrip("$")  # the outer $ runs; the closing one may stand before a final newline (as $ in a regex)
    s = (s[:-1].rstrip("$") + "\n" if s.endswith("\n") else s.rstrip("$")).strip()
    for left, right in (("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right):
            s = s[2:-2].strip()
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\\left(?![a-zA-Z])|\\right(?![a-zA-Z])", "", s)
    s = re.sub(r"\\[,;:! ]", "", s).replace("~", "")
    for _ in range(3):
        new = _TEXT_CMD_RE.sub(r"\1", s)
        if new == s:
            break
        s = new
    s = DEGREE_TAIL_RE.sub("", s)
    s = re.sub(r"\\?%$", "", s.strip())
    # "48, 384" is a list of two answers (Gaokao 2023 EN #9), "48,384" a number: decide before the spaces go
    list_comma = re.search(r",\s", s) is not None
    s = re.sub(r"\s+", "", s)
    s = s.rstrip(".")
    m = _ASSIGN_RE.fullmatch(s)
    if m and as_number(m.group(1)) is not None:
        s = m.group(1)
    if not list_comma and _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    return s


def as_number(s: str) -> tuple[Fraction, str] | None:
    """(value, kind) for an integer, a finite decimal or a simple fraction of integers; else None.
    kind is "exact" for integers/decimals (literal values) and "frac" for fractions."""
    if len(s) > 60:
        return None
    if _INT_RE.fullmatch(s) or _DEC_RE.fullmatch(s):
        return Fraction(s), "exact"
    m = _SCI_RE.fullmatch(s)  # 4.5e33, 4.5\times10^{33}
    if m:
        exp = int(m.group(2) if m.group(2) is not None else m.group(3))
        if abs(exp) > 400:
            return None
        return Fraction(m.group(1)) * Fraction(10) ** exp, "exact"
    for rx in (_FRAC_RE, _FRAC_SHORT_RE):
        m = rx.fullmatch(s)
        if m:
            den = int(m.group(3))
            if den == 0:
                return None
            v = Fraction(int(m.group(2)), den)
            return (-v if m.group(1) == "-" else v), "frac"
    m = _SLASH_RE.fullmatch(s)
    if m and int(m.group(2)) != 0:
        return Fraction(int(m.group(1)), int(m.group(2))), "frac"
    return None


def _choice_letters(s: str) -> str | None:
    t = re.sub(r"[()\s,、;，]", "", s)
    if re.fullmatch(r"[A-E]{1,5}", t):
        return "".join(sorted(set(t)))
    m = re.match(r"^\(?([A-E])\)?(?:[.:：)]|$)", s.strip())
    return m.group(1) if m else None


def fast_check(pred: str, gold: str) -> bool | None:
    """True / False when decidable without sympy (normalised string equality, exact numeric compare,
    multiple-choice letters), None to defer to math-verify."""
    p, g = normalize_answer(pred), normalize_answer(gold)
    if not p or not g:
        return False
    if p == g:
        return True
    cg = _CHOICE_GOLD_RE.fullmatch(g)
    if cg:  # multiple-choice gold: compare the chosen letters, nothing else
        letters = _choice_letters(p)
        return letters is not None and letters == "".join(sorted(set(cg.group(1))))
    pn, gn = as_number(p), as_number(g)
    if pn is not None and gn is not None:
        if pn[0] == gn[0]:
            return True
        if pn[1] == "exact" and gn[1] == "exact":
            return False
    return None
