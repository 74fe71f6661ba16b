"""The local family's operators on (B, h, N, d) row-major tokens of an (H, W) grid; scale d^-0.5, no bias.

- `window_attention`: Swin's implementation: partition the grid into non-overlapping w x w windows, one SDPA call
  over all windows. A grid that is not a multiple of w is padded at the bottom/right to one; the padded tokens'
  keys are masked (every window holds at least one real token, so no row is empty) and their outputs dropped.
- `neighborhood_attention_eager`: the readable reference for `neighborhood`: gather each query's k x k keys
  (`geometry.neighborhood_axis`, NATTEN's border rule, dilation) and attend them.
- `window_flex`, `neighborhood_flex`, `softmax_flex` (flex.py): the same patterns through FlexAttention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mechanisms.common import check_grid
from mechanisms.local import geometry
from mechanisms.local.flex import flex_call, local_flex


def window_partition(x: Tensor, grid: tuple[int, int], window: int) -> Tensor:
    """(B, h, N, d) row-major -> (B, h, nW, w*w, d), the grid zero-padded at the bottom/right to multiples of w;
    windows in row-major window order, tokens row-major inside each window."""
    b, h, _, d = x.shape
    height, width = grid
    hp, wp = math.ceil(height / window) * window, math.ceil(width / window) * window
    x = x.reshape(b, h, height, width, d)
    if (hp, wp) != (height, width):
        x = F.pad(x, (0, 0, 0, wp - width, 0, hp - height))
    x = x.reshape(b, h, hp // window, window, wp // window, window, d).permute(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(b, h, (hp // window) * (wp // window), window * window, d)


def window_merge(x: Tensor, grid: tuple[int, int], window: int) -> Tensor:
    """The inverse of `window_partition`: (B, h, nW, w*w, d) -> (B, h, N, d), padding dropped."""
    b, h, _, _, d = x.shape
    height, width = grid
    nh, nw = math.ceil(height / window), math.ceil(width / window)
    x = x.reshape(b, h, nh, nw, window, window, d).permute(0, 1, 2, 4, 3, 5, 6)
    x = x.reshape(b, h, nh * window, nw * window, d)[:, :, :height, :width]
    return x.reshape(b, h, height * width, d)


def padded_key_mask(grid: tuple[int, int], window: int, device=None) -> Tensor | None:
    """(nW, 1, w*w) bool, True for the real (unpadded) keys of each window; None when nothing is padded."""
    height, width = grid
    if height % window == 0 and width % window == 0:
        return None
    real = torch.ones(1, 1, height * width, 1, dtype=torch.bool, device=device)
    return window_partition(real, grid, window)[0, 0, :, None, :, 0]


def window_attention(q: Tensor, k: Tensor, v: Tensor, *, grid, window: int = 7) -> Tensor:
    """Softmax attention inside each w x w window (Swin): partition, one SDPA call, merge."""
    check_grid(grid, q.shape[-2])
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    b, h, _, d = q.shape
    qw, kw, vw = (window_partition(t, grid, window) for t in (q, k, v))  # (B, h, nW, w*w, d)
    n_win = qw.shape[2]
    flat = [t.reshape(b * h, n_win, window * window, d) for t in (qw, kw, vw)]
    out = F.scaled_dot_product_attention(*flat, attn_mask=padded_key_mask(grid, window, q.device))
    return window_merge(out.reshape(b, h, n_win, window * window, d), grid, window)


def neighborhood_index(grid: tuple[int, int], kernel: int, dilation: int, device=None) -> Tensor:
    """(N, k*k) row-major key tokens of each row-major query: its row neighbourhood x column neighbourhood."""
    height, width = grid
    rows, _ = geometry.neighborhood_axis(height, kernel, dilation)  # (H, k)
    cols, _ = geometry.neighborhood_axis(width, kernel, dilation)  # (W, k)
    q = torch.arange(height * width)
    index = rows[q // width][:, :, None] * width + cols[q % width][:, None, :]  # (N, k, k)
    return index.reshape(height * width, kernel * kernel).to(device)


def neighborhood_attention_eager(
    q: Tensor, k: Tensor, v: Tensor, *, grid, kernel: int = 7, dilation: int = 1, bias: Tensor | None = None
) -> Tensor:
    """Each query attends its k x k neighbourhood: gather the keys and values, softmax over them.
    `bias` (h, N, k*k), added to the scaled logits, is the mixer's relative position bias."""
    check_grid(grid, q.shape[-2])
    problem = geometry.grid_problem(grid, kernel, dilation)
    if problem:
        raise ValueError(problem)
    index = neighborhood_index(grid, kernel, dilation, q.device)  # (N, k*k)
    keys, values = k[:, :, index], v[:, :, index]  # (B, h, N, k*k, d)
    logits = (q.unsqueeze(-2) * q.shape[-1] ** -0.5) @ keys.transpose(-1, -2)  # (B, h, N, 1, k*k)
    if bias is not None:
        logits = logits + bias.unsqueeze(-2).to(logits.dtype)
    return (torch.softmax(logits, dim=-1) @ values).squeeze(-2)


def window_flex(q: Tensor, k: Tensor, v: Tensor, *, grid, window: int = 7, compiled: bool = True) -> Tensor:
    """`window_attention` through FlexAttention on the unpadded grid (edge windows are smaller)."""
    check_grid(grid, q.shape[-2])
    return local_flex(q, k, v, grid=grid, pattern="window", window=window, compiled=compiled)


def neighborhood_flex(
    q: Tensor, k: Tensor, v: Tensor, *, grid, kernel: int = 7, dilation: int = 1, tile: int = 0, compiled: bool = True
) -> Tensor:
    """`neighborhood_attention_eager` through FlexAttention, tokens optionally in 2-D tiles (`tile`)."""
    check_grid(grid, q.shape[-2])
    problem = geometry.grid_problem(grid, kernel, dilation)
    if problem:
        raise ValueError(problem)
    return local_flex(
        q, k, v, grid=grid, pattern="neighborhood", kernel=kernel, dilation=dilation, tile=tile, compiled=compiled
    )


def softmax_flex(q: Tensor, k: Tensor, v: Tensor, *, compiled: bool = True) -> Tensor:
    """Dense softmax attention through FlexAttention (no block mask)."""
    return flex_call(q, k, v, compiled=compiled)
