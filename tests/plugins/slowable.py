"""Test plugin: `test_slowable`, softmax attention that can be made slower by real extra compute.

Every call computes SDPA `UNITS` times on the same inputs and averages (the result equals SDPA's, so
verify passes against softmax_eager). $ATTNBENCH_TEST_SLOWDOWN (a fraction, default 0) adds
round(UNITS * fraction) further identical SDPA calls: 0.1, 0.2, 0.3 make the op (and its backward)
10 %, 20 %, 30 % slower in work, overheads included, with no sleeping or busy-waiting. The mixer is the
shared token-mixer shell around that operator (RoPE on q, k as for softmax). Used by the gate tests and
by scripts/gate_calibration.py.
"""

from __future__ import annotations

import os

import torch.nn.functional as F

from attnbench.layers import TokenMixer, rope_operator
from attnbench.registry import Mechanism, register_mechanism

UNITS = 10


def _calls() -> int:
    return UNITS + round(UNITS * float(os.environ.get("ATTNBENCH_TEST_SLOWDOWN", "0")))


def slowable_attention(q, k, v):  # (B, h, N, d) x3 -> (B, h, N, d)
    calls = _calls()
    out = F.scaled_dot_product_attention(q, k, v)
    for _ in range(calls - 1):
        out = out + F.scaled_dot_product_attention(q, k, v)
    return out / calls


@register_mechanism("test_slowable", family="test", reference="softmax_eager")
class Slowable(Mechanism):
    def op(self, q, k, v, *, grid):
        return slowable_attention(q, k, v)

    def mixer(self, dim, num_heads):
        return TokenMixer(dim, num_heads, rope_operator(slowable_attention))
