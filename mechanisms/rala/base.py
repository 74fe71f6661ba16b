"""`RalaBase`: what every RALA registration shares - the op and mixer around an `operator`, the KV state for
the rank metrics, and the analytic costs (costs.py)."""

from __future__ import annotations

from attnbench.registry import Mechanism, Shape
from mechanisms.common import level_bytes, level_flops
from mechanisms.rala.costs import RALA_OP_READS, RALA_OP_WRITES, rala_core_flops
from mechanisms.rala.naive import rala_kv_buffer, rala_mixer, rala_op


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
        return level_bytes(
            s, level=level, dtype=dtype, reads=RALA_OP_READS, writes=RALA_OP_WRITES, gate=gate, lepe=lepe
        )
