"""`rala_compiled`: RALA's operator written for the compiler (`rala_core_parts`) under
`torch.compile(dynamic=True)` with a static head dim.

Why not `rala_op` itself: inductor fuses the reference's whole chain (phi, the token softmax, both
RoPE applications with their interleaved even/odd store, the reweighting) into one C++ kernel that
recomputes phi and the strided rotation per use, several times slower on CPU than eager `rala_op`.
`rala_core_parts` computes the same function (see `rala_core_halves`) without the interleave and returns
phi(q), phi(k) so they are computed once; the op-level RoPE tables come from `op_tables` outside the
graph (inside it, inductor evaluates sin/cos per element of the (N, d) tables). With the head dim static
(`rala_core_static_d`) the op-level forward at 56x56, d=64, fp32 takes 1.70 ms against rala_eager's 2.65
ms and softmax_sdpa's 28.1 ms on a 2-core CPU (results/resolution-cpu-20261207.csv).

Compiled lazily on first use and cached for the process; `dynamic=True` makes batch, heads and
tokens symbolic from the first compile, so a sweep over batch / tokens / grids reuses one graph per
dtype, device and head dim instead of recompiling per shape (RECOMPILE_LIMIT lists the exceptions);
the head dim is made static inside the graph (`rala_core_static_d`). A measured case resets dynamo
before its first call (attnbench.metrics.compile_cost), so there each case compiles again, loading
the generated code from inductor's on-disk cache when it is warm. The mixer is the eager TokenMixer
shell (convs run eagerly) around the compiled operator, so op- and mixer-level numbers isolate the
operator's compiled form. Costs are those of the eager reference (the same function; the analytic
count does not follow the reordering).

`check(device)` says why torch.compile cannot run here (attnbench.measure.compiler.unavailable_reason: dynamo,
inductor, a C++ compiler on CPU, Triton on CUDA; a passed check is remembered in the cache folder).
`compiled = True`: each timed case writes `compile_s` (its first call after torch._dynamo.reset()) and
`recompiles` rows (attnbench.metrics.compile_cost).
"""

from __future__ import annotations

import functools
from typing import Callable

import torch

from attnbench.measure.compiler import unavailable_reason
from attnbench.registry import register_mechanism
from mechanisms.rala.base import RalaBase
from mechanisms.rala.naive import CITE_RALA, op_tables, phi

# fullgraph: a graph break or a hit recompile limit raises instead of silently running eager code
COMPILE_OPTIONS = {"dynamic": True, "fullgraph": True}
# Dynamo still specialises some sizes: batch or heads of 1 (0/1 specialisation), the head dim, and
# equal sizes that "duck sizing" ties together (batch == heads) until a case breaks the tie; plus
# one graph per dtype and device. A sweep can exceed dynamo's default limit of 8 graphs per
# function, so it is raised (never lowered) to this when the operator is first compiled.
RECOMPILE_LIMIT = 64


def _raise_recompile_limit(limit: int = RECOMPILE_LIMIT) -> None:
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit"):  # torch < 2.6 names it cache_size_limit
        if isinstance(getattr(dynamo_config, name, None), int):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), limit))
            return


def rala_core_halves(q, k, v, sin, cos):
    """RALA's operator (docs/rala.md "The RALA operator") on (B, h, N, d) inputs and (N, d) RoPE
    tables, in the order of operations that suits a compiler; equal to `rala_op` in exact arithmetic (tests:
    within the fp64-reference rule). `rala_core_parts(...)[0]`.

    - Channel halves: RoPE rotates channel pairs (2i, 2i+1), and the rotated q and k are only ever
      contracted over channels (R(q) @ KV with KV = R(k)^T v), so ordering the channels [evens | odds]
      in both changes no sum. In that order the rotation reads two halves and writes contiguous rows,
      instead of the reference's interleaved (stride-2) store. Un-rotated phi(q), phi(k) keep their order.
    - The N and 1/N factors cancel: KV = mean_m R(k_m alpha_m N) v_m^T = R(phi(k) alpha)^T v, and
      mean_m k~_m = alpha @ phi(k) (alpha sums to 1). alpha scales phi(k) inside the loop that rotates
      it, not v (which would need one more (N, d) buffer and is slower and less steady per call).
    - z is a per-token scalar, so R(q) z = R(q z): the normaliser is applied before the rotation and the
      last matmul writes the output.
    Tables are used as given (no assumption that sin/cos repeat within a pair)."""
    return rala_core_parts(q, k, v, sin, cos)[0]


