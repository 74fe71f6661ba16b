"""Registry entries of the RALA family, with their analytic costs.

Conventions (mechanisms/common.py): 2 FLOPs per multiply-add, matmuls and convolutions only;
elementwise work (phi, softmax over tokens, RoPE, the reweighting, the 1/z division, the gate) and
the two token means are excluded; fwd_bwd = 3 x fwd (each matmul's backward computes two
gradients of its forward's size). These equal torch FlopCounterMode's count of `rala_op` and of the
mixer exactly (forward and forward + backward w.r.t. inputs and weights; tests/test_counting.py).

Per batch and head, with N tokens and head dim d, the operator's matmuls are:
  qbar @ k^T (1 x d x N) -> N d;  q @ mean(k)^T (N x d x 1) -> N d;
  kr^T @ v (d x N x d) -> N d^2;   qr @ KV (N x d x d) -> N d^2.
Mixer = operator + the shell's convs (qkvo C->4C, 5x5 depthwise lepe, proj C->C; `shell_flops`).

Bytes (minimum DRAM/HBM traffic of one forward): the operator must read q twice - qbar, a mean
over all tokens of phi(q), is needed before any token's softmax weight, and the output pass needs
every q again - plus k and v once, and write the output once: 5 (B, h, N, d) tensors. RoPE tables
are not counted (a kernel can compute them on the fly). Mixer: the common lower bound of every
mixer (read x and the weights once, write y once; `mixer_bytes`), so mixers compare on one rule.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnbench.layers import apply_rope
from attnbench.registry import Mechanism, Shape, register_mechanism
from mechanisms.common import level_bytes, level_flops
from mechanisms.rala.eager import CITE_RALA, default_rope, phi, rala_mixer, rala_op

# the operator reads q twice (qbar pass + output pass), k and v once, writes the output once
RALA_OP_READS = 4
RALA_OP_WRITES = 1


def rala_core_flops(s: Shape) -> float:
    """Forward matmul FLOPs of the operator: scores qbar.k (N d), z (N d), KV (N d^2), out (N d^2)."""
    bhn, d = s.batch * s.heads * s.tokens, s.head_dim
    return 2.0 * bhn * (2 * d * d + 2 * d)


def rala_kv_buffer(q: Tensor, k: Tensor, v: Tensor, *, grid, rope=None, query_aware: bool = True) -> Tensor:
    """RALA's KV (spec step 8) from raw q, k, v (B, h, N, d): mean_m R(k~_m) v_m^T, (B, h, d, d).

    k~_m = phi(k_m) alpha_m N with alpha = softmax_m(d^-0.5 mean_n phi(q_n) . phi(k_m)), or
    k~ = phi(k) when query_aware is False. rope: (sin, cos) tables, None builds the default ones.
    """
    n = q.shape[-2]
    if grid[0] * grid[1] != n:
        raise ValueError(f"grid {tuple(grid)} has {grid[0] * grid[1]} tokens but the inputs have {n}")
    sin, cos = rope if rope is not None else default_rope(grid, q.shape[-1], q)
    k = phi(k)  # (B, h, N, d)
    if query_aware:
        q_mean = phi(q).mean(dim=-2, keepdim=True)  # (B, h, 1, d)
        alpha = torch.softmax(q.shape[-1] ** -0.5 * q_mean @ k.transpose(-1, -2), dim=-1).transpose(-1, -2)
        k = k * alpha * n  # (B, h, N, d)
    k_rope = apply_rope(k, sin, cos)
    return (k_rope.transpose(-2, -1) * n**-0.5) @ (v * n**-0.5)


class RalaBase(Mechanism):
    """Shared op/mixer/costs for RALA forms; subclasses set `operator`."""

    operator = staticmethod(rala_op)

    def op(self, q, k, v, *, grid):
        return type(self).operator(q, k, v, grid=grid)

    def mixer(self, dim, num_heads, *, gate: bool = True, lepe: bool = True):
        return rala_mixer(dim, num_heads, type(self).operator, gate=gate, lepe=lepe)

    def kv_buffer(self, q, k, v, *, grid, rope=None):
        """The KV state (B, h, d, d) the operator builds (for the rank metrics)."""
        return rala_kv_buffer(q, k, v, grid=grid, rope=rope)

    def flops(self, s: Shape, *, level: str, pass_: str, gate: bool = True, lepe: bool = True) -> float:
        """gate/lepe: the mixer's shell options (TokenMixer), which change its convs."""
        return level_flops(s, level=level, pass_=pass_, core_fwd=rala_core_flops(s), gate=gate, lepe=lepe)

    def bytes(self, s: Shape, *, level: str, dtype: str, gate: bool = True, lepe: bool = True) -> float:
        return level_bytes(s, level=level, dtype=dtype, reads=RALA_OP_READS, writes=RALA_OP_WRITES,
                           gate=gate, lepe=lepe)  # fmt: skip


@register_mechanism("rala_eager", family="rala", backend="torch", reference=None, cite=CITE_RALA)
class RalaEager(RalaBase):
    """Rank-Augmented Linear Attention, readable eager PyTorch (the family's reference)."""
