"""RALA ablations (family "rala"): each removes one ingredient of the RALA token mixer.

Fan et al., "Breaking the Low-Rank Dilemma of Linear Attention", CVPR 2025; the steps below are those of
docs/rala.md, "The RALA operator".

- `rala_no_qaware`: no query-aware token weights - alpha_m = 1/N, so step 2's k_m <- k_m alpha_m N
  is the identity; what remains is linear attention with phi = ELU+1, RoPE, LePE and the gate
  (RALA's per-head RoPE, which is what sets it apart from `mlla`'s full-channel RoPE).
- `rala_no_gate`: the shell without the output gate o (qkvo has 3C outputs; y = proj(out + lepe)).
  The operator is RALA's own, so this is mixer-only (its op would be rala_eager's).
- `rala_no_rope`: no rotary embedding: steps 3-6 with R = identity (sin = 0, cos = 1 tables).

The operators reuse mechanisms/rala/naive.py (phi, op_tables, rala_op, rala_mixer) unchanged.

KV buffers (rank metrics, attnbench.workloads.rank_inputs): `rala_kv_buffer` (naive.py) computes step 5, KV =
mean_m R(k~_m) v_m^T (B, h, d, d), from raw q, k, v; RalaBase exposes it as `kv_buffer`
and each ablation overrides it with its own.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnbench.layers import apply_rope
from attnbench.registry import Mechanism, Shape, register_mechanism
from mechanisms.common import mixer_bytes, pass_factor, shell_flops
from mechanisms.rala.base import RalaBase
from mechanisms.rala.costs import rala_core_flops
from mechanisms.rala.naive import CITE_RALA, op_tables, phi, rala_kv_buffer, rala_mixer, rala_op


def identity_rope(n: int, head_dim: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """(sin, cos) = (0, 1) tables, each (N, d): apply_rope with them is the identity."""
    sin = torch.zeros(n, head_dim, dtype=like.dtype, device=like.device)
    return sin, torch.ones_like(sin)


def rala_no_qaware_op(q: Tensor, k: Tensor, v: Tensor, *, grid, rope=None) -> Tensor:
    """RALA without the query-aware weights (alpha = 1/N): (B, h, N, d) x3 -> (B, h, N, d)."""
    n = q.shape[-2]
    sin, cos = op_tables(q, grid, rope)
    q, k = phi(q), phi(k)  # (B, h, N, d)
    z = 1 / (q @ k.mean(dim=-2, keepdim=True).transpose(-2, -1) + 1e-6)  # (B, h, N, 1), un-rotated
    kv = (apply_rope(k, sin, cos).transpose(-2, -1) * n**-0.5) @ (v * n**-0.5)  # (B, h, d, d)
    return apply_rope(q, sin, cos) @ kv * z


def rala_no_rope_op(q: Tensor, k: Tensor, v: Tensor, *, grid, rope=None) -> Tensor:
    """RALA with R = identity; the shell's RoPE tables are ignored."""
    return rala_op(q, k, v, grid=grid, rope=identity_rope(q.shape[-2], q.shape[-1], q))


@register_mechanism("rala_no_qaware", family="rala", backend="torch", reference=None, cite=CITE_RALA)
class RalaNoQaware(RalaBase):
    """RALA ablation: alpha = 1/N (no query-aware token weights); op and mixer."""

    operator = staticmethod(rala_no_qaware_op)

    def kv_buffer(self, q, k, v, *, grid, rope=None):
        return rala_kv_buffer(q, k, v, grid=grid, rope=rope, query_aware=False)

    def flops(self, s: Shape, *, level: str, pass_: str) -> float:
        # RALA's operator minus the qbar . k scores (2 N d per head)
        score = 2.0 * s.batch * s.heads * s.tokens * s.head_dim
        core = (rala_core_flops(s) - score) * pass_factor(pass_)
        if level == "op":
            return core
        if level == "mixer":
            return core + shell_flops(s) * pass_factor(pass_)
        raise ValueError(f"no analytic FLOPs for level {level!r}")


@register_mechanism("rala_no_rope", family="rala", backend="torch", reference=None, cite=CITE_RALA)
class RalaNoRope(RalaBase):
    """RALA ablation: no rotary embedding; op and mixer (costs as RALA: RoPE is elementwise)."""

    operator = staticmethod(rala_no_rope_op)

    def kv_buffer(self, q, k, v, *, grid, rope=None):
        return rala_kv_buffer(q, k, v, grid=grid, rope=identity_rope(q.shape[-2], q.shape[-1], q))


@register_mechanism("rala_no_gate", family="rala", backend="torch", reference=None, cite=CITE_RALA)
class RalaNoGate(Mechanism):
    """RALA ablation: the shell without the output gate; mixer only."""

    def mixer(self, dim, num_heads, *, lepe: bool = True):  # gate is fixed off: that is the ablation
        return rala_mixer(dim, num_heads, rala_op, gate=False, lepe=lepe)

    def kv_buffer(self, q, k, v, *, grid, rope=None):
        return rala_kv_buffer(q, k, v, grid=grid, rope=rope)

    def flops(self, s: Shape, *, level: str, pass_: str) -> float:
        if level != "mixer":
            raise ValueError(f"rala_no_gate is mixer-only: no FLOPs for level {level!r}")
        return (rala_core_flops(s) + shell_flops(s, gate=False)) * pass_factor(pass_)

    def bytes(self, s: Shape, *, level: str, dtype: str) -> float:
        if level != "mixer":
            raise ValueError(f"rala_no_gate is mixer-only: no bytes for level {level!r}")
        return mixer_bytes(s, dtype, gate=False)
