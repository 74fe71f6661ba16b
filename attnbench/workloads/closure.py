"""The timed closure of a case: tritonbench's rule "build inputs, then time a closure; never time setup".

A builder (attnbench.workloads.build, .model) makes the module and the inputs and returns a `Workload`
whose `fn()` does exactly the timed work: forward under no_grad, or forward + backward of sum(out * g)
with a fixed random g.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from attnbench.metrics.row import MetricRow
from attnbench.workloads.inputs import seeded_randn


@dataclass
class Workload:
    fn: Callable[[], Any]  # the timed call; returns the output (or grads for fwd_bwd)
    items: int  # items (sequences / images) per call, for throughput
    tokens: int  # tokens per call (batch * N), for tokens_per_s
    module: nn.Module | None = None  # the module under test (params), if any
    forward: Callable[[], torch.Tensor] | None = None  # one untimed forward (verify, flop counting)
    static: list[MetricRow] = field(default_factory=list)  # single values of the workload (params, model MACs)


def timed_call(forward: Callable[[], torch.Tensor], inputs: list[torch.Tensor], pass_: str, seed: int = 1):
    """Wrap a forward closure into the timed closure for `pass_`.

    fwd: forward under torch.no_grad(). fwd_bwd: forward, then torch.autograd.grad of sum(out * g)
    with a fixed random g (built here, outside the timed region) w.r.t. `inputs`; grad() returns
    fresh gradients, so nothing accumulates across repeats.
    """
    if pass_ == "fwd":

        def fwd():
            with torch.no_grad():
                return forward()

        return fwd
    if pass_ != "fwd_bwd":
        raise ValueError(f"unknown pass {pass_!r}")
    with torch.no_grad():
        probe = forward()
    g = seeded_randn(probe.shape, dtype=probe.dtype, device=probe.device, seed=seed)
    del probe

    def fwd_bwd():
        out = forward()
        return torch.autograd.grad(out, inputs, g)

    return fwd_bwd
