"""FlexAttention plumbing for the local family: availability, the cached BlockMask, the compiled kernel.

One mask_mod serves every pattern: a query at (row, col) attends a key when the row pair and the column pair
are allowed (`geometry.axis_masks`), looked up through tables of each position's row and column, so a tiled
token order changes the tables, not the code. The BlockMask is built from the attended pairs themselves
(`geometry.block_pairs`, `BlockMask.from_kv_blocks`): blocks of BLOCK x BLOCK positions that hold no attended
pair are skipped, blocks where every pair is attended are marked full (no mask_mod there), the rest are
partial. It is built on first use and cached per (pattern, grid, options, tile, device); the cache is emptied
after each case (attnbench.layers.PER_CASE_CACHES), so a case's first (untimed) call builds it and its timed
calls reuse it.

The kernel is `torch.compile(flex_attention, dynamic=False, fullgraph=True)`: one graph per shape, dtype and
device (inductor's CPU code generation fails for dynamic shapes of flex_attention with torch 2.13). Inside code
that is itself being compiled (`compile: model`) flex_attention is traced into that graph.

FlexAttention on CPU (torch 2.13) runs fp32, bf16 and fp16 forwards only: no backward
(`backward_reason`), no float64.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from attnbench.errors import MechanismUnavailable
from attnbench.layers import PER_CASE_CACHES
from mechanisms.local import geometry

BLOCK = 128  # FlexAttention's default sparse block (query and key), given explicitly so every device uses it
RECOMPILE_LIMIT = 64  # one graph per shape/dtype/device: a sweep can exceed dynamo's default of 8


def import_problem() -> str | None:
    """None when torch.nn.attention.flex_attention has what this family uses, else why not."""
    try:
        fa = importlib.import_module("torch.nn.attention.flex_attention")
    except Exception as exc:  # old torch
        return f"FlexAttention is missing: torch {torch.__version__} has no torch.nn.attention.flex_attention ({exc})"
    missing = [name for name in ("flex_attention", "BlockMask") if not hasattr(fa, name)]
    if not missing and not hasattr(fa.BlockMask, "from_kv_blocks"):
        missing.append("BlockMask.from_kv_blocks")
    if missing:
        return f"FlexAttention in torch {torch.__version__} lacks {', '.join(missing)} (torch >= 2.5 has them)"
    return None


def backward_reason(device: str | None) -> str | None:
    """Why FlexAttention cannot compute gradients on `device`, else None (CPU: torch 2.13 has no backward)."""
    if device is not None and str(device).split(":")[0] == "cpu":
        return f"FlexAttention has no backward on CPU (torch {torch.__version__}): forward passes only"
    return None


def _raise_recompile_limit() -> None:
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit"):
        if isinstance(getattr(dynamo_config, name, None), int):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), RECOMPILE_LIMIT))
            return


@functools.lru_cache(maxsize=1)
def compiled_flex() -> Callable[..., Tensor]:
    """torch.compile(flex_attention, dynamic=False, fullgraph=True), built once per process."""
    from torch.nn.attention.flex_attention import flex_attention

    _raise_recompile_limit()
    return torch.compile(flex_attention, dynamic=False, fullgraph=True)


def flex_call(q: Tensor, k: Tensor, v: Tensor, *, compiled: bool = True, **kwargs: Any) -> Tensor:
    """flex_attention on (B, h, N, d) through the compiled kernel (or, `compiled=False`, torch's eager
    reference path, which materialises the scores: tests of the masks only). Refuses inputs that need a
    gradient where FlexAttention has no backward."""
    if any(t.requires_grad for t in (q, k, v)) and torch.is_grad_enabled():
        reason = backward_reason(q.device.type)
        if reason:
            raise MechanismUnavailable(reason)
    from torch.nn.attention.flex_attention import flex_attention

    if torch.compiler.is_compiling() or not compiled:
        return flex_attention(q, k, v, **kwargs)
    return compiled_flex()(q, k, v, **kwargs)


@dataclass(frozen=True)
class FlexPlan:
    """A pattern on a grid, ready for flex_attention: the BlockMask and the token order it is built in."""

    block_mask: Any  # torch.nn.attention.flex_attention.BlockMask
    order: Tensor | None  # row-major index of each position in the kernel's order (None: row-major)
    inverse: Tensor | None  # position of each row-major token in the kernel's order
    blocks: int  # non-empty (query block, key block) pairs
    full_blocks: int
    total_blocks: int  # all pairs of blocks


def _pack(table: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    """(Qb, Kb) bool -> (num (1, 1, Qb), indices (1, 1, Qb, Kb)) int32: each row's True columns first, in order."""
    num = table.sum(-1).to(torch.int32)
    idx = torch.argsort((~table).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return num[None, None].to(device), idx[None, None].contiguous().to(device)


def mask_mod_for(rows: Tensor, cols: Tensor, row_of: Tensor, col_of: Tensor) -> Callable:
    """The mask_mod of a separable pattern: rows (H, H) and cols (W, W) allowed pairs, row_of/col_of (N,) the
    grid coordinates of each position of the kernel's token order."""

    def mask_mod(b, h, q_idx, kv_idx):
        return rows[row_of[q_idx], row_of[kv_idx]] & cols[col_of[q_idx], col_of[kv_idx]]

    return mask_mod


def tile_shape(tile: int, block: int = BLOCK) -> tuple[int, int] | None:
    """Option `tile` (tile height in rows; 0: row-major order) -> (height, width) with height x width = block."""
    if tile == 0:
        return None
    if tile < 0 or block % tile:
        raise ValueError(f"tile must be 0 (row-major order) or a divisor of the block size {block}, got {tile}")
    return tile, block // tile


def _plan(pattern: str, grid: tuple[int, int], options: tuple, tile: int, device: str) -> FlexPlan:
    from torch.nn.attention.flex_attention import BlockMask

    opts = dict(options)
    height, width = grid
    n = height * width
    order = geometry.token_order(grid, tile_shape(tile))
    rows, cols = geometry.axis_masks(pattern, grid, **opts)
    tokens = torch.arange(n) if order is None else order
    partial, full = geometry.block_pairs(pattern, grid, BLOCK, order, **opts)
    dev = torch.device(device)
    mask_mod = mask_mod_for(rows.to(dev), cols.to(dev), (tokens // width).to(dev), (tokens % width).to(dev))
    block_mask = BlockMask.from_kv_blocks(
        *_pack(partial, dev), *_pack(full, dev), BLOCK_SIZE=BLOCK, mask_mod=mask_mod, seq_lengths=(n, n)
    )
    inverse = None
    if order is not None:
        inverse = torch.empty_like(order).scatter_(0, order, torch.arange(n))
        order, inverse = order.to(dev), inverse.to(dev)
    blocks, fulls = int(partial.sum() + full.sum()), int(full.sum())
    return FlexPlan(block_mask, order, inverse, blocks, fulls, partial.numel())


@functools.lru_cache(maxsize=32)
def flex_plan(pattern: str, grid: tuple[int, int], options: tuple, tile: int, device: str) -> FlexPlan:
    """The cached `FlexPlan` of (pattern, grid, sorted option items, tile, device)."""
    return _plan(pattern, tuple(grid), options, tile, device)


PER_CASE_CACHES.append(flex_plan.cache_clear)


def block_counts(pattern: str, grid: tuple[int, int], tile: int = 0, **options: int) -> tuple[int, int]:
    """(non-empty blocks, all blocks) of the BlockMask of `pattern` on `grid` (computed on the CPU, no torch
    FlexAttention needed): what `flops_computed` counts."""
    partial, full = geometry.block_pairs(pattern, grid, BLOCK, geometry.token_order(grid, tile_shape(tile)), **options)
    return int(partial.sum() + full.sum()), partial.numel()


def device_key(t: Tensor) -> str:
    dev = t.device
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return str(dev)


def local_flex(
    q: Tensor, k: Tensor, v: Tensor, *, grid, pattern: str, tile: int = 0, compiled: bool = True, **options: int
) -> Tensor:
    """Attention of `pattern` on (B, h, N, d) row-major tokens through flex_attention with the cached plan;
    the output is row-major again."""
    plan = flex_plan(pattern, tuple(grid), tuple(sorted(options.items())), tile, device_key(q))
    if plan.order is not None:
        q, k, v = (t.index_select(2, plan.order) for t in (q, k, v))
    out = flex_call(q, k, v, block_mask=plan.block_mask, compiled=compiled)
    return out if plan.inverse is None else out.index_select(2, plan.inverse)
