"""Stand-in for xformers.ops.fmha.memory_efficient_attention, eager and CPU-capable; tests only."""

from __future__ import annotations

import torch
from _standin_attention import attention_bnhd, check_bnhd

CALLS: list[tuple[int, ...]] = []


def memory_efficient_attention(query, key, value, attn_bias=None, p=0.0, scale=None, *, op=None, output_dtype=None):
    """query, key, value (B, M, H, K) -> (B, M, H, K). (The real one also takes 3-D (B, M, K); the glue never does.)"""
    check_bnhd(
        query, key, value, dtypes=(torch.float32, torch.float16, torch.bfloat16), who="memory_efficient_attention"
    )
    if attn_bias is not None or p:
        raise NotImplementedError("the stand-in implements plain attention only (no bias, no dropout)")
    CALLS.append(tuple(query.shape))
    out, _ = attention_bnhd(query, key, value, scale)
    return out if output_dtype is None else out.to(output_dtype)
