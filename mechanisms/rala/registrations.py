"""Registry entries of the RALA family."""

from __future__ import annotations

from attnbench.registry import Mechanism, Shape, register_mechanism
from mechanisms.common import mixer_bytes, op_bytes, pass_factor, shell_flops
from mechanisms.rala.eager import CITE_RALA, rala_mixer, rala_op


def rala_core_flops(s: Shape) -> float:
    """Forward matmul FLOPs of the operator: scores qbar.k (N d), KV (N d^2), out (N d^2), z (N d)."""
    bhn, d = s.batch * s.heads * s.tokens, s.head_dim
    return 2.0 * bhn * (2 * d * d + 2 * d)


class RalaBase(Mechanism):
    """Shared op/mixer/costs for RALA forms; subclasses set `operator`."""

    operator = staticmethod(rala_op)

    def op(self, q, k, v, *, grid):
        return type(self).operator(q, k, v, grid=grid)

    def mixer(self, dim, num_heads, **options):
        return rala_mixer(dim, num_heads, type(self).operator, **options)

    def flops(self, s: Shape, *, level: str, pass_: str) -> float:
        core = rala_core_flops(s) * pass_factor(pass_)
        if level == "op":
            return core
        if level == "mixer":
            return core + shell_flops(s) * pass_factor(pass_)
        raise ValueError(f"no analytic FLOPs for level {level!r}")

    def bytes(self, s: Shape, *, level: str, dtype: str) -> float:
        if level == "op":
            return op_bytes(s, dtype)
        if level == "mixer":
            return mixer_bytes(s, dtype)
        raise ValueError(f"no analytic bytes for level {level!r}")


@register_mechanism("rala_eager", family="rala", backend="torch", reference=None, cite=CITE_RALA)
class RalaEager(RalaBase):
    """Rank-Augmented Linear Attention, readable eager PyTorch (the family's reference)."""
