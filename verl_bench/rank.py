"""Effective rank (ER) of response hidden states, and its velocity (ERV) and acceleration (ERA).

The one place where the formulas of METHOD.md sections 2-3 live.

    Zc = Z - mean_rows(Z);  s = svdvals(Zc);  p = s / (sum s + 1e-8);  ER = exp(-sum p log(p + 1e-8))

Numerics. The singular values come from the eigenvalues of a Gram matrix Zc Zc^T (L x L) or covariance
Zc^T Zc (D x D), whichever side is smaller, computed in float64: the square root amplifies the relative error
of small eigenvalues, and float32 Grams turn exact zeros into noise of size sqrt(eps32) * s_max that shifts ER
of low-rank responses by far more than 1e-4. Eigenvalues below the rank tolerance n * eps * lambda_max are
noise, not signal, and are set to zero (the same rule as ``torch.linalg.matrix_rank``).

Batching. Responses are processed in chunks of ``chunk_size``; per chunk there is ONE Gram (or covariance)
matmul and one batched ``eigvalsh`` for ER, and the prefix ERs of ERV/ERA reuse top-left blocks of one Gram
of the last ``window`` rows, double-centred, with one batched ``eigvalsh`` per prefix length (every response
has the same prefix lengths s+1, 2s+1, ..., only their number differs).

Conventions: ``hidden`` is (B, T, D) and ``mask`` (B, T) marks the response rows; rows need not be
contiguous (left or right padding both work): the k-th masked row of a response is its k-th token.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["RankMetrics", "effective_rank", "er_from_eigenvalues", "rank_dynamics", "velocity_acceleration"]

_P_EPS = 1e-8  # METHOD.md: p = s / (sum s + 1e-8), log(p + 1e-8)


def er_from_eigenvalues(eig: torch.Tensor) -> torch.Tensor:
    """ER from the eigenvalues (..., n) of a centred Gram/covariance: s = sqrt(max(eig, 0))."""
    eig = eig.clamp_min(0)
    tol = eig.amax(dim=-1, keepdim=True) * eig.shape[-1] * torch.finfo(eig.dtype).eps
    s = torch.where(eig > tol, eig, torch.zeros_like(eig)).sqrt()
    p = s / (s.sum(dim=-1, keepdim=True) + _P_EPS)
    return torch.exp(-(p * torch.log(p + _P_EPS)).sum(dim=-1))


def _compact(hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move the masked rows of each response to the front: returns (B, Lmax, D) rows and lengths (B,)."""
    mask = mask.to(torch.bool)
    lengths = mask.sum(dim=1)
    lmax = int(lengths.max()) if lengths.numel() else 0
    already_right_padded = bool((mask[:, :lmax] == (torch.arange(lmax, device=mask.device) < lengths[:, None])).all())
    if already_right_padded and not mask[:, lmax:].any():
        rows = hidden[:, :lmax]
        return rows * mask[:, :lmax, None].to(rows.dtype), lengths
    # stable sort puts masked rows first, in their original order
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices[:, :lmax]
    rows = torch.gather(hidden, 1, order[:, :, None].expand(-1, -1, hidden.shape[-1]))
    keep = torch.arange(lmax, device=mask.device) < lengths[:, None]
    return rows * keep[:, :, None].to(rows.dtype), lengths


