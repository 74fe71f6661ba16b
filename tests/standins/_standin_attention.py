"""Eager attention in the (B, N, h, d) layout of flash-attn and xformers, shared by the stand-ins."""

from __future__ import annotations

import torch
from torch import Tensor


def check_bnhd(q: Tensor, k: Tensor, v: Tensor, *, dtypes: tuple[torch.dtype, ...], who: str) -> None:
    """The input contract the real kernels enforce (same checks, simpler messages)."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.dim() != 4:
            raise ValueError(f"{who}: {name} must be (batch, seqlen, nheads, headdim), got {tuple(x.shape)}")
        if x.stride(-1) != 1:
            raise RuntimeError(f"{who}: {name} must have contiguous last dimension")
        if x.dtype not in dtypes:
            raise RuntimeError(f"{who}: {name} has dtype {x.dtype}; supported: {dtypes}")
    if not (q.shape == k.shape == v.shape and q.dtype == k.dtype == v.dtype and q.device == k.device == v.device):
        raise ValueError(f"{who}: q, k, v must agree in shape, dtype and device (the stand-in has no GQA)")


def attention_bnhd(q: Tensor, k: Tensor, v: Tensor, scale: float | None) -> tuple[Tensor, Tensor]:
    """(B, N, h, d) x3 -> out (B, N, h, d) in q's dtype, lse (B, h, N) float32; fp32 inside, differentiable."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.einsum("bnhd,bmhd->bhnm", q.float(), k.float()) * scale  # (B, h, N, N)
    lse = torch.logsumexp(scores, dim=-1)  # (B, h, N)
    out = torch.einsum("bhnm,bmhd->bnhd", torch.softmax(scores, dim=-1), v.float())  # (B, N, h, d)
    return out.to(q.dtype), lse
