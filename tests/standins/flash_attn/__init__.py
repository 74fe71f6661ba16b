"""Stand-in for flash-attn 2 (`flash_attn.flash_attn_func`), eager and CPU-capable; tests only."""

from __future__ import annotations

import torch
from _standin_attention import attention_bnhd, check_bnhd

__version__ = "2.0.0+standin"
CALLS: list[tuple[int, ...]] = []  # q shapes seen, so tests know this module ran


def flash_attn_func(
    q,
    k,
    v,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """q, k, v (batch, seqlen, nheads, headdim), fp16/bf16, headdim <= 256 -> out (batch, seqlen, nheads, headdim)."""
    check_bnhd(q, k, v, dtypes=(torch.float16, torch.bfloat16), who="flash_attn_func")
    if q.shape[-1] > 256:
        raise RuntimeError("FlashAttention forward only supports head dimension at most 256")
    if dropout_p or causal or window_size != (-1, -1) or softcap or alibi_slopes is not None:
        raise NotImplementedError("the stand-in implements plain non-causal attention only")
    CALLS.append(tuple(q.shape))
    out, lse = attention_bnhd(q, k, v, softmax_scale)
    return (out, lse, None) if return_attn_probs else out
