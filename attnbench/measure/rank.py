"""Rank maths: numerical rank and effective rank of matrices, averaged per head.

What is measured (KV buffers, operator outputs) and on which inputs is attnbench.workloads.rank_inputs;
the rows (kv_rank, kv_erank, out_rank, out_erank) are attnbench.metrics.rank.

Definitions (singular values s_1 >= s_2 >= ... of one matrix M x N, computed in float64):
- numerical rank: #{s_i > rtol * s_1}, rtol = max(M, N) * eps(dtype) (numpy.linalg.matrix_rank's
  default; eps of the dtype the matrix was computed in), capped at 1e-2 - for 16-bit dtypes
  max(M, N) * eps exceeds 1 at a few hundred tokens, which would make every matrix rank 0.
- effective rank (Roy & Vetterli, "The effective rank: a measure of effective dimensionality",
  EUSIPCO 2007): exp(H(p)), p_i = s_i / sum_j s_j, H the Shannon entropy (natural log, 0 log 0 = 0);
  between 1 and the rank; d for any matrix with d equal singular values; 0 for a zero matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "RANK_METRICS",
    "RTOL_CAP",
    "RankStats",
    "effective_rank",
    "numerical_rank",
    "rank_rtol",
    "rank_stats",
    "singular_values",
]

RANK_METRICS = ("kv_rank", "kv_erank", "out_rank", "out_erank")
RTOL_CAP = 1e-2


def singular_values(mats: Tensor) -> Tensor:
    """Singular values in float64, descending: (..., M, N) -> (..., min(M, N))."""
    return torch.linalg.svdvals(mats.detach().to(device="cpu", dtype=torch.float64))


def rank_rtol(rows: int, cols: int, dtype: torch.dtype) -> float:
    """Relative tolerance of the numerical rank: min(max(M, N) * eps(dtype), 1e-2)."""
    return min(max(rows, cols) * torch.finfo(dtype).eps, RTOL_CAP)


def numerical_rank(mats: Tensor, *, dtype: torch.dtype | None = None) -> Tensor:
    """#{s_i > rtol * s_max} per matrix of (..., M, N) -> (...,) float64; `dtype` sets eps (default mats')."""
    s = singular_values(mats)
    rtol = rank_rtol(mats.shape[-2], mats.shape[-1], dtype or mats.dtype)
    tol = s[..., :1] * rtol
    return ((s > tol) & (s > 0)).sum(dim=-1).to(torch.float64)


def effective_rank(mats: Tensor) -> Tensor:
    """exp(entropy of s / sum s) per matrix of (..., M, N) -> (...,) float64; 0 for a zero matrix."""
    s = singular_values(mats)
    total = s.sum(dim=-1, keepdim=True)
    p = s / total.clamp_min(torch.finfo(torch.float64).tiny)
    erank = torch.exp(-torch.xlogy(p, p).sum(dim=-1))
    return torch.where(total.squeeze(-1) > 0, erank, torch.zeros_like(erank))


@dataclass(frozen=True)
class RankStats:
    """Mean numerical rank and effective rank over `count` matrices of shape `shape`."""

    rank: float
    erank: float
    rtol: float
    count: int
    shape: tuple[int, int]


def rank_stats(t: Tensor, *, dtype: torch.dtype | None = None) -> RankStats:
    """Average over the leading dims (batch, heads) of per-matrix ranks of t (..., M, N)."""
    mats = t.reshape(-1, t.shape[-2], t.shape[-1])
    dtype = dtype or t.dtype
    return RankStats(
        rank=float(numerical_rank(mats, dtype=dtype).mean()),
        erank=float(effective_rank(mats).mean()),
        rtol=rank_rtol(mats.shape[-2], mats.shape[-1], dtype),
        count=mats.shape[0],
        shape=(mats.shape[-2], mats.shape[-1]),
    )
