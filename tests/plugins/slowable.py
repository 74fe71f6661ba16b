"""Test plugin: `test_slowable` is softmax_sdpa plus a busy-wait of $ATTNBENCH_TEST_SLOWDOWN_MS
milliseconds per call (default 0): a deliberately slowed mechanism for regression-gate tests."""

from __future__ import annotations

import os
import time

import torch.nn.functional as F

from attnbench.registry import Mechanism, register_mechanism


@register_mechanism("test_slowable", family="test", reference="softmax_eager")
class Slowable(Mechanism):
    def op(self, q, k, v, *, grid):
        out = F.scaled_dot_product_attention(q, k, v)
        delay = float(os.environ.get("ATTNBENCH_TEST_SLOWDOWN_MS", "0")) / 1e3
        end = time.perf_counter() + delay
        while time.perf_counter() < end:
            pass
        return out
