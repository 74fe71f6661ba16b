"""`rala_triton`: RALA with Triton forward and backward kernels (triton_kernels.py, triton_bwd.py).

Importing this module registers the mechanism but never imports triton: the kernels are imported
on first use, inside `rala_triton_op`. On CPU the kernels run only in Triton's interpreter, which
must be switched on (TRITON_INTERPRET=1) before the first kernel import; `check` says so.

RoPE: `rala_triton_op(q, k, v, grid=..., rope=None)` computes the spec's default rotation
in-kernel from each token's (row, col) (op level). When the caller passes tables (the RALA mixer
shell passes its Rope2d's (sin, cos)), the kernels read those tables instead, so a loaded
checkpoint's own `angle` buffer is honoured; no gradient flows to the tables.

The host-side launch plan (block sizes, splits along N, output layout, RoPE arguments) is in launch.py,
which the kernels import too.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from attnbench.registry import register_mechanism
from mechanisms.common import check_grid
from mechanisms.rala.base import RalaBase
from mechanisms.rala.naive import CITE_RALA

HEAD_DIMS = (32, 64, 96, 128)
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class _RalaTritonFunction(torch.autograd.Function):
    """Saves only q, k, v, the rope tables (if any) and the forward's fp32 workspace: the small state
    (qbar, KV, ksum, M, L) and the split partials, O(B h S d^2) for S splits along N."""

    @staticmethod
    def forward(ctx, q, k, v, grid, sin, cos):
        from mechanisms.rala.triton_kernels import rala_forward

        rope = None if sin is None else (sin, cos)
        out, ws = rala_forward(q, k, v, grid, rope)
        ctx.grid = grid
        ctx.has_rope = rope is not None
        ctx.save_for_backward(q, k, v, ws, *(rope or ()))
        return out

    @staticmethod
    def backward(ctx, g):
        from mechanisms.rala.triton_bwd import rala_backward

        q, k, v, ws, *rope = ctx.saved_tensors
        dq, dk, dv = rala_backward(g, q, k, v, ctx.grid, tuple(rope) if ctx.has_rope else None, ws)
        return dq, dk, dv, None, None, None


def _validate(q, k, v, grid, rope) -> None:
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            f"q, k, v must be (B, h, N, d) of one shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.dtype not in _DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(
            f"rala_triton supports fp32/fp16/bf16 inputs of one dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    n, d = q.shape[-2:]
    check_grid(grid, n)
    if d % 4 or not 8 <= d <= 128:
        raise ValueError(f"rala_triton needs a head dim divisible by 4 in [8, 128], got {d}")
    if rope is not None and (rope[0].device != q.device or rope[1].device != q.device):
        raise ValueError("rope tables must be on the inputs' device")


def rala_triton_op(q, k, v, *, grid, rope=None):
    """RALA operator (docs/rala.md "The RALA operator") in Triton. q, k, v: (B, h, N, d), any strides.

    Returns (B, h, N, d) in q's dtype, laid out like q where that is (B, N, h, d) or the mixer's
    token-contiguous view (no copy at the head merge), else contiguous (also compiled fp32 token-major
    inputs at d-block 128, whose q passes read a channel-major copy: launch.out_pass_wants_channel_major).
    rope: (sin, cos) tables, each (N, d), or None for the default rotation computed in-kernel.
    """
    _validate(q, k, v, grid, rope)
    grid = (int(grid[0]), int(grid[1]))
    sin, cos = rope if rope is not None else (None, None)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return _RalaTritonFunction.apply(q, k, v, grid, sin, cos)
    from mechanisms.rala.triton_kernels import rala_forward

    return rala_forward(q, k, v, grid, rope)[0]


@register_mechanism(
    "rala_triton",
    family="rala",
    backend="triton",
    reference="rala_eager",
    requires=("triton",),
    head_dims=HEAD_DIMS,
    cite=CITE_RALA,
)
class RalaTriton(RalaBase):
    """RALA as Triton kernels: 3 launches forward (qbar; split-N online-softmax state; output, which
    merges the split states; a separate merge launch, parallel over chunks of the d x d state, when N
    is split more than 4 ways), 4 backward; no (B, h, N, d) intermediate in memory.

    bytes() (RalaBase's, shared by every RALA form) at op level counts q read twice (pass (a) for
    qbar, pass (c) for the output), k and v once, out once: 5 B h N d elements. Mixer level: the
    shell's minimum traffic.
    """

    operator = staticmethod(rala_triton_op)
    flop_counter_safe = False  # FlopCounterMode cannot see inside Triton kernels

    def check(self, device: str | None) -> str | None:
        if importlib.util.find_spec("triton") is None:
            return "python package 'triton' is not installed (pip install triton)"
        dev = None if device is None else str(device).split(":")[0]
        if dev == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            return "Triton kernels need a CUDA GPU; on CPU set TRITON_INTERPRET=1 (the interpreter) before starting"
        return None