def _centred_gram(gram: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Double-centre a Gram of zero-padded rows: C G C with C = diag(m) - m m^T / n, m the row mask."""
    size = gram.shape[-1]
    m = (torch.arange(size, device=gram.device) < n[:, None]).to(gram.dtype)  # (B, size)
    nf = n.clamp_min(1).to(gram.dtype)[:, None]
    row_mean = gram.sum(dim=-1) / nf  # padded rows/cols of gram are zero already
    total_mean = row_mean.sum(dim=-1, keepdim=True) / nf
    gc = gram - row_mean[:, :, None] * m[:, None, :] - m[:, :, None] * row_mean[:, None, :]
    return gc + total_mean[:, :, None] * m[:, :, None] * m[:, None, :]


def _er_of_rows(rows: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """ER of zero-padded (B, L, D) rows in the compute dtype, by the smaller of Gram and covariance."""
    _, length, dim = rows.shape
    if length <= dim:
        gram = _centred_gram(rows @ rows.transpose(1, 2), lengths)
    else:
        nf = lengths.clamp_min(1).to(rows.dtype)[:, None]
        mean = rows.sum(dim=1) / nf
        gram = rows.transpose(1, 2) @ rows - nf[:, :, None] * mean[:, :, None] * mean[:, None, :]
    gram = 0.5 * (gram + gram.transpose(1, 2))
    return er_from_eigenvalues(torch.linalg.eigvalsh(gram))


def effective_rank(
    hidden: torch.Tensor, mask: torch.Tensor, *, dtype: torch.dtype = torch.float64, chunk_size: int = 32
) -> torch.Tensor:
    """ER of each response: Tensor[B] in float32 on the input's device (0 for empty responses)."""
    _check(hidden, mask)
    out = []
    for start in range(0, hidden.shape[0], chunk_size):
        rows, lengths = _compact(hidden[start : start + chunk_size], mask[start : start + chunk_size])
        er = _er_of_rows(rows.to(dtype), lengths)
        out.append(torch.where(lengths > 0, er, torch.zeros_like(er)))
    return _cat(out, hidden)


def velocity_acceleration(prefix_er: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ERV and ERA from prefix ERs e_1..e_J (B, J) whose first valid[b].sum() entries are real.

    v_j = e_j - mean(e_1..e_{j-1}) for j >= 2;  a_j = v_j - v_{j-1} for j >= 3;  ERV = mean v, ERA = mean a.
    """
    e = torch.where(valid, prefix_er, torch.zeros_like(prefix_er))
    count = valid.sum(dim=1)
    j = torch.arange(1, e.shape[1] + 1, device=e.device, dtype=e.dtype)
    prev_mean = (torch.cumsum(e, dim=1) - e) / (j - 1).clamp_min(1)
    v = (e - prev_mean)[:, 1:]  # v_2 .. v_J
    v_valid = valid[:, 1:]
    a = v[:, 1:] - v[:, :-1]  # a_3 .. a_J
    a_valid = valid[:, 2:]
    erv = (v * v_valid).sum(dim=1) / (count - 1).clamp_min(1)
    era = (a * a_valid).sum(dim=1) / (count - 2).clamp_min(1)
    return erv, era


class RankMetrics(NamedTuple):
    """The three rank metrics of a batch of responses, by name (each Tensor[B]); unpacks as (er, erv, era)."""

    er: torch.Tensor
    erv: torch.Tensor
    era: torch.Tensor

    def map(self, fn) -> RankMetrics:
        """The same metrics with ``fn`` applied to each (a dtype or device move, a gather over workers)."""
        return RankMetrics(*(fn(m) for m in self))


def rank_dynamics(
    hidden: torch.Tensor,
    mask: torch.Tensor,
    stride: int = 40,
    window: int = 512,
    *,
    dtype: torch.dtype = torch.float64,
    chunk_size: int = 32,
) -> RankMetrics:
    """RankMetrics(er, erv, era) per response, each Tensor[B] float32 on the input's device.

    ER is over the whole response. ERV/ERA are over H = the last ``window`` rows: the ERs of the growing
    prefixes H[:t+1] for t = stride, 2*stride, ... while t < rows(H); zero when rows(H) < 2*stride.
    """
    _check(hidden, mask)
    if stride < 1 or window < 1:
        raise ValueError(f"rank_dynamics: stride ({stride}) and window ({window}) must be >= 1")
    ers, ervs, eras = [], [], []
    for start in range(0, hidden.shape[0], chunk_size):
        rows, lengths = _compact(hidden[start : start + chunk_size], mask[start : start + chunk_size])
        rows = rows.to(dtype)
        er, erv, era = _dynamics_of_rows(rows, lengths, stride, window)
        ers.append(er)
        ervs.append(erv)
        eras.append(era)
    return RankMetrics(_cat(ers, hidden), _cat(ervs, hidden), _cat(eras, hidden))


def _dynamics_of_rows(rows, lengths, stride, window):
    b, lmax, dim = rows.shape
    hlen = lengths.clamp(max=window)  # rows(H)
    wmax = int(hlen.max()) if b else 0
    if lmax <= window:
        head = rows[:, :wmax]  # every response fits the window: H is the response itself
    else:
        # H = the last hlen rows of each response, moved to the front
        offset = (lengths - hlen)[:, None]
        idx = (torch.arange(wmax, device=rows.device)[None, :] + offset).clamp(max=lmax - 1)
        keep = torch.arange(wmax, device=rows.device)[None, :] < hlen[:, None]
        head = torch.gather(rows, 1, idx[:, :, None].expand(-1, -1, dim)) * keep[:, :, None].to(rows.dtype)
    head_gram = head @ head.transpose(1, 2)  # (B, wmax, wmax): the one Gram all prefixes share

    if lmax <= window and lmax <= dim:
        er = er_from_eigenvalues(torch.linalg.eigvalsh(_sym(_centred_gram(head_gram, lengths))))
    else:
        er = _er_of_rows(rows, lengths)
    er = torch.where(lengths > 0, er, torch.zeros_like(er))

    ts = list(range(stride, wmax, stride))  # prefix H[:t+1] exists for a response iff t < rows(H)
    prefix_er = rows.new_zeros(b, len(ts))
    valid = torch.zeros(b, len(ts), dtype=torch.bool, device=rows.device)
    for j, t in enumerate(ts):
        has = t < hlen
        sel = has.nonzero().squeeze(1)
        if sel.numel() == 0:
            break
        n = t + 1
        block = head_gram[sel, :n, :n]
        g = _centred_gram(block, torch.full_like(sel, n))
        prefix_er[sel, j] = er_from_eigenvalues(torch.linalg.eigvalsh(_sym(g)))
        valid[:, j] = has
    erv, era = velocity_acceleration(prefix_er, valid)
    short = hlen < 2 * stride
    zero = torch.zeros_like(erv)
    return er, torch.where(short, zero, erv), torch.where(short, zero, era)


def _sym(g: torch.Tensor) -> torch.Tensor:
    return 0.5 * (g + g.transpose(-1, -2))


def _cat(parts: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    if not parts:
        return like.new_zeros(0, dtype=torch.float32)
    return torch.cat(parts).to(torch.float32)


def _check(hidden: torch.Tensor, mask: torch.Tensor) -> None:
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be (B, T, D), got shape {tuple(hidden.shape)}")
    if mask.shape != hidden.shape[:2]:
        raise ValueError(f"mask must be (B, T) = {tuple(hidden.shape[:2])}, got {tuple(mask.shape)}")
