"""Test plugin: mechanisms that fail verification in every case.

- linear_vs_softmax: the template's linear attention (my_mechanism.py) registered with
  reference="softmax_eager"; it does not compute softmax attention.
- off_in_low_precision: reference=None, but its output moves by 1 in every dtype except float64, so it
  fails the check against itself in float64.
"""

from __future__ import annotations

import torch

from attnbench.registry import Mechanism, register_mechanism


@register_mechanism("linear_vs_softmax", family="test", reference="softmax_eager")
class LinearVsSoftmax(Mechanism):
    def op(self, q, k, v, *, grid):
        q, k = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
        kv = k.transpose(-2, -1) @ v / k.shape[-2]
        return (q @ kv) / (q * k.mean(dim=-2, keepdim=True)).sum(dim=-1, keepdim=True)


@register_mechanism("off_in_low_precision", family="test")
class OffInLowPrecision(Mechanism):
    def op(self, q, k, v, *, grid):
        return v if v.dtype == torch.float64 else v + 1