def rala_core_parts(q, k, v, sin, cos):
    """(out, phi(q), phi(k)): `rala_core_halves` that also returns the two feature maps. What is compiled:
    as graph outputs they are stored once and read by the later loops, where inductor otherwise fuses
    phi (an exp per element) into each of the ~9 loops that read it and recomputes it there. Returned
    detached, so a backward gets no zero gradients for them to add."""
    scale = q.shape[-1] ** -0.5
    q, k = phi(q), phi(k)
    alpha = torch.softmax(scale * q.mean(dim=-2, keepdim=True) @ k.transpose(-1, -2), dim=-1)  # (B, h, 1, N)
    ksum = alpha @ k  # (B, h, 1, d): mean of the reweighted k
    z = 1 / (q @ ksum.transpose(-2, -1) + 1e-6)  # (B, h, N, 1)
    cos_e, cos_o, sin_e, sin_o = cos[:, 0::2], cos[:, 1::2], sin[:, 0::2], sin[:, 1::2]

    def rotate_in_halves(x):  # R(x) with its channels ordered [evens | odds]
        even, odd = x[..., 0::2], x[..., 1::2]
        return torch.cat([even * cos_e - odd * sin_e, odd * cos_o + even * sin_o], dim=-1)

    kv = rotate_in_halves(k * alpha.transpose(-2, -1)).transpose(-2, -1) @ v  # (B, h, d, d), halves order
    return rotate_in_halves(q * z) @ kv, q.detach(), k.detach()  # detached: no gradient flows back through them


def rala_core_static_d(q, k, v, sin, cos):
    """`rala_core_parts` with the head dim specialised, for tracing: dynamo's `mark_static` called inside the
    traced function makes q's channel size a constant of the graph (and k's, v's and the tables', which
    dynamo ties to it), so inductor can unroll and fully vectorise the channel loops. Inside, not on the
    caller's tensors before each call: marking 5 tensors there costs tens of microseconds per call, and this
    leaves the caller's tensors unmarked. Batch, heads and tokens stay symbolic; a sweep compiles once per
    head dim (a new d fails the graph's d guard and compiles the next graph). Where dynamo runs the frame
    eagerly instead (disabled, skipped, past its recompile limit) nothing is marked."""
    if torch.compiler.is_compiling():
        torch._dynamo.mark_static(q, q.dim() - 1)
    return rala_core_parts(q, k, v, sin, cos)


@functools.lru_cache(maxsize=1)
def compiled_rala_core() -> Callable[..., tuple]:
    """torch.compile(rala_core_static_d, dynamic=True, fullgraph=True), built once per process; compiles on
    first call."""
    _raise_recompile_limit()
    return torch.compile(rala_core_static_d, **COMPILE_OPTIONS)


def rala_op_compiled(q, k, v, *, grid, rope=None):
    """Same signature and result as `rala_op`: the op-level tables from `op_tables` (as `rala_op`
    gets them), then the cached compiled `rala_core_parts` with a static head dim. Inside code that is
    itself being compiled (a model under `compile: model`) the core is traced into that graph instead."""
    core = rala_core_static_d if torch.compiler.is_compiling() else compiled_rala_core()
    return core(q, k, v, *op_tables(q, grid, rope))[0]


@register_mechanism("rala_compiled", family="rala", backend="torch-compile", reference="rala_eager", cite=CITE_RALA)
class RalaCompiled(RalaBase):
    """RALA's operator in compiler order (`rala_core_parts`) under torch.compile (symbolic batch, heads and
    tokens; static head dim); compiled on first use, cached."""

    operator = staticmethod(rala_op_compiled)
    flop_counter_safe = False  # FlopCounterMode around compiled code makes dynamo skip the frame for good
    # AOTAutograd donates the saved tensors to the compiled backward (reuses their memory in place), so
    # torch refuses retain_graph=True: no pass bwd
    repeatable_backward = False
    compiled = True  # compile_s and recompiles rows (attnbench.metrics.compile_cost)

    def check(self, device: str | None) -> str | None:
        return unavailable_reason(device)
