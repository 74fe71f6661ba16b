"""The timed closure of a case: tritonbench's rule "build inputs, then time a closure; never time setup".

A builder (attnbench.workloads.build, .model) makes the module and the inputs and returns a `Workload`
whose `fn()` does exactly the timed work: forward under no_grad (pass fwd), forward + backward of
sum(out * g) with a fixed random g (fwd_bwd), or that backward alone (bwd).

bwd retains the graph: the forward runs once, when the workload is built (outside the timed region),
and every call runs torch.autograd.grad(out, inputs, g, retain_graph=True) through that one graph, as
FlashAttention's benchmark_backward (flash_attn/utils/benchmark.py) and tritonbench's --bwd mode do, so
their numbers and ours time the same work. The timer's zero-argument closure needs no per-repeat set-up
(recomputing the forward outside the timed region would need a hook before every repeat, and a forward's
time per repeat), and no forward work enters the timed call. Repeated calls give identical gradients (the
saved tensors are only read; grad() returns fresh tensors, so nothing accumulates) and hold no memory
beyond the one graph, which lives as long as the closure (tests/test_bwd_pass.py). A backward that
rewrites its saved tensors cannot be repeated so: such a mechanism says `repeatable_backward = False` and
its bwd cases are skipped (attnbench.plan).
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
    fn: Callable[[], Any]  # the timed call; returns the output (or grads for fwd_bwd and bwd)
    items: int  # items (sequences / images) per call, for throughput
    tokens: int  # tokens per call (batch * N), for tokens_per_s
    module: nn.Module | None = None  # the module under test (params), if any
    forward: Callable[[], torch.Tensor] | None = None  # one untimed forward (verify, flop counting)
    static: list[MetricRow] = field(default_factory=list)  # single values of the workload (params, model MACs)


def timed_call(forward: Callable[[], torch.Tensor], inputs: list[torch.Tensor], pass_: str, seed: int = 1):
    """Wrap a forward closure into the timed closure for `pass_`.

    fwd: forward under torch.no_grad(). fwd_bwd: forward, then torch.autograd.grad of sum(out * g)
    with a fixed random g (built here, outside the timed region) w.r.t. `inputs`; grad() returns
    fresh gradients, so nothing accumulates across repeats. bwd: the same g and gradients, the forward
    run once here (`retained_backward`).
    """
    if pass_ == "fwd":

        def fwd():
            with torch.no_grad():
                return forward()

        return fwd
    if pass_ == "bwd":
        out = forward()  # the graph every call runs backward through
        return retained_backward(out, inputs, _grad_output(out, seed))
    if pass_ != "fwd_bwd":
        raise ValueError(f"unknown pass {pass_!r} (fwd | fwd_bwd | bwd)")
    with torch.no_grad():
        probe = forward()
    g = _grad_output(probe, seed)
    del probe

    def fwd_bwd():
        out = forward()
        return torch.autograd.grad(out, inputs, g)

    return fwd_bwd


def retained_backward(
    out: torch.Tensor, inputs: list[torch.Tensor], grad_output: torch.Tensor | None = None
) -> Callable[[], tuple[torch.Tensor, ...]]:
    """The bwd closure: gradients of `out` (weighted by `grad_output`; None for a scalar loss) w.r.t. `inputs`,
    through the graph that produced `out`, retained so that every call runs the same backward."""

    def bwd():
        return torch.autograd.grad(out, inputs, grad_output, retain_graph=True)

    return bwd


def _grad_output(out: torch.Tensor, seed: int) -> torch.Tensor:
    """The fixed random output gradient g, shaped like `out`."""
    return seeded_randn(out.shape, dtype=out.dtype, device=out.device, seed=seed)
