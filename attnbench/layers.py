"""Shared building blocks: 2D rotary embedding and the token-mixer shell.

Everything here follows docs/rala.md (the RALA and softmax token mixers and the 2D rotary embedding) so
that the published RALA/RAVLT weights load and reproduce the published outputs:

- `Rope2d(head_dim)` owns the per-stage `angle` buffer and builds (sin, cos) tables at run time in
  the buffer's dtype, exactly as the published model does.
- `rope_tables` is the same computation as a pure function; `rotate_pairs` / `apply_rope` apply it.
- `TokenMixer` is the shell around an attention operator: `qkvo` 1x1 conv, 5x5 depthwise `lepe`
  on v, head split, operator, head merge, output gate, `proj`; `rope_operator(attend)` is the
  operator of mixers without a feature map (softmax): RoPE on q and k, then attend.
"""

from __future__ import annotations

from typing import Callable, Tuple

import torch
from torch import Tensor, nn

RopeTables = Tuple[Tensor, Tensor]  # (sin, cos), each (H*W, head_dim)
# cache_clear callables of process-wide tensor caches (e.g. the op-level RoPE tables of
# mechanisms/rala/naive.py): the runner calls them after every case, so no cached tensor outlives the
# case that built it (device memory, and peak-memory figures that must not depend on earlier cases)
PER_CASE_CACHES: list = []


