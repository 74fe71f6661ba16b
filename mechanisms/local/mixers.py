"""The local family's mixers: Swin's window attention and NAT/DiNAT's neighbourhood attention layers.

Both take and return (B, C, H, W) (the harness's mixer convention, attnbench.layers.TokenMixer) and accept
`rope` and ignore it: these layers carry a relative position bias instead. Parameter names follow the authors'
layers, so a state dict of theirs loads with `load_state_dict(strict=True)`:

- `WindowAttention2d` (Swin's WindowAttention inside SwinTransformerBlock's partition, shift and padding):
  `qkv` (Linear C -> 3C; q | k | v, then heads), `relative_position_bias_table` ((2w-1)^2, heads), `proj`. The
  bias of query (y, x) and key (y', x') of one window is table[(y - y' + w - 1) * (2w - 1) + (x - x' + w - 1)]
  (Swin's `relative_position_index`, derived here and not saved). `shift` > 0 rolls the grid by -shift before
  partitioning, adds -100 to the logits of pairs from different regions of the rolled grid (Swin's attention
  mask) and rolls back. A grid that is not a multiple of the window is zero-padded at the bottom/right before
  `qkv`, as Swin does, so padded tokens take part as keys (the `window` op masks them instead).
- `NeighborhoodAttention2d` (NATTEN's NeighborhoodAttention2D): `qkv`, `rpb` (heads, 2k-1, 2k-1), `proj`; the
  logit of a query and a key at offset (dy, dx) along the query's dilated sub-grid (in steps of `dilation`) gets
  rpb[head, dy + k - 1, dx + k - 1], NATTEN's indexing with its inward-shifting border windows. A grid smaller
  than kernel x dilation on an axis is zero-padded at the bottom/right up to it before `qkv`, as NATTEN does.

`core` picks the attention's implementation: "sdpa" (window partition and one SDPA call with the bias as an
additive mask) or "gather" (neighbourhood gather, ops.neighborhood_attention_eager) in eager PyTorch, or "flex"
(FlexAttention: the pattern as a BlockMask, the bias and the shift penalty as a score_mod). `compiled=False`
runs FlexAttention's eager reference path instead of the compiled kernel (tests of the masks only).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mechanisms.local import geometry
from mechanisms.local.flex import device_key, flex_call, flex_plan
from mechanisms.local.ops import neighborhood_attention_eager, window_merge, window_partition

SHIFT_PENALTY = -100.0  # Swin's attention mask value for pairs of different regions


def relative_position_index(window: int) -> Tensor:
    """Swin's (w*w, w*w) index into the bias table: (dy + w - 1) * (2w - 1) + (dx + w - 1), d = query - key."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)  # (2, w*w, w*w)
    return rel[0] * (2 * window - 1) + rel[1]


def shift_regions(length: int, window: int, shift: int) -> Tensor:
    """(L,) region label of each coordinate of the rolled axis (Swin's slices (0, -w), (-w, -s), (-s, None))."""
    i = torch.arange(length)
    return (i >= length - window).long() + (i >= length - shift).long()


