"""Softmax attention, the readable reference: matmul, softmax, matmul (`softmax_eager`, the family's reference)."""

from __future__ import annotations

import torch

from attnbench.registry import register_mechanism
from mechanisms.softmax.base import CITE_ATTN, MaterialisedScores, SoftmaxBase


def softmax_attention_eager(q, k, v):
    """Readable reference: matmul, softmax, matmul. (B, h, N, d) -> (B, h, N, d)."""
    scale = q.shape[-1] ** -0.5
    attn = torch.softmax(scale * q @ k.transpose(-1, -2), dim=-1)  # (B, h, N, N)
    return attn @ v


@register_mechanism("softmax_eager", family="softmax", backend="torch", reference=None, cite=CITE_ATTN)
class SoftmaxEager(MaterialisedScores, SoftmaxBase):
    """Matmul-softmax-matmul in plain PyTorch; materialises the (B, h, N, N) scores."""

    def attend(self, q, k, v):
        return softmax_attention_eager(q, k, v)
