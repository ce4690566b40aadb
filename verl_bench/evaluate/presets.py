"""Named evaluation protocols: how many samples per problem, at what temperature, how long, which k."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class EvalPreset:
    name: str
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    n: int = 1  # samples per problem
    max_tokens: int = 1536
    ks: tuple[int, ...] = field(default=(1,))  # pass@k / maj@k reported for these k (each <= n)
    limit: int | None = None  # problems per benchmark (None = all)

    def __post_init__(self):
        problems = []
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.n < 1:
            problems.append(f"n must be >= 1, got {self.n}")
        if self.temperature == 0 and self.n > 1:
            problems.append("greedy decoding (temperature 0) gives n identical samples: use n=1 or a temperature")
        if self.max_tokens < 1:
            problems.append(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not self.ks or any(k < 1 or k > self.n for k in self.ks):
            problems.append(f"every k must be in 1..n={self.n}, got ks={list(self.ks)}")
        if self.limit is not None and self.limit < 1:
            problems.append(f"limit must be >= 1, got {self.limit}")
        if problems:
            raise ValueError(f"eval preset {self.name!r}: " + "; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generation_kwargs(self) -> dict:
        if self.greedy:
            return {"do_sample": False, "temperature": 0.0, "max_gen_toks": self.max_tokens}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p,
                "max_gen_toks": self.max_tokens}

    def with_overrides(self, **kw) -> EvalPreset:
        """A copy with the given fields replaced (None values are ignored); re-validated."""
        kw = {k: v for k, v in kw.items() if v is not None}
        if "ks" in kw:
            kw["ks"] = tuple(kw["ks"])
        if kw.get("n") and "ks" not in kw:  # a new n reports every power of two up to it
            kw["ks"] = tuple(k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= kw["n"])
        if kw.get("n", self.n) > 1 and kw.get("temperature", self.temperature) == 0:
            kw.setdefault("temperature", 0.6)  # asking for several samples implies sampling
            kw.setdefault("top_p", 0.95)
        return dataclasses.replace(self, **kw) if kw else self

    def key(self) -> str:
        """A folder name that changes whenever the protocol does (so results are never mixed)."""
        if self.greedy:
            s = f"greedy_t{self.max_tokens}"
        else:
            s = f"T{self.temperature:g}_p{self.top_p:g}_n{self.n}_t{self.max_tokens}"
        return s + (f"_lim{self.limit}" if self.limit else "")


PRESETS: dict[str, EvalPreset] = {p.name: p for p in [
    # The VERL paper's protocol (METHOD.md section 6): one sample at T=0.6, top-p 0.95, 1536 new tokens.
    EvalPreset("paper", temperature=0.6, top_p=0.95, n=1, max_tokens=1536),
    EvalPreset("greedy", temperature=0.0, n=1, max_tokens=1536),
    # A fast look at a checkpoint: greedy, short answers, the first 50 problems of each set.
    EvalPreset("quick", temperature=0.0, n=1, max_tokens=512, limit=50),
    # pass@k curves: 16 samples per problem.
    EvalPreset("pass16", temperature=0.6, top_p=0.95, n=16, max_tokens=1536, ks=(1, 2, 4, 8, 16)),
]}


def get_preset(name: str) -> EvalPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown eval preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]
