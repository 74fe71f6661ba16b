"""Op- and mixer-level workloads from a case's inputs, and `build_workload` for any level.

op:    fn = mech.op(q, k, v, grid=(H, W), **options), q, k, v (B, h, N, d) from the case's factory; options
       (the suite's `options: {mechanism: {...}}`) reach the op as keywords, so an op with hyper-parameters
       (performer features, Nystrom landmarks) is timed as configured.
mixer: the mechanism's token mixer (seeded init) on x (B, C, H, W), RoPE tables from a Rope2d.
model: attnbench.workloads.model.
Passes fwd_bwd and bwd take gradients w.r.t. q, k, v (op) or x and every parameter (mixer; train mode);
bwd runs the forward once here, outside the timed closure (attnbench.workloads.closure).
`op_workload` / `mixer_workload` take the shape as keywords (scripts and tests).
"""

from __future__ import annotations

from typing import Any

from attnbench.metrics.row import MetricRow
from attnbench.registry import BACKWARD_PASSES, Mechanism, Shape
from attnbench.workloads.closure import Workload, timed_call
from attnbench.workloads.inputs import CaseInputs


def build_workload(inputs: CaseInputs) -> Workload:
    """The timed closure of the case `inputs` describe, at its level."""
    if inputs.level == "op":
        return _op(inputs)
    if inputs.level == "mixer":
        return _mixer(inputs)
    from attnbench.workloads.model import model_workload

    return model_workload(inputs)


def _op(inputs: CaseInputs) -> Workload:
    mech, s = inputs.mech, inputs.shape
    options = inputs.op_options()
    q, k, v = inputs.qkv(layout=mech.layout, requires_grad=inputs.pass_ in BACKWARD_PASSES)  # (B, h, N, d) each

    def forward():
        return mech.op(q, k, v, grid=inputs.grid, **options)

    return Workload(
        fn=timed_call(forward, [q, k, v], inputs.pass_), items=s.batch, tokens=s.batch * s.tokens, forward=forward
    )


def _mixer(inputs: CaseInputs) -> Workload:
    s = inputs.shape
    module = inputs.mixer().to(device=inputs.device, dtype=inputs.torch_dtype)
    module.train(inputs.pass_ in BACKWARD_PASSES)
    rope = inputs.rope()  # (N, d) x2, built once
    x = inputs.x(requires_grad=inputs.pass_ in BACKWARD_PASSES)  # (B, C, H, W)
    params = [p for p in module.parameters() if p.requires_grad]

    def forward():
        return module(x, rope)

    n_params = sum(p.numel() for p in module.parameters())
    return Workload(
        fn=timed_call(forward, [x, *params], inputs.pass_),
        items=s.batch,
        tokens=s.batch * s.tokens,
        module=module,
        forward=forward,
        static=[MetricRow("params", float(n_params), "count", note="mixer parameters")],
    )


def op_workload(
    mech: Mechanism,
    *,
    batch,
    heads,
    height,
    width,
    head_dim,
    dtype,
    device,
    pass_,
    options: dict[str, Any] | None = None,
    seed: int = 0,
) -> Workload:
    """Op level: q, k, v (B, h, N, d) random normal; fn = mech.op(q, k, v, grid=(H, W), **options)."""
    shape = Shape(batch, heads, height, width, head_dim, heads * head_dim)
    return _op(CaseInputs(mech, "op", shape, dtype, device, pass_, dict(options or {}), seed=seed))


def mixer_workload(
    mech: Mechanism,
    *,
    batch,
    heads,
    height,
    width,
    dim,
    dtype,
    device,
    pass_,
    options: dict[str, Any] | None = None,
    seed: int = 0,
) -> Workload:
    """Mixer level: the mechanism's token mixer on x (B, C, H, W) with RoPE tables from a Rope2d."""
    shape = Shape(batch, heads, height, width, dim // heads, dim)
    return _mixer(CaseInputs(mech, "mixer", shape, dtype, device, pass_, dict(options or {}), seed=seed))