class _QkvLayer(nn.Module):
    """qkv Linear, head split, attention core (`attend`), head merge, proj; (B, H, W, C) channels-last inside."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, core: str, cores: tuple[str, ...]):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if core not in cores:
            raise ValueError(f"core must be one of {', '.join(cores)}, got {core!r}")
        self.dim, self.num_heads, self.head_dim, self.core = dim, num_heads, dim // num_heads, core
        self.scale = self.head_dim**-0.5
        self.compiled = True  # flex core: the compiled kernel (False: FlexAttention's eager path, tests)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, H, W, C) -> q, k, v each (B, h, H*W, d), row-major."""
        b, height, width, _ = x.shape
        qkv = self.qkv(x).reshape(b, height * width, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def merge(self, out: Tensor, grid: tuple[int, int]) -> Tensor:
        """(B, h, N, d) -> proj -> (B, H, W, C)."""
        b = out.shape[0]
        return self.proj(out.transpose(1, 2).reshape(b, grid[0], grid[1], self.dim))


class WindowAttention2d(_QkvLayer):
    """Swin's (shifted) window attention over a (B, C, H, W) grid; see the module docstring."""

    def __init__(
        self, dim: int, num_heads: int, window: int = 7, shift: int = 0, qkv_bias: bool = True, core: str = "sdpa"
    ):
        super().__init__(dim, num_heads, qkv_bias, core, ("sdpa", "flex"))
        if window < 1 or not 0 <= shift < window:
            raise ValueError(f"window must be at least 1 and shift in [0, window), got window {window}, shift {shift}")
        self.window, self.shift = window, shift
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)

    def padded_grid(self, grid: tuple[int, int]) -> tuple[int, int]:
        return tuple(math.ceil(n / self.window) * self.window for n in grid)  # type: ignore[return-value]

    def forward(self, x: Tensor, rope=None) -> Tensor:
        _, _, height, width = x.shape
        hp, wp = self.padded_grid((height, width))
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        if (hp, wp) != (height, width):
            x = F.pad(x, (0, 0, 0, wp - width, 0, hp - height))
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        q, k, v = self.heads(x)
        attend = self._flex if self.core == "flex" else self._sdpa
        y = self.merge(attend(q, k, v, (hp, wp)), (hp, wp))
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        return y[:, :height, :width].permute(0, 3, 1, 2)

    def shift_mask(self, grid: tuple[int, int]) -> Tensor:
        """(nW, w*w, w*w) Swin's additive mask of the rolled grid: SHIFT_PENALTY between regions, else 0."""
        rows, cols = (shift_regions(n, self.window, self.shift) for n in grid)
        label = (rows[:, None] * 3 + cols[None, :]).reshape(1, 1, grid[0] * grid[1], 1).float()
        windows = window_partition(label, grid, self.window)[0, 0, :, :, 0]  # (nW, w*w)
        differ = windows[:, None, :] != windows[:, :, None]
        return differ.float() * SHIFT_PENALTY

    def _sdpa(self, q: Tensor, k: Tensor, v: Tensor, grid: tuple[int, int]) -> Tensor:
        b, h, _, d = q.shape
        w2 = self.window**2
        qw, kw, vw = (window_partition(t, grid, self.window) for t in (q, k, v))  # (B, h, nW, w*w, d)
        n_win = qw.shape[2]
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        bias = bias.reshape(w2, w2, h).permute(2, 0, 1)[:, None]  # (h, 1, w*w, w*w)
        if self.shift:
            bias = bias + self.shift_mask(grid).to(bias)[None]  # (h, nW, w*w, w*w)
        bias = bias.expand(h, n_win, w2, w2).reshape(h * n_win, w2, w2).to(q.dtype)
        flat = [t.reshape(b, h * n_win, w2, d) for t in (qw, kw, vw)]
        out = F.scaled_dot_product_attention(*flat, attn_mask=bias, scale=self.scale)
        return window_merge(out.reshape(b, h, n_win, w2, d), grid, self.window)

    def _flex(self, q: Tensor, k: Tensor, v: Tensor, grid: tuple[int, int]) -> Tensor:
        height, width = grid
        w = self.window
        plan = flex_plan("window", grid, (("window", w),), 0, device_key(q))
        dev = q.device
        tokens = torch.arange(height * width, device=dev)
        row_of, col_of = tokens // width, tokens % width
        r = torch.arange(height, device=dev)
        c = torch.arange(width, device=dev)
        ridx = ((r[:, None] % w) - (r[None, :] % w) + w - 1).clamp(0, 2 * w - 2)  # (H, H)
        cidx = ((c[:, None] % w) - (c[None, :] % w) + w - 1).clamp(0, 2 * w - 2)  # (W, W)
        table = self.relative_position_bias_table
        rreg, creg = (shift_regions(n, w, self.shift).to(dev) for n in grid)  # all 0 without a shift

        def score_mod(score, b, h, q_idx, kv_idx):
            qr, qc, kr, kc = row_of[q_idx], col_of[q_idx], row_of[kv_idx], col_of[kv_idx]
            bias = table[ridx[qr, kr] * (2 * w - 1) + cidx[qc, kc], h]
            differ = (rreg[qr] != rreg[kr]) | (creg[qc] != creg[kc])
            return score + bias + torch.where(differ, SHIFT_PENALTY, 0.0)

        return flex_call(
            q, k, v, block_mask=plan.block_mask, score_mod=score_mod, scale=self.scale, compiled=self.compiled
        )


