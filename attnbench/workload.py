"""Workloads: the zero-argument closures the runner times, built once outside the timed region.

Following tritonbench's rule "build inputs, then time a closure; never time setup": a builder makes
the module and the inputs, and returns a `Workload` whose `fn()` does exactly the timed work
(forward under no_grad, or forward + backward of sum(out * g) with a fixed random g).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from attnbench.dtypes import TORCH_DTYPES
from attnbench.layers import Rope2d
from attnbench.registry import Mechanism, accepted_options


@dataclass
class StaticRow:
    """A single-valued metric of a case (params, analytic FLOPs, counted FLOPs, ...)."""

    metric: str
    value: float
    unit: str
    note: str = ""
    source: str = "measured"


@dataclass
class Workload:
    fn: Callable[[], Any]  # the timed call; returns the output (or grads for fwd_bwd)
    items: int  # items (sequences / images) per call, for throughput
    tokens: int  # tokens per call (batch * N), for tokens_per_s
    module: nn.Module | None = None  # the module under test (params), if any
    forward: Callable[[], torch.Tensor] | None = None  # one untimed forward (verify, flop counting)
    static: list[StaticRow] = field(default_factory=list)


def seeded_randn(shape, *, dtype, device, seed: int, requires_grad: bool = False) -> torch.Tensor:
    """Deterministic normal inputs, generated in fp32 on CPU then moved (same values on every device)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(*shape, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)
    return t.requires_grad_(requires_grad)


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


def op_workload(mech: Mechanism, *, batch, heads, height, width, head_dim, dtype, device, pass_, options=None, seed=0):
    """Op level: q, k, v (B, h, N, d) random normal; fn = mech.op(q, k, v, grid=(H, W), **options).

    Options (the suite's `options: {mechanism: {...}}`) reach the op as keywords, so an op with
    hyper-parameters (performer features, Nystrom landmarks) is timed as configured."""
    options = accepted_options(mech.op, options or {})  # mixer-only options (gate, lepe) don't reach the op
    tdtype = TORCH_DTYPES[dtype]
    n = height * width
    need_grad = pass_ == "fwd_bwd"
    if mech.layout == "bnhd":  # (B, N, h, d) storage viewed as (B, h, N, d): the op's transpose is free
        q, k, v = (
            seeded_randn((batch, n, heads, head_dim), dtype=tdtype, device=device, seed=seed + i)
            .transpose(1, 2).requires_grad_(need_grad)
            for i in range(3)
        )  # fmt: skip
    else:
        q, k, v = (
            seeded_randn((batch, heads, n, head_dim), dtype=tdtype, device=device, seed=seed + i,
                         requires_grad=need_grad)  # fmt: skip
            for i in range(3)
        )  # (B, h, N, d) each

    def forward():
        return mech.op(q, k, v, grid=(height, width), **options)

    return Workload(
        fn=timed_call(forward, [q, k, v], pass_),
        items=batch,
        tokens=batch * n,
        forward=forward,
    )


def mixer_workload(mech: Mechanism, *, batch, heads, height, width, dim, dtype, device, pass_, options=None, seed=0):
    """Mixer level: the mechanism's token mixer on x (B, C, H, W) with RoPE tables from a Rope2d."""
    tdtype = TORCH_DTYPES[dtype]
    torch.manual_seed(seed)
    module = mech.mixer(dim, heads, **accepted_options(mech.mixer, options or {})).to(device=device, dtype=tdtype)
    module.train(pass_ == "fwd_bwd")
    rope = Rope2d(dim // heads).to(device=device, dtype=tdtype)((height, width))  # (N, d) x2, built once
    x = seeded_randn((batch, dim, height, width), dtype=tdtype, device=device, seed=seed + 10,
                     requires_grad=pass_ == "fwd_bwd")  # (B, C, H, W)
    params = [p for p in module.parameters() if p.requires_grad]

    def forward():
        return module(x, rope)

    n_params = sum(p.numel() for p in module.parameters())
    return Workload(
        fn=timed_call(forward, [x, *params], pass_),
        items=batch,
        tokens=batch * height * width,
        module=module,
        forward=forward,
        static=[StaticRow("params", float(n_params), "count", note="mixer parameters")],
    )
