"""RALA, the readable reference (docs/rala.md "The RALA operator"): the operator, its token mixer
and its KV state.

Every fast form (compiled, Triton) is tested against these functions; `rala_eager` (eager.py) runs them.

Fan et al., "Breaking the Low-Rank Dilemma of Linear Attention", CVPR 2025. The operator follows
the published classification code's order of operations so float32 outputs match it to ~1e-6.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from attnbench.layers import PER_CASE_CACHES, TokenMixer, apply_rope, rope_tables
from mechanisms.common import check_grid

CITE_RALA = "Fan et al., Breaking the Low-Rank Dilemma of Linear Attention, CVPR 2025"


def phi(t):
    """The positive feature map ELU(t) + 1."""
    return F.elu(t) + 1.0


def default_rope(grid, head_dim, like):
    """Op-level RoPE tables: built in float32 (the published buffer dtype; float64 for float64
    inputs, so fp64 references stay exact), then cast to `like`'s dtype.

    Cached per (grid, head_dim, dtype, device) (`_cached_rope`; the runner empties it after each case,
    attnbench.layers.PER_CASE_CACHES, so peak-memory figures do not depend on earlier cases): the tables depend
    on nothing else, and the mixer level gets them the same way, built once by its caller's Rope2d and passed in
    (a RAVLT stage builds them once per forward for all its blocks). So op-level times of every RALA form
    exclude building them, as mixer-level times do. Read-only: callers must not modify the returned tensors."""
    if torch.compiler.is_compiling() or like.device.type == "meta":
        return _build_rope(tuple(grid), head_dim, like.dtype, like.device)  # never cache fake/meta tensors
    return _cached_rope(tuple(grid), head_dim, like.dtype, like.device)


def _build_rope(grid, head_dim, dtype, device):
    build = torch.float64 if dtype == torch.float64 else torch.float32
    sin, cos = rope_tables(grid[0], grid[1], head_dim, dtype=build, device=device)
    return sin.to(dtype), cos.to(dtype)


@functools.lru_cache(maxsize=8)
def _cached_rope(grid, head_dim, dtype, device):
    # ordinary tensors even when first asked for under inference_mode (inference tensors could not be
    # saved for a later backward) and outside any autograd graph
    with torch.inference_mode(False), torch.no_grad():
        return _build_rope(grid, head_dim, dtype, device)


PER_CASE_CACHES.append(_cached_rope.cache_clear)  # the runner empties it after each case


def op_tables(q, grid, rope):
    """The operator's RoPE tables: `rope` as given, or the default ones for `grid` (`default_rope`), after
    checking that `grid` has q's N tokens (ValueError otherwise)."""
    check_grid(grid, q.shape[-2])
    return rope if rope is not None else default_rope(grid, q.shape[-1], q)


def rala_op(q, k, v, *, grid, rope=None):
    """RALA operator on raw projections. q, k, v: (B, h, N, d); grid = (H, W), N = H*W.

    rope: (sin, cos), each (N, d); None builds the default tables (`default_rope`).
    """
    n = q.shape[-2]
    sin, cos = op_tables(q, grid, rope)
    scale = q.shape[-1] ** -0.5
    q = phi(q)
    k = phi(k)  # (B, h, N, d)
    q_mean = q.mean(dim=-2, keepdim=True)  # (B, h, 1, d)
    alpha = torch.softmax(scale * q_mean @ k.transpose(-1, -2), dim=-1).transpose(-1, -2)  # (B, h, N, 1)
    k = k * alpha * n  # query-aware token reweighting
    q_rope = apply_rope(q, sin, cos)
    k_rope = apply_rope(k, sin, cos)
    z = 1 / (q @ k.mean(dim=-2, keepdim=True).transpose(-2, -1) + 1e-6)  # (B, h, N, 1), un-rotated
    kv = (k_rope.transpose(-2, -1) * n**-0.5) @ (v * n**-0.5)  # (B, h, d, d)
    return q_rope @ kv * z  # (B, h, N, d)


def rala_mixer(dim: int, num_heads: int, operator=rala_op, **shell_options) -> TokenMixer:
    """The RALA token mixer: state_dict keys qkvo.*, lepe.*, proj.* exactly as published."""
    return TokenMixer(dim, num_heads, operator, **shell_options)


def rala_kv_buffer(q: Tensor, k: Tensor, v: Tensor, *, grid, rope=None, query_aware: bool = True) -> Tensor:
    """RALA's KV from raw q, k, v (B, h, N, d): mean_m R(k~_m) v_m^T, (B, h, d, d) (docs/rala.md "The RALA
    operator", step 5).

    k~_m = phi(k_m) alpha_m N with alpha = softmax_m(d^-0.5 mean_n phi(q_n) . phi(k_m)), or
    k~ = phi(k) when query_aware is False. rope: (sin, cos) tables, None builds the default ones.
    """
    n = q.shape[-2]
    sin, cos = op_tables(q, grid, rope)
    k = phi(k)  # (B, h, N, d)
    if query_aware:
        q_mean = phi(q).mean(dim=-2, keepdim=True)  # (B, h, 1, d)
        alpha = torch.softmax(q.shape[-1] ** -0.5 * q_mean @ k.transpose(-1, -2), dim=-1).transpose(-1, -2)
        k = k * alpha * n  # (B, h, N, d)
    k_rope = apply_rope(k, sin, cos)
    return (k_rope.transpose(-2, -1) * n**-0.5) @ (v * n**-0.5)
