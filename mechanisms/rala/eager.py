"""RALA, the readable eager reference (spec section 1, steps 4-9), and its token mixer.

Fan et al., "Breaking the Low-Rank Dilemma of Linear Attention", CVPR 2025. The operator follows
the published classification code's order of operations so float32 outputs match it to ~1e-6.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnbench.layers import TokenMixer, apply_rope, rope_tables

CITE_RALA = "Fan et al., Breaking the Low-Rank Dilemma of Linear Attention, CVPR 2025"


def phi(t):
    """The positive feature map ELU(t) + 1."""
    return F.elu(t) + 1.0


def default_rope(grid, head_dim, like):
    """Op-level RoPE tables: built in float32 (the published buffer dtype; float64 for float64
    inputs, so fp64 references stay exact), then cast to `like`'s dtype."""
    build = torch.float64 if like.dtype == torch.float64 else torch.float32
    sin, cos = rope_tables(grid[0], grid[1], head_dim, dtype=build, device=like.device)
    return sin.to(like.dtype), cos.to(like.dtype)


def rala_op(q, k, v, *, grid, rope=None):
    """RALA operator on raw projections. q, k, v: (B, h, N, d); grid = (H, W), N = H*W.

    rope: (sin, cos), each (N, d); None builds the default tables (`default_rope`).
    """
    n = q.shape[-2]
    if grid[0] * grid[1] != n:
        raise ValueError(f"grid {tuple(grid)} has {grid[0] * grid[1]} tokens but the inputs have {n}")
    sin, cos = rope if rope is not None else default_rope(grid, q.shape[-1], q)
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
