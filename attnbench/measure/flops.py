"""Counted FLOPs with torch's FlopCounterMode (the `flops_counted` metric, note `flopcountermode`).

Convention (torch's): a multiply-add is 2 FLOPs; only matmuls (mm, bmm, addmm, baddbmm, ...),
convolutions and the fused attention kernels are counted; elementwise ops, reductions, softmax and
normalisation layers count 0; biases are not counted. The call's backward (if the closure runs
one) is counted too.

torch does not ship a formula for CPU SDPA (`aten._scaled_dot_product_flash_attention_for_cpu` and
its backward), so `softmax_sdpa` would count 0 on CPU; `register_sdpa_cpu_formulas()` (called by
every function here, idempotent) adds the same formulas torch uses for the CUDA kernels:
forward 2 matmuls (QK^T, PV); backward 5 (score recompute, dP = dO V^T, dV, dQ, dK).

torch's `convolution_backward` formula counts the weight gradient of a grouped convolution as if
it were dense (a depthwise 3x3 conv's backward comes out ~C times too large; checked on torch
2.13), so our counters use a group-aware formula instead, scoped to our FlopCounterMode instances
(torch's registry is left alone): each requested gradient (input, weight) costs exactly the
forward's FLOPs, i.e. a conv's backward = 2x its forward, as for a matmul.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Callable

import torch

if TYPE_CHECKING:  # torch.utils.flop_counter imports triton: load it on first use, not with attnbench
    from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_flops", "count_flops_by_op", "register_sdpa_cpu_formulas"]


def _attention_flops(q_shape, k_shape, v_shape) -> int:
    """Forward FLOPs of softmax(Q K^T) V for (B, h, Nq, d) x (B, hkv, Nk, d) x (B, hkv, Nk, dv)."""
    b, h, nq, d = q_shape
    nk, dv = k_shape[-2], v_shape[-1]
    return 2 * b * h * nq * nk * d + 2 * b * h * nq * nk * dv


def _attention_backward_flops(q_shape, k_shape, v_shape) -> int:
    """Backward: recompute scores (QK^T), dP = dO V^T, dV = P^T dO, dQ = dS K, dK = dS^T Q."""
    b, h, nq, d = q_shape
    nk, dv = k_shape[-2], v_shape[-1]
    return 2 * b * h * nq * nk * (2 * d + 2 * dv + d)


def _cpu_flash_forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return _attention_flops(query_shape, key_shape, value_shape)


def _cpu_flash_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return _attention_backward_flops(query_shape, key_shape, value_shape)


_CPU_SDPA = {
    "_scaled_dot_product_flash_attention_for_cpu": _cpu_flash_forward,
    "_scaled_dot_product_flash_attention_for_cpu_backward": _cpu_flash_backward,
}


def register_sdpa_cpu_formulas() -> None:
    """Register FlopCounterMode formulas for CPU SDPA (forward and backward). Safe to call repeatedly."""
    from torch.utils.flop_counter import flop_registry, register_flop_formula

    for name, formula in _CPU_SDPA.items():
        target = getattr(torch.ops.aten, name, None)  # absent in torch builds without the CPU flash kernel
        if target is None or target in flop_registry:
            continue
        register_flop_formula(target)(formula)


def _conv_flops(x_shape, w_shape, out_shape, transposed: bool) -> int:
    """2 x MACs of a convolution; w_shape (C_out, C_in/groups, *k) already accounts for groups."""
    batch, spatial = x_shape[0], (x_shape if transposed else out_shape)[2:]
    return 2 * batch * math.prod(spatial) * math.prod(w_shape)


def _conv_backward_flops(
    grad_out_shape,
    x_shape,
    w_shape,
    _bias,
    _stride,
    _padding,
    _dilation,
    transposed,
    _output_padding,
    _groups,
    output_mask,
    out_shape=None,
    **kwargs,
) -> int:
    """Group-aware: grad_input and grad_weight each cost one forward (grad_out_shape = forward output)."""
    forward = _conv_flops(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


class _GlobalOnly:
    """Stands in for FlopCounterMode's ModuleTracker: no per-module breakdown, so no module hooks.

    Those hooks fail when a closure calls torch.autograd.grad w.r.t. a leaf tensor that is a module's
    input ("A leaf node was passed to _will_engine_execute_node ..."), which is exactly what the
    mixer-level fwd_bwd workload does. We only need the global total.
    """

    parents = frozenset({"Global"})

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _counter() -> FlopCounterMode:
    from torch.utils.flop_counter import FlopCounterMode

    register_sdpa_cpu_formulas()  # FlopCounterMode copies the registry when it is constructed
    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flops})
    if hasattr(counter, "mod_tracker"):  # torch >= 2.4 attributes counts through it
        counter.mod_tracker = _GlobalOnly()
    return counter


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of `fn` (a zero-argument closure), counted by FlopCounterMode.

    Runs `fn` once (untimed: count outside any timed region). Counts whatever `fn` does, forward
    and, if it calls backward/autograd.grad, backward. Works with tensors on the meta device.
    """
    with _counter() as counter:
        fn()
    return int(counter.get_total_flops())


def count_flops_by_op(fn: Callable[[], Any]) -> dict[str, int]:
    """Like `count_flops`, split by aten op (e.g. {"convolution": ..., "bmm": ...}); sums to the total."""
    with _counter() as counter:
        fn()
    totals: dict[str, int] = defaultdict(int)
    for op, flops in counter.get_flop_counts()["Global"].items():
        totals[str(getattr(op, "__name__", op)).split(".")[0]] += int(flops)
    return dict(totals)
