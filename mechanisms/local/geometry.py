"""Which keys each query attends in the local family: one rule per axis, the 2-D sets their products.

Every pattern here is separable: a query at (row, col) attends the keys whose row is in its row set and whose
column is in its column set. `axis_keys` gives the sets of one axis as an (L, m) index table with a validity
mask; everything else (the eager reference's gather, the FlexAttention mask_mod and block mask, the pair
counts behind `flops`) is derived from it.

- window (Swin): coordinate i belongs to window i // w; its keys are that window's coordinates, clipped at the
  end of the axis when L is not a multiple of w (the op pads the grid and masks the padded keys, which is the
  same set).
- neighborhood (NATTEN's rule, NAT for dilation 1 and DiNAT above): the query's residue class r = i % d has
  the sub-grid r, r + d, ... of length Lr = ceil((L - r) / d); the query is j = i // d on it; its window starts
  at s = clamp(j - k // 2, 0, Lr - k), so at the borders the window shifts inward and every query keeps k keys
  per axis; the keys are the coordinates r + d * (s .. s + k - 1). It needs Lr >= k for every r, i.e. L >= k * d.
- dense: every coordinate (softmax_flex).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def window_axis(length: int, window: int) -> tuple[Tensor, Tensor]:
    """(keys, valid), each (L, window): the coordinates of i's window, valid False past the axis's end."""
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    i = torch.arange(length)
    keys = (i // window * window)[:, None] + torch.arange(window)[None, :]  # (L, w)
    return keys.clamp(max=length - 1), keys < length


def neighborhood_starts(length: int, kernel: int, dilation: int) -> Tensor:
    """(L,) the window start s of each coordinate, on its residue sub-grid (NATTEN's border rule)."""
    i = torch.arange(length)
    residue, j = i % dilation, i // dilation
    sub_length = (length - residue + dilation - 1) // dilation  # ceil((L - r) / d)
    return torch.minimum((j - kernel // 2).clamp(min=0), sub_length - kernel)


def neighborhood_axis(length: int, kernel: int, dilation: int) -> tuple[Tensor, Tensor]:
    """(keys, valid), each (L, kernel): the coordinates r + d * (s .. s + k - 1) of i's neighbourhood."""
    problem = shape_problem(length, kernel, dilation)
    if problem:
        raise ValueError(problem)
    i = torch.arange(length)
    start = neighborhood_starts(length, kernel, dilation)
    keys = (i % dilation)[:, None] + dilation * (start[:, None] + torch.arange(kernel)[None, :])
    return keys, torch.ones_like(keys, dtype=torch.bool)


def dense_axis(length: int) -> tuple[Tensor, Tensor]:
    keys = torch.arange(length).expand(length, length)
    return keys, torch.ones_like(keys, dtype=torch.bool)


def shape_problem(length: int, kernel: int, dilation: int) -> str | None:
    """Why a neighbourhood of `kernel` x `dilation` cannot be taken on an axis of `length`, else None."""
    if kernel < 1 or kernel % 2 == 0 or dilation < 1:
        return f"invalid options: kernel must be odd and dilation at least 1, got kernel {kernel}, dilation {dilation}"
    if length < kernel * dilation:
        return (
            f"impossible shape: a {kernel}x{kernel} neighbourhood with dilation {dilation} needs at least "
            f"{kernel * dilation} tokens per axis, got {length}"
        )
    return None


def grid_problem(grid: tuple[int, int], kernel: int, dilation: int) -> str | None:
    """The first axis's `shape_problem` (height, then width), else None."""
    for length in grid:
        problem = shape_problem(int(length), kernel, dilation)
        if problem:
            return problem
    return None


def axis_keys(pattern: str, length: int, **options: int) -> tuple[Tensor, Tensor]:
    """The (keys, valid) table of `pattern` ("window", "neighborhood", "dense") on one axis."""
    if pattern == "window":
        return window_axis(length, options["window"])
    if pattern == "neighborhood":
        return neighborhood_axis(length, options["kernel"], options["dilation"])
    if pattern == "dense":
        return dense_axis(length)
    raise ValueError(f"unknown pattern {pattern!r}")


def axis_mask(keys: Tensor, valid: Tensor, length: int) -> Tensor:
    """(L, L) bool: [i, j] True when coordinate j is among i's keys."""
    mask = torch.zeros(length, length, dtype=torch.bool)
    rows = torch.arange(length)[:, None].expand_as(keys)
    mask[rows[valid], keys[valid]] = True
    return mask


def axis_masks(pattern: str, grid: tuple[int, int], **options: int) -> tuple[Tensor, Tensor]:
    """The (H, H) row mask and (W, W) column mask of `pattern` on `grid`."""
    return tuple(axis_mask(*axis_keys(pattern, length, **options), length) for length in grid)  # type: ignore[return-value]


def attended_pairs(pattern: str, grid: tuple[int, int], **options: int) -> int:
    """(query, key) pairs attended over the whole grid (per batch item and head): the product of the axes'
    pair counts (the pattern is separable)."""
    total = 1
    for length in grid:
        _, valid = axis_keys(pattern, length, **options)
        total *= int(valid.sum())
    return total


# -- token orders ----------------------------------------------------------------------------------------------
def token_order(grid: tuple[int, int], tile: tuple[int, int] | None) -> Tensor | None:
    """The row-major token index at each position of the tiled order (None: row-major itself). Tiles of
    th x tw tokens, tile-major in row-major tile order, row-major inside a tile; edge tiles are smaller."""
    if tile is None:
        return None
    height, width = grid
    th, tw = tile
    r, c = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    tiles_per_row = math.ceil(width / tw)
    tile_id = (r // th) * tiles_per_row + c // tw
    # sort key: tile, then row and column inside it (stable over the row-major enumeration)
    key = (tile_id * th + r % th) * tw + c % tw
    return torch.argsort(key.flatten(), stable=True)


# -- block sparsity ---------------------------------------------------------------------------------------------
def block_pairs(
    pattern: str, grid: tuple[int, int], block: int, order: Tensor | None = None, **options: int
) -> tuple[Tensor, Tensor]:
    """(partial, full): (Qb, Kb) bool tables of the blocks of `block` x `block` (query, key) positions in the
    given token order that hold some attended pair (partial: some but not all of their pairs; full: all of
    them; the last blocks are shorter when N is not a multiple of `block`). Computed from the N x k^2 attended
    pairs, never from an N x N mask."""
    height, width = grid
    n = height * width
    rows, rvalid = axis_keys(pattern, height, **options)
    cols, cvalid = axis_keys(pattern, width, **options)
    # the position of each row-major token in the order
    position = (
        torch.arange(n) if order is None else torch.empty(n, dtype=torch.long).scatter_(0, order, torch.arange(n))
    )
    q = torch.arange(n)
    qr, qc = q // width, q % width
    keys = rows[qr][:, :, None] * width + cols[qc][:, None, :]  # (N, mr, mc) row-major key tokens
    valid = rvalid[qr][:, :, None] & cvalid[qc][:, None, :]
    qb = (position[q] // block)[:, None, None].expand_as(keys)[valid]
    kb = (position[keys] // block)[valid]
    nq = nk = math.ceil(n / block)
    counts = torch.bincount(qb * nk + kb, minlength=nq * nk).reshape(nq, nk)
    sizes = torch.full((nq,), block)
    sizes[-1] = n - block * (nq - 1)
    capacity = sizes[:, None] * sizes[None, :]
    full = counts == capacity
    return (counts > 0) & ~full, full