def rope_angle(head_dim: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The spec's angle vector: 1/10000**linspace(0, 1, d//4), each value twice -> (d/2,)."""
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs head_dim divisible by 4, got {head_dim}")
    angle = 1.0 / (10000 ** torch.linspace(0, 1, head_dim // 4))  # (d/4,) float32, as published
    return angle.unsqueeze(-1).repeat(1, 2).flatten().to(dtype)  # (d/2,) [a0, a0, a1, a1, ...]


def rope_tables(
    height: int,
    width: int,
    head_dim: int,
    *,
    angle: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> RopeTables:
    """(sin, cos) tables, each (H*W, head_dim), for a row-major H x W token grid.

    Computed in `angle`'s dtype (positions cast to it, multiplied, then sin/cos), as the published
    model does; without `angle` the spec's default angle is built in `dtype` on `device`.
    Token n = row * W + col; channels [0, d/2) use the row index, [d/2, d) the column index.
    """
    if angle is None:
        angle = rope_angle(head_dim, dtype).to(device)
    if angle.shape != (head_dim // 2,):
        raise ValueError(f"angle must have shape ({head_dim // 2},) for head_dim {head_dim}, got {tuple(angle.shape)}")
    rows = torch.arange(height, device=angle.device).to(angle)  # (H,)
    cols = torch.arange(width, device=angle.device).to(angle)  # (W,)
    theta_h = rows[:, None] * angle[None, :]  # (H, d/2)
    theta_w = cols[:, None] * angle[None, :]  # (W, d/2)
    tables = []
    for fn in (torch.sin, torch.cos):
        th = fn(theta_h).unsqueeze(1).expand(height, width, -1)  # (H, W, d/2)
        tw = fn(theta_w).unsqueeze(0).expand(height, width, -1)  # (H, W, d/2)
        tables.append(torch.cat([th, tw], dim=-1).reshape(height * width, head_dim))  # (N, d)
    return tables[0], tables[1]


def rotate_pairs(x: Tensor) -> Tensor:
    """Map each channel pair (a, b) -> (-b, a) along the last dimension."""
    x1 = x[..., ::2]
    x2 = x[..., 1::2]
    return torch.stack([-x2, x1], dim=-1).flatten(-2)


def apply_rope(x: Tensor, sin: Tensor, cos: Tensor) -> Tensor:
    """R(x) = x * cos + rotate_pairs(x) * sin; x (..., N, d), tables (N, d)."""
    return x * cos + rotate_pairs(x) * sin


class Rope2d(nn.Module):
    """One stage's 2D rotary embedding: buffer `angle` (d/2,), forward((H, W)) -> (sin, cos)."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.head_dim = head_dim
        self.register_buffer("angle", rope_angle(head_dim))

    def forward(self, grid: Tuple[int, int]) -> RopeTables:
        height, width = grid
        return rope_tables(height, width, self.head_dim, angle=self.angle)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}"


def split_heads(t: Tensor, parts: int, num_heads: int) -> Tensor:
    """(B, parts*C, H, W) -> (parts, B, h, N, d); channel = (part*h + head)*d + j, tokens row-major."""
    batch, channels, height, width = t.shape
    head_dim = channels // (parts * num_heads)
    t = t.reshape(batch, parts, num_heads, head_dim, height * width)  # (B, m, h, d, N)
    return t.permute(1, 0, 2, 4, 3)  # (m, B, h, N, d)


def merge_heads(t: Tensor, height: int, width: int) -> Tensor:
    """(B, h, N, d) -> (B, h*d, H, W); the inverse of `split_heads` for one part."""
    batch, heads, _, head_dim = t.shape
    return t.transpose(-1, -2).reshape(batch, heads * head_dim, height, width)


# operator(q, k, v, *, grid, rope) -> (B, h, N, d); rope is (sin, cos) or None
Operator = Callable[..., Tensor]


def rope_operator(attend: Callable[[Tensor, Tensor, Tensor], Tensor]) -> Operator:
    """The operator of a mixer with no feature map: RoPE on the raw q and k (when the caller passes
    tables), then `attend(q, k, v)` on (B, h, N, d)."""

    def operator(q: Tensor, k: Tensor, v: Tensor, *, grid: Tuple[int, int], rope: RopeTables | None) -> Tensor:
        if rope is not None:
            sin, cos = rope
            q, k = apply_rope(q, sin, cos), apply_rope(k, sin, cos)
        return attend(q, k, v)

    return operator


class TokenMixer(nn.Module):
    """The shell shared by RALA, softmax and linear mixers (spec sections 1-2).

    forward(x, rope): x (B, C, H, W), rope = (sin, cos) from the caller's Rope2d.
    1. t = qkvo(x); q, k, v = channels [0, 3C), gate o = [3C, 4C) (no activation)
    2. lepe_out = lepe(v) in (B, C, H, W) layout
    3. head split -> (B, h, N, d) each; out = operator(q, k, v, grid=(H, W), rope=rope)
    4. y = proj((merge(out) + lepe_out) * o)
    Parameters: qkvo, lepe, proj (+ whatever an nn.Module operator owns, under `operator.`).
    `gate=False` drops the o channels (qkvo has 3C outputs); `lepe=False` drops the LePE branch.
    """

    def __init__(self, dim: int, num_heads: int, operator: Operator, *, gate: bool = True, lepe: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.gate = gate
        self.qkvo = nn.Conv2d(dim, dim * (4 if gate else 3), 1)
        self.lepe = nn.Conv2d(dim, dim, 5, 1, 2, groups=dim) if lepe else None
        self.proj = nn.Conv2d(dim, dim, 1)
        if isinstance(operator, nn.Module):
            self.operator = operator
        else:
            self._operator = operator

    def forward(self, x: Tensor, rope: RopeTables | None = None) -> Tensor:
        _, channels, height, width = x.shape
        t = self.qkvo(x)  # (B, 3C or 4C, H, W)
        qkv = t[:, : 3 * self.dim]
        op = self.operator if "operator" in self._modules else self._operator
        q, k, v = split_heads(qkv, 3, self.num_heads)  # (B, h, N, d) each
        out = merge_heads(op(q, k, v, grid=(height, width), rope=rope), height, width)  # (B, C, H, W)
        if self.lepe is not None:
            out = out + self.lepe(qkv[:, 2 * self.dim :])
        if self.gate:
            out = out * t[:, 3 * self.dim :]
        return self.proj(out)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, gate={self.gate}"
