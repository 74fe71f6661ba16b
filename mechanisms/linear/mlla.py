"""MLLA, Mamba-like linear attention (`mlla`).

Paper: Han, Wang, Xia, Han, Pu, Lv, Song, Huang, "Demystify Mamba in Vision: A Linear Attention
Perspective", NeurIPS 2024.

Formula, phi(t) = ELU(t) + 1, R = MLLA's 2D rotary embedding:
    out_n = R(phi(q_n))^T KV / (phi(q_n) . mean_m phi(k_m) + 1e-6),  KV = mean_m R(phi(k_m)) v_m^T.
(The normaliser uses the un-rotated features; RALA is this plus query-aware token weights.)
Where the paper is vague this follows LeapLabTHU/MLLA, `models/mlla.py` at 5a171968 (LinearAttention
and RoPE): the rotation acts on the full C = h*d channels *before* the head split, channel pairs
(2j, 2j+1) rotated as complex numbers by angle_j, with k_max = C/4, theta_t = 10000^(-t/k_max),
angle_j = row * theta_j for j < k_max and col * theta_(j - k_max) otherwise (tokens row-major).
This differs from the spec's per-head Rope2d (its frequencies use linspace over d/4 per head), so
the mixer ignores the shell's tables and builds MLLA's own (float32, as their buffer; float64 for
float64 inputs). KV as (K^T / sqrt N) @ (V / sqrt N), as their code. MLLA's block-level parts
(in/act projections, SiLU gate, 3x3 DWC before attention, v = x) are not the token mixer and are
replaced by the shared shell (qkvo, LePE, gate, proj), as for every mechanism here.

KV buffer: mean_m R(phi(k_m)) v_m^T, (B, h, d, d).
FLOPs (forward, per batch*head): KV 2Nd^2, output 2Nd^2, normaliser 2Nd -> 4Nd^2 + 2Nd.
Bytes: q, k, v read once, out written once.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from attnbench.layers import apply_rope
from attnbench.registry import Shape, register_mechanism
from mechanisms.linear.base import LinearOpBase, check_grid, mean_kv, merge_head_dim, split_head_dim
from mechanisms.linear.linear_elu import elu_feature

CITE = "Han et al., Demystify Mamba in Vision: A Linear Attention Perspective, NeurIPS 2024"


@functools.lru_cache(maxsize=32)
def _mlla_tables(height: int, width: int, channels: int, build: torch.dtype, device: str) -> tuple[Tensor, Tensor]:
    if channels % 4:
        raise ValueError(f"MLLA's 2D RoPE needs h*d divisible by 4, got {channels}")
    k_max = channels // 4
    theta = 1.0 / (10000 ** (torch.arange(k_max, dtype=build, device=device) / k_max))  # (C/4,)
    rows = torch.arange(height, dtype=build, device=device)[:, None, None].expand(height, width, 1)
    cols = torch.arange(width, dtype=build, device=device)[None, :, None].expand(height, width, 1)
    angles = torch.cat([rows * theta, cols * theta], dim=-1).reshape(height * width, channels // 2)  # (N, C/2)
    angles = angles.repeat_interleave(2, dim=-1)  # (N, C): pair j -> channels 2j, 2j+1
    return angles.sin(), angles.cos()


def mlla_tables(grid: tuple[int, int], channels: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """MLLA's (sin, cos), each (N, C), built in float32 (float64 for float64 inputs), cast to like's dtype."""
    build = torch.float64 if like.dtype == torch.float64 else torch.float32
    sin, cos = _mlla_tables(grid[0], grid[1], channels, build, str(like.device))
    return sin.to(like.dtype), cos.to(like.dtype)


def mlla_rope(x: Tensor, grid: tuple[int, int]) -> Tensor:
    """MLLA's rotation on the merged channels of x (B, h, N, d) -> (B, h, N, d)."""
    merged = merge_head_dim(x)  # (B, N, C)
    sin, cos = mlla_tables(grid, merged.shape[-1], x)
    return split_head_dim(apply_rope(merged, sin, cos), x.shape[1])


@register_mechanism("mlla", family="linear", backend="torch", cite=CITE)
class Mlla(LinearOpBase):
    """MLLA linear attention: phi = ELU + 1 with MLLA's full-channel 2D RoPE; op and mixer."""

    def attend(self, q, k, v, *, grid):
        check_grid(grid, q.shape[-2])
        q, k = elu_feature(q), elu_feature(k)  # (B, h, N, d)
        z = 1 / (q @ k.mean(dim=-2, keepdim=True).transpose(-2, -1) + 1e-6)  # (B, h, N, 1)
        return mlla_rope(q, grid) @ mean_kv(mlla_rope(k, grid), v) * z

    def state(self, q, k, v, *, grid):
        return mean_kv(mlla_rope(elu_feature(k), grid), v)  # (B, h, d, d)

    def attention_flops(self, s: Shape) -> float:
        bhn, d = s.batch * s.heads * s.tokens, s.head_dim
        return 2.0 * bhn * (2 * d * d + d)
