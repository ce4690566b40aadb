"""VERL auxiliary signal Phi and advantage shaping (METHOD.md sections 4-5).

The one place where those formulas live. Metrics are always stacked in the order (ERA, ERV, ER) -- the
order of the weight vectors ``w_explore``/``w_exploit`` -- which is the REVERSE of what
``verl_bench.rank.rank_dynamics`` returns; use ``stack_metrics(er, erv, era)`` to build it.

    mu_k      <- (1 - alpha) mu_k + alpha * batch_mean(m_k)            (after Phi is computed: lagged)
    rd_k(i)    = clip((m_k(i) - mu_k) / (|mu_k| + 1e-8), -clip, clip)
    beta_i     = sigmoid(g (rd_ERA(i) - tau))   or   1[rd_ERA(i) > tau]
    w_i        = beta_i w_explore + (1 - beta_i) w_exploit
    Phi_i      = lambda * sum_k w_i[k] tanh(rd_k(i))
    A_i        = A0_i + min(relu(Phi_i), |A0_i| / kappa)                 (advantage mode, no grad through Phi)
    r_i       <- r_i + Phi_i, then the group estimator                   (reward mode)

Pure functions do the maths; ``RankShaper`` holds the only state (the EMA baselines, the performance EMA
and the step count) and is JSON/pickle friendly so a resumed run continues bit-identically.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from verl_bench.grpo import compute_advantage

__all__ = [
    "METRICS",
    "RankShaper",
    "ShapingConfig",
    "ShapingOutput",
    "adaptive_lambda",
    "auxiliary_signal",
    "ema_update",
    "era_gate",
    "last_token_index",
    "mixing",
    "relative_deviation",
    "shape_advantage",
    "shape_reward",
    "shaping_bonus",
    "stack_metrics",
    "token_advantages",
]

METRICS = ("ERA", "ERV", "ER")  # column order of every (B, 3) metrics tensor and of the weight vectors
ERA, ERV, ER = 0, 1, 2
RD_EPS = 1e-8  # METHOD.md: / (|mu| + 1e-8)

_CHOICES = {
    "gate": ("sigmoid", "hard"),
    "mode": ("meta", "fixed_half", "sum"),
    "lambda_mode": ("fixed", "adaptive"),
    "placement": ("last_token", "all_tokens"),
    "target": ("advantage", "reward"),
    "baseline_init": ("reference", "bias_corrected"),
}


@dataclass(frozen=True)
class ShapingConfig:
    """Every VERL shaping knob with its default (the paper's / the reference's setting).

    enabled        False gives plain GRPO, bit-identically.
    alpha          EMA rate of the metric baselines and of the performance EMA.
    gain, tau      ERA gate: sigmoid(gain * (rd_ERA - tau)); tau is the ERA threshold (0 = reference).
    gate           "sigmoid" (reference) or "hard" (1[rd_ERA > tau]).
    mode           "meta" (ERA gate; reference PlanB), "fixed_half" (beta = 0.5; FixTwo),
                   "sum" (w = w_explore + w_exploit, no gate; FixOne).
    w_explore      weights over (ERA, ERV, ER) when exploring (beta = 1).
    w_exploit      weights over (ERA, ERV, ER) when exploiting (beta = 0).
    lam            w_g: the fixed lambda, or the scale of the adaptive one.
    lambda_mode    "fixed" (paper) or "adaptive": lam * (1 - (perf_ema + 1) / 2).
    kappa          advantage mode: the bonus is at most |A0| / kappa.
    placement      "last_token" (reference: the bonus sits on the last response token) or "all_tokens".
    target         "advantage" (reference add_adv) or "reward" (add_reward: Phi joins r before normalising).
    baseline_init  "reference" (mu = 0, then EMA) or "bias_corrected" (mu = first batch mean, then EMA).
    clip           bound of the relative deviation rd.
    """

    enabled: bool = True
    alpha: float = 0.3
    gain: float = 2.0
    tau: float = 0.0
    gate: str = "sigmoid"
    mode: str = "meta"
    w_explore: tuple[float, float, float] = (0.0, 0.0, 1.0)
    w_exploit: tuple[float, float, float] = (0.0, 1.0, 0.0)
    lam: float = 1.0
    lambda_mode: str = "fixed"
    kappa: float = 2.0
    placement: str = "last_token"
    target: str = "advantage"
    baseline_init: str = "reference"
    clip: float = 5.0

    def __post_init__(self) -> None:
        # Configs arrive from YAML, CLI strings and Ray Tune samples: reject a string "false" or a numpy
        # bool masquerading as a flag, and normalise ints / lists so equal configs compare and hash equal.
        if not isinstance(self.enabled, bool):
            # ValueError like every other config error, so callers catch one type
            raise ValueError(f"ShapingConfig.enabled must be a bool, got {self.enabled!r}")  # noqa: TRY004
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(f"ShapingConfig.{name} must be one of {choices}, got {value!r}")
        for name in ("alpha", "gain", "tau", "lam", "kappa", "clip"):
            object.__setattr__(self, name, _real(name, getattr(self, name)))
        for name in ("w_explore", "w_exploit"):
            object.__setattr__(self, name, _weights(name, getattr(self, name)))
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"ShapingConfig.alpha must be in (0, 1], got {self.alpha!r}")
        for name in ("kappa", "clip"):
            if getattr(self, name) <= 0.0:
                raise ValueError(f"ShapingConfig.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("gain", "lam"):
            if getattr(self, name) < 0.0:
                raise ValueError(f"ShapingConfig.{name} must be >= 0, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShapingConfig:
        """Build from a dict, naming unknown keys instead of a bare TypeError (typos in sweep configs)."""
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"ShapingConfig: unknown field(s) {unknown}")
        return cls(**d)


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"ShapingConfig.{name} must be a finite number, got {value!r}")
    return float(value)


def _weights(name: str, value: Any) -> tuple[float, float, float]:
    try:
        w = tuple(value)
    except TypeError:
        w = ()
    if len(w) != 3:
        raise ValueError(f"ShapingConfig.{name} must be 3 weights over (ERA, ERV, ER), got {value!r}")
    try:
        return tuple(_real(name, x) for x in w)  # type: ignore[return-value]
    except ValueError:
        raise ValueError(f"ShapingConfig.{name} must be 3 finite weights, got {value!r}") from None


# ----------------------------------------------------------------------------------------- pure functions


def stack_metrics(er: torch.Tensor, erv: torch.Tensor, era: torch.Tensor) -> torch.Tensor:
    """(B, 3) in the (ERA, ERV, ER) order; takes them in rank_dynamics' (ER, ERV, ERA) order on purpose."""
    return torch.stack([era, erv, er], dim=-1)


