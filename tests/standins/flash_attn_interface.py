"""Stand-in for FA3's `flash_attn_interface.flash_attn_func` (Hopper build), eager and CPU-capable; tests only.

Returns (out, softmax_lse) like the FA3 releases whose tuple the glue must unpack.
"""

from __future__ import annotations

import torch
from _standin_attention import attention_bnhd, check_bnhd

CALLS: list[tuple[int, ...]] = []


def flash_attn_func(
    q,
    k,
    v,
    softmax_scale=None,
    causal=False,
    qv=None,
    q_descale=None,
    k_descale=None,
    v_descale=None,
    window_size=(-1, -1),
    attention_chunk=0,
    softcap=0.0,
    num_splits=1,
    pack_gqa=None,
    deterministic=False,
    sm_margin=0,
    return_attn_probs=False,
):
    """q, k, v (batch, seqlen, nheads, headdim), fp16/bf16 -> (out (batch, seqlen, nheads, headdim), lse)."""
    check_bnhd(q, k, v, dtypes=(torch.float16, torch.bfloat16), who="flash_attn_interface.flash_attn_func")
    if causal or qv is not None or window_size != (-1, -1) or softcap:
        raise NotImplementedError("the stand-in implements plain non-causal attention only")
    CALLS.append(tuple(q.shape))
    return attention_bnhd(q, k, v, softmax_scale)
