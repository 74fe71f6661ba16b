"""Softmax attention: eager, PyTorch SDPA, FlashAttention and xformers (spec section 2).

op: out = softmax(d^-0.5 q k^T) v over all N tokens, inputs/outputs (B, h, N, d), no RoPE.
mixer: the TokenMixer shell; RoPE on the raw q and k (no feature map), then the op.

FLOPs (op, forward): 4 B h N^2 d (two N x N x d matmuls, a multiply-add = 2 FLOPs);
fwd_bwd = 3.5 x fwd (FlashAttention's benchmark convention: backward 2.5x, scores recomputed).
Mixer: the op plus the shell's convs (fwd_bwd 3x for those). Bytes: q, k, v read and out written
once (the flash-style minimum; the N x N scores never reach memory).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnbench.layers import TokenMixer, apply_rope
from attnbench.registry import Mechanism, Shape, register_mechanism
from mechanisms.common import (
    SOFTMAX_CORE_FWD_BWD,
    mixer_bytes,
    op_bytes,
    pass_factor,
    shell_flops,
)

CITE_ATTN = "Vaswani et al., Attention Is All You Need, NeurIPS 2017"


def softmax_attention_eager(q, k, v):
    """Readable reference: matmul, softmax, matmul. (B, h, N, d) -> (B, h, N, d)."""
    scale = q.shape[-1] ** -0.5
    attn = torch.softmax(scale * q @ k.transpose(-1, -2), dim=-1)  # (B, h, N, N)
    return attn @ v


class SoftmaxBase(Mechanism):
    """Shared costs and mixer; subclasses provide `attend(q, k, v)` on (B, h, N, d)."""

    def attend(self, q, k, v):
        raise NotImplementedError

    def op(self, q, k, v, *, grid):
        return self.attend(q, k, v)

    def mixer(self, dim, num_heads, **options):
        if options:
            raise TypeError(f"{self.name} mixer takes no options, got {sorted(options)}")
        attend = self.attend

        def operator(q, k, v, *, grid, rope):
            if rope is not None:
                sin, cos = rope
                q, k = apply_rope(q, sin, cos), apply_rope(k, sin, cos)
            return attend(q, k, v)

        return TokenMixer(dim, num_heads, operator)

    def flops(self, s: Shape, *, level: str, pass_: str) -> float:
        core = 4.0 * s.batch * s.heads * s.tokens**2 * s.head_dim * pass_factor(pass_, SOFTMAX_CORE_FWD_BWD)
        if level == "op":
            return core
        if level == "mixer":
            return core + shell_flops(s) * pass_factor(pass_)
        raise ValueError(f"no analytic FLOPs for level {level!r}")

    def bytes(self, s: Shape, *, level: str, dtype: str) -> float:
        if level == "op":
            return op_bytes(s, dtype)
        if level == "mixer":
            return mixer_bytes(s, dtype)
        raise ValueError(f"no analytic bytes for level {level!r}")


@register_mechanism("softmax_eager", family="softmax", backend="torch", reference=None, cite=CITE_ATTN)
class SoftmaxEager(SoftmaxBase):
    """Matmul-softmax-matmul in plain PyTorch; materialises the (B, h, N, N) scores."""

    def attend(self, q, k, v):
        return softmax_attention_eager(q, k, v)


@register_mechanism(
    "softmax_sdpa", family="softmax", backend="torch-sdpa", reference="softmax_eager", cite=CITE_ATTN
)
class SoftmaxSdpa(SoftmaxBase):
    """torch.nn.functional.scaled_dot_product_attention; PyTorch picks the backend."""

    def attend(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


@register_mechanism(
    "softmax_flash",
    family="softmax",
    backend="flash-attn",
    reference="softmax_eager",
    requires=("flash_attn",),
    devices=("cuda",),
    dtypes=("fp16", "bf16"),
    head_dims=(32, 64, 96, 128, 160, 192, 224, 256),
    cite="Dao, FlashAttention-2, ICLR 2024",
)
class SoftmaxFlash(SoftmaxBase):
    """flash_attn.flash_attn_func (FlashAttention-2); expects (B, N, h, d)."""

    def attend(self, q, k, v):
        from flash_attn import flash_attn_func

        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (B, N, h, d)
        return out.transpose(1, 2)


@register_mechanism(
    "softmax_xformers",
    family="softmax",
    backend="xformers",
    reference="softmax_eager",
    requires=("xformers",),
    devices=("cuda",),
    cite="Lefaudeux et al., xFormers, 2022; Rabe & Staats, Self-attention does not need O(n^2) memory, 2021",
)
class SoftmaxXformers(SoftmaxBase):
    """xformers.ops.memory_efficient_attention; expects (B, N, h, d)."""

    def attend(self, q, k, v):
        from xformers.ops import memory_efficient_attention

        out = memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