def relative_deviation(m: torch.Tensor, mu: torch.Tensor | float, clip: float = 5.0) -> torch.Tensor:
    """clip((m - mu) / (|mu| + 1e-8), -clip, clip): scale-free, so ER (~300) and ERA (~10) are comparable."""
    mu = torch.as_tensor(mu, dtype=m.dtype, device=m.device)
    return ((m - mu) / (mu.abs() + RD_EPS)).clamp(-clip, clip)


def era_gate(
    rd_era: torch.Tensor, gain: float = 2.0, tau: float = 0.0, kind: str = "sigmoid"
) -> torch.Tensor:
    """beta in [0, 1]: ERA above its baseline (rd > tau) shifts the incentive toward exploration (ER)."""
    if kind == "sigmoid":
        return torch.sigmoid(gain * (rd_era - tau))
    if kind == "hard":
        return (rd_era > tau).to(rd_era.dtype)  # strict: rd == tau counts as "not above the threshold"
    raise ValueError(f"gate kind must be 'sigmoid' or 'hard', got {kind!r}")


def mixing(
    rd: torch.Tensor,
    mode: str = "meta",
    w_explore: tuple[float, float, float] = (0.0, 0.0, 1.0),
    w_exploit: tuple[float, float, float] = (0.0, 1.0, 0.0),
    gain: float = 2.0,
    tau: float = 0.0,
    gate: str = "sigmoid",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(beta (B,), w (B, 3)) from rd (B, 3) in (ERA, ERV, ER) order.

    meta: beta = the ERA gate; fixed_half: beta = 0.5; in both w = beta w_explore + (1 - beta) w_exploit.
    sum: w = w_explore + w_exploit with no gate; beta is reported as 1, the coefficient w_explore gets.
    """
    we = torch.as_tensor(w_explore, dtype=rd.dtype, device=rd.device)
    wx = torch.as_tensor(w_exploit, dtype=rd.dtype, device=rd.device)
    if mode == "sum":
        beta = torch.ones_like(rd[..., ERA])
        return beta, (we + wx).expand_as(rd)
    if mode == "meta":
        beta = era_gate(rd[..., ERA], gain, tau, gate)
    elif mode == "fixed_half":
        beta = torch.full_like(rd[..., ERA], 0.5)
    else:
        raise ValueError(f"mode must be one of {_CHOICES['mode']}, got {mode!r}")
    b = beta[..., None]
    return beta, b * we + (1.0 - b) * wx


def auxiliary_signal(rd: torch.Tensor, w: torch.Tensor, lam: float) -> torch.Tensor:
    """Phi_i = lam * sum_k w_i[k] tanh(rd_k(i)); tanh bounds each metric's pull to (-1, 1)."""
    return lam * (w * torch.tanh(rd)).sum(dim=-1)


def adaptive_lambda(w_g: float, perf_ema: float) -> float:
    """w_g * (1 - (perf_ema + 1) / 2), perf_ema in [-1, 1]: the bonus fades as accuracy rises."""
    return w_g * (1.0 - (perf_ema + 1.0) / 2.0)


def ema_update(mu: float, x: float, alpha: float) -> float:
    """(1 - alpha) mu + alpha x, in Python floats (double) so a saved state resumes bit-identically."""
    return (1.0 - alpha) * mu + alpha * x


def shaping_bonus(a0: torch.Tensor, phi: torch.Tensor, kappa: float = 2.0) -> torch.Tensor:
    """min(relu(Phi), |A0| / kappa): only raises A, by at most |A0|/kappa (0 when the group had no signal).

    Phi is detached: it is a function of the rollout's hidden states, a fixed target, never a path for
    gradients into the policy.
    """
    return torch.minimum(torch.relu(phi.detach()), a0.abs() / kappa)


def shape_advantage(a0: torch.Tensor, phi: torch.Tensor, kappa: float = 2.0) -> torch.Tensor:
    """A = A0 + min(relu(Phi), |A0| / kappa) (METHOD.md section 5)."""
    return a0 + shaping_bonus(a0, phi, kappa)


def shape_reward(rewards: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """Reward mode (the reference's add_reward): r + Phi, to be group-normalised afterwards."""
    if not rewards.dtype.is_floating_point:
        rewards = rewards.to(torch.float32)  # integer rewards would truncate Phi away
    return rewards + phi.detach().to(rewards.dtype)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last masked position per row (B,), -1 for empty rows.

    Not ``mask.sum(-1) - 1``: that is only right for right padding, and left-padded batches are common.
    """
    pos = torch.arange(mask.shape[-1], device=mask.device)
    return torch.where(mask.bool(), pos, torch.full_like(pos, -1)).amax(dim=-1)


def token_advantages(
    seq_adv: torch.Tensor,
    mask: torch.Tensor,
    bonus: torch.Tensor | None = None,
    placement: str = "last_token",
) -> torch.Tensor:
    """Per-token advantages (B, T): seq_adv on every response token, plus the bonus (B,) where placed.

    last_token: the bonus only at the last response token (the reference keeps Phi in a sparse token tensor
    next to the outcome score); all_tokens: on every response token. Padding is exactly 0. With bonus None
    the result is plain GRPO's broadcast, which is what makes "shaping off" bit-identical.
    """
    m = mask.bool()
    adv = torch.where(m, seq_adv[:, None], torch.zeros((), dtype=seq_adv.dtype, device=seq_adv.device))
    if bonus is None:
        return adv
    bonus = bonus.detach().to(adv.dtype)[:, None]
    if placement == "all_tokens":
        where = m
    elif placement == "last_token":
        where = torch.arange(m.shape[-1], device=m.device)[None, :] == last_token_index(m)[:, None]
    else:
        raise ValueError(f"placement must be 'last_token' or 'all_tokens', got {placement!r}")
    return adv + torch.where(where, bonus, torch.zeros_like(bonus))


# ----------------------------------------------------------------------------------------------- state


@dataclass
class ShapingOutput:
    """One step's shaping signal. phi/beta (B,), rd (B, 3); all zeros when ``active`` is False.

    lam is the lambda of this step (fixed, or adaptive from the lagged performance EMA); active is True only
    when Phi was actually computed (shaping on, training, and a baseline existed).
    """

    phi: torch.Tensor
    beta: torch.Tensor
    rd: torch.Tensor
    lam: float
    active: bool
    mu: tuple[float, float, float] | None = None  # the (lagged) baseline Phi was computed against

    def log_dict(self, prefix: str = "verl/") -> dict[str, float]:
        """Scalars for a logger: the means of Phi, beta and each rd, lambda, and whether shaping acted."""
        # means in the tensors' own dtype (float64 in the loop), as the step's other metrics
        out = {
            f"{prefix}phi_mean": float(self.phi.mean()) if self.phi.numel() else 0.0,
            f"{prefix}beta_mean": float(self.beta.mean()) if self.beta.numel() else 0.0,
            f"{prefix}lambda": float(self.lam),
            f"{prefix}active": float(self.active),
        }
        for k, name in enumerate(METRICS):
            out[f"{prefix}rd_{name}"] = float(self.rd[:, k].mean()) if self.rd.numel() else 0.0
            if self.mu is not None:
                out[f"{prefix}mu_{name}"] = float(self.mu[k])
        return out


class RankShaper:
    """Holds the EMA baselines mu (ERA, ERV, ER), the performance EMA and the step count.

    ``compute`` uses the CURRENT baseline (built from earlier batches only) and then folds this batch in, so
    a response is never compared with a baseline that contains itself. State is plain Python floats.
    """

    STATE_VERSION = 1

    def __init__(self, config: ShapingConfig | None = None):
        self.config = config if config is not None else ShapingConfig()
        self.reset()

    def reset(self) -> None:
        ref = self.config.baseline_init == "reference"
        # reference: mu = 0 from the start (so the first real comparisons saturate); bias_corrected: None
        # until the first batch sets it.
        self.mu: list[float] | None = [0.0, 0.0, 0.0] if ref else None
        self.perf_ema: float | None = 0.0 if ref else None
        self.step = 0

    # -- persistence ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": self.STATE_VERSION,
            "mu": None if self.mu is None else [float(x) for x in self.mu],
            "perf_ema": None if self.perf_ema is None else float(self.perf_ema),
            "step": int(self.step),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != self.STATE_VERSION:
            raise ValueError(
                f"RankShaper state version {state.get('version')!r}, expected {self.STATE_VERSION}"
            )
        mu = state["mu"]
        if mu is not None and len(mu) != 3:
            raise ValueError(f"RankShaper state mu must have 3 entries (ERA, ERV, ER), got {mu!r}")
        self.mu = None if mu is None else [float(x) for x in mu]
        self.perf_ema = None if state["perf_ema"] is None else float(state["perf_ema"])
        self.step = int(state["step"])

    # -- the step -------------------------------------------------------------------------------------
    def current_lambda(self) -> float:
        cfg = self.config
        if cfg.lambda_mode == "fixed":
            return cfg.lam
        return adaptive_lambda(cfg.lam, 0.0 if self.perf_ema is None else self.perf_ema)

    def compute(
        self, metrics: torch.Tensor, score_mean: float | None = None, training: bool = True
    ) -> ShapingOutput:
        """Phi for one batch of metrics (B, 3) in (ERA, ERV, ER) order; updates the state when training.

        score_mean: the batch's mean task score mapped to [-1, 1] (tracked for adaptive lambda; required then).
        Disabled or evaluation: zeros, state untouched. First training step: zeros (no baseline yet), state
        updated. Otherwise Phi against the lagged baseline, then the baseline absorbs this batch.
        """
        cfg = self.config
        if metrics.dim() != 2 or metrics.shape[-1] != 3:
            raise ValueError(f"metrics must be (B, 3) in (ERA, ERV, ER) order, got {tuple(metrics.shape)}")
        out_dtype = metrics.dtype if metrics.dtype.is_floating_point else torch.float32
        b = metrics.shape[0]
        lam = self.current_lambda()

        def zeros() -> ShapingOutput:
            z = torch.zeros(b, dtype=out_dtype, device=metrics.device)
            mu = None if self.mu is None else tuple(self.mu)
            return ShapingOutput(z, z.clone(), metrics.new_zeros(b, 3, dtype=out_dtype), lam, False, mu)

        if not cfg.enabled or not training:
            return zeros()
        if cfg.lambda_mode == "adaptive" and score_mean is None:
            raise ValueError("ShapingConfig.lambda_mode='adaptive' needs score_mean at every training step")

        m = metrics.detach().to(torch.float64)  # float64: rd divides by baselines that may be tiny
        if self.step == 0:
            out = zeros()  # the baseline does not exist yet: nothing to compare against
        else:
            mu = torch.tensor(self.mu, dtype=torch.float64, device=m.device)
            rd = relative_deviation(m, mu, cfg.clip)
            beta, w = mixing(rd, cfg.mode, cfg.w_explore, cfg.w_exploit, cfg.gain, cfg.tau, cfg.gate)
            phi = auxiliary_signal(rd, w, lam)
            out = ShapingOutput(
                phi.to(out_dtype), beta.to(out_dtype), rd.to(out_dtype), lam, True, tuple(self.mu)
            )
        self._update(m.mean(dim=0).tolist() if b else None, score_mean)
        return out

    def _update(self, batch_mean: list[float] | None, score_mean: float | None) -> None:
        a = self.config.alpha
        if batch_mean is not None:
            if self.mu is None:  # bias_corrected: the first batch IS the baseline
                self.mu = [float(x) for x in batch_mean]
            else:
                self.mu = [ema_update(mu, x, a) for mu, x in zip(self.mu, batch_mean)]
        if score_mean is not None:
            s = float(score_mean)
            self.perf_ema = s if self.perf_ema is None else ema_update(self.perf_ema, s, a)
        self.step += 1

    def sequence_advantages(
        self,
        rewards: torch.Tensor,
        group_ids: torch.Tensor,
        metrics: torch.Tensor,
        score_mean: float | None = None,
        training: bool = True,
        estimator: str = "grpo",
    ) -> tuple[torch.Tensor, torch.Tensor | None, ShapingOutput]:
        """(A0 (B,), bonus (B,) or None, shaping output) for one batch of responses.

        advantage target: A0 = estimator(r) and bonus = min(relu(Phi), |A0|/kappa). Phi is computed whenever
        shaping is on (unlike the released reference, which only computed it in reward mode and so trained
        plain GRPO). reward target: A0 = estimator(r + Phi), no bonus. When Phi is inactive nothing is added,
        so the result is bit-identical to plain GRPO. Sequence level, so a distributed caller can run it on
        the gathered global batch and place the bonus on its own tokens.
        """
        out = self.compute(metrics, score_mean, training)
        cfg = self.config
        if out.active and cfg.target == "reward":
            return compute_advantage(estimator, shape_reward(rewards, out.phi), group_ids), None, out
        a0 = compute_advantage(estimator, rewards, group_ids)
        if not out.active:
            return a0, None, out
        return a0, shaping_bonus(a0, out.phi.to(a0.dtype), cfg.kappa), out

    def advantages(self, rewards: torch.Tensor, group_ids: torch.Tensor, mask: torch.Tensor,
                   metrics: torch.Tensor, **options) -> tuple[torch.Tensor, ShapingOutput]:
        """The whole shaped step on one worker's batch: per-token advantages (B, T) (bonus at ``placement``)
        and the shaping output. ``mask`` (B, T) marks response tokens; ``options`` (``score_mean``,
        ``training``, ``estimator``) are those of :meth:`sequence_advantages`."""
        a0, bonus, out = self.sequence_advantages(rewards, group_ids, metrics, **options)
        return token_advantages(a0, mask, bonus, self.config.placement), out