class NeighborhoodAttention2d(_QkvLayer):
    """NAT/DiNAT's neighbourhood attention over a (B, C, H, W) grid; see the module docstring."""

    def __init__(
        self, dim: int, num_heads: int, kernel: int = 7, dilation: int = 1, qkv_bias: bool = True, core: str = "gather"
    ):
        super().__init__(dim, num_heads, qkv_bias, core, ("gather", "flex"))
        if kernel < 1 or kernel % 2 == 0 or dilation < 1:
            raise ValueError(f"kernel must be odd and positive and dilation at least 1, got {kernel}, {dilation}")
        self.kernel, self.dilation = kernel, dilation
        self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * kernel - 1, 2 * kernel - 1))
        nn.init.trunc_normal_(self.rpb, std=0.02, mean=0.0, a=-2.0, b=2.0)

    def padded_grid(self, grid: tuple[int, int]) -> tuple[int, int]:
        least = self.kernel * self.dilation
        return tuple(max(n, least) for n in grid)  # type: ignore[return-value]

    def offsets(self, length: int, device=None) -> Tensor:
        """(L, L) rpb index along one axis: (key - query) / dilation + k - 1, clamped (pairs outside the
        neighbourhood are never attended)."""
        i = torch.arange(length, device=device)
        steps = torch.div(i[None, :] - i[:, None], self.dilation, rounding_mode="floor")
        return (steps + self.kernel - 1).clamp(0, 2 * self.kernel - 2)

    def forward(self, x: Tensor, rope=None) -> Tensor:
        _, _, height, width = x.shape
        hp, wp = self.padded_grid((height, width))
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        if (hp, wp) != (height, width):
            x = F.pad(x, (0, 0, 0, wp - width, 0, hp - height))
        q, k, v = self.heads(x)
        attend = self._flex if self.core == "flex" else self._gather
        y = self.merge(attend(q, k, v, (hp, wp)), (hp, wp))
        return y[:, :height, :width].permute(0, 3, 1, 2)

    def _gather(self, q: Tensor, k: Tensor, v: Tensor, grid: tuple[int, int]) -> Tensor:
        height, width = grid
        rows, _ = geometry.neighborhood_axis(height, self.kernel, self.dilation)  # (H, k) key rows
        cols, _ = geometry.neighborhood_axis(width, self.kernel, self.dilation)
        tokens = torch.arange(height * width)
        qr, qc = tokens // width, tokens % width
        ridx = self.offsets(height)[qr[:, None], rows[qr]]  # (N, k)
        cidx = self.offsets(width)[qc[:, None], cols[qc]]  # (N, k)
        bias = self.rpb[:, ridx[:, :, None], cidx[:, None, :]]  # (h, N, k, k)
        bias = bias.reshape(self.num_heads, height * width, self.kernel**2)
        return neighborhood_attention_eager(q, k, v, grid=grid, kernel=self.kernel, dilation=self.dilation, bias=bias)

    def _flex(self, q: Tensor, k: Tensor, v: Tensor, grid: tuple[int, int]) -> Tensor:
        height, width = grid
        options = (("dilation", self.dilation), ("kernel", self.kernel))
        plan = flex_plan("neighborhood", grid, options, 0, device_key(q))
        dev = q.device
        tokens = torch.arange(height * width, device=dev)
        row_of, col_of = tokens // width, tokens % width
        ridx, cidx, rpb = self.offsets(height, dev), self.offsets(width, dev), self.rpb

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + rpb[h, ridx[row_of[q_idx], row_of[kv_idx]], cidx[col_of[q_idx], col_of[kv_idx]]]

        return flex_call(
            q, k, v, block_mask=plan.block_mask, score_mod=score_mod, scale=self.scale, compiled=self.compiled
        )
