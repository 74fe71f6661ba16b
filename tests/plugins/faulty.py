"""Test plugin: mechanisms that fail in controlled ways, and one that allocates a known amount.

- test_raises: op raises RuntimeError (a case error; the sweep must go on)
- test_interrupt: op raises KeyboardInterrupt once while the file named by
  $ATTNBENCH_TEST_INTERRUPT exists (it deletes the file), simulating Ctrl-C mid-sweep
- test_alloc: op allocates options.mb MiB (fp32) and returns v; for per-case memory tests
"""

from __future__ import annotations

import os

import torch

from attnbench.registry import Mechanism, register_mechanism


@register_mechanism("test_raises", family="test")
class Raises(Mechanism):
    def op(self, q, k, v, *, grid):
        raise RuntimeError("deliberate failure from the test plugin")


@register_mechanism("test_interrupt", family="test")
class Interrupt(Mechanism):
    def op(self, q, k, v, *, grid):
        marker = os.environ.get("ATTNBENCH_TEST_INTERRUPT")
        if marker and os.path.exists(marker):
            os.unlink(marker)
            raise KeyboardInterrupt
        return v


class _Alloc(torch.nn.Module):
    def __init__(self, mb: int):
        super().__init__()
        self.mb = mb

    def forward(self, x, rope=None):
        buf = torch.ones(self.mb * 2**20 // 4)  # exactly mb MiB of fp32
        return x + buf[0]


@register_mechanism("test_alloc", family="test")
class Alloc(Mechanism):
    def mixer(self, dim, num_heads, mb: int = 100):
        return _Alloc(mb)


# -- faults for process isolation (each only ever runs inside a worker) --------------------------
@register_mechanism("test_abort", family="test")
class Abort(Mechanism):
    def op(self, q, k, v, *, grid):
        os.abort()


@register_mechanism("test_segfault", family="test")
class Segfault(Mechanism):
    def op(self, q, k, v, *, grid):
        import ctypes

        ctypes.string_at(0)  # read address 0: SIGSEGV


@register_mechanism("test_hang", family="test")
class Hang(Mechanism):
    def op(self, q, k, v, *, grid):
        import time

        time.sleep(3600)


@register_mechanism("test_oom", family="test")
class RaisesOom(Mechanism):
    def op(self, q, k, v, *, grid):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB (simulated)")


@register_mechanism("test_unbounded", family="test")
class Unbounded(Mechanism):
    def op(self, q, k, v, *, grid):
        hoard = []
        while True:  # grows until the worker's RLIMIT_AS stops it; empty() reserves address space without
            hoard.append(torch.empty(64 * 2**20))  # writing 256 MB a step, so a loaded host reaches the limit in ms


@register_mechanism("test_wrong", family="test", reference="softmax_eager")
class Wrong(Mechanism):
    """Claims to be softmax attention but forgets the 1/sqrt(d) scale: verify must catch it."""

    def op(self, q, k, v, *, grid):
        return torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
