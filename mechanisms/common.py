"""Cost formulas shared by mechanisms (all analytic, documented conventions).

FLOP convention (every mechanism in this package): a multiply-add is 2 FLOPs; only matmuls and
convolutions are counted (the ops torch's FlopCounterMode counts); elementwise work (softmax, RoPE,
feature maps, gate, biases, normalisers) is excluded and is small next to the matmuls.
Backward convention: a matmul/conv's backward costs 2x its forward (input and weight gradients),
so fwd_bwd = 3x fwd, except softmax attention cores, which follow FlashAttention's benchmark
convention fwd_bwd = 3.5x fwd (backward 2.5x: the score matrix is recomputed). The backward alone
(pass bwd) is fwd_bwd - fwd: 2x fwd, softmax cores 2.5x.

Byte convention: `bytes()` is the minimum DRAM/HBM traffic of one forward: every input read once,
every output written once, weights read once; intermediates that a fused kernel can keep on chip
are not counted. Mechanisms whose best known kernel must read an input twice say so.
"""

from __future__ import annotations

from attnbench.dtypes import DTYPE_BYTES
from attnbench.registry import Shape

# backward multipliers
MATMUL_FWD_BWD = 3.0
SOFTMAX_CORE_FWD_BWD = 3.5


def pass_factor(pass_: str, fwd_bwd: float = MATMUL_FWD_BWD) -> float:
    """The multiple of the forward's FLOPs that `pass_` costs, for work whose fwd_bwd costs `fwd_bwd` x fwd:
    fwd 1, fwd_bwd `fwd_bwd`, bwd (the backward alone) `fwd_bwd` - 1."""
    if pass_ == "fwd":
        return 1.0
    if pass_ == "fwd_bwd":
        return fwd_bwd
    if pass_ == "bwd":
        return fwd_bwd - 1.0
    raise ValueError(f"unknown pass {pass_!r} (fwd | fwd_bwd | bwd)")


def shell_flops(s: Shape, *, gate: bool = True, lepe: bool = True) -> float:
    """Forward FLOPs of the TokenMixer shell's convs: qkvo (C->4C or 3C), 5x5 depthwise LePE, proj."""
    n, c = s.batch * s.tokens, s.dim
    macs = n * c * (4 if gate else 3) * c + n * c * c
    if lepe:
        macs += n * c * 25
    return 2.0 * macs


def shell_params(dim: int, *, gate: bool = True, lepe: bool = True) -> int:
    """Parameters of the shell: qkvo weight+bias, lepe weight+bias, proj weight+bias."""
    out = dim * (4 if gate else 3)
    params = dim * out + out + dim * dim + dim
    if lepe:
        params += dim * 25 + dim
    return params


def op_bytes(s: Shape, dtype: str, *, reads: int = 3, writes: int = 1) -> float:
    """Minimum traffic of an operator on (B, h, N, d) tensors: `reads` inputs read, `writes` written."""
    return float((reads + writes) * s.batch * s.heads * s.tokens * s.head_dim * DTYPE_BYTES[dtype])


def mixer_bytes(s: Shape, dtype: str, *, gate: bool = True, lepe: bool = True) -> float:
    """Minimum traffic of a whole mixer: read x once, read the weights once, write y once."""
    activations = 2 * s.batch * s.tokens * s.dim
    return float((activations + shell_params(s.dim, gate=gate, lepe=lepe)) * DTYPE_BYTES[dtype])


def level_flops(
    s: Shape,
    *,
    level: str,
    pass_: str,
    core_fwd: float,
    core_fwd_bwd: float = MATMUL_FWD_BWD,
    gate: bool = True,
    lepe: bool = True,
) -> float:
    """FLOPs at op level (the attention core) or mixer level (core + the shell's convs), with the
    core's own fwd_bwd multiplier (softmax: 3.5) and the matmul one (3) for the shell (bwd: each less 1)."""
    core = core_fwd * pass_factor(pass_, core_fwd_bwd)
    if level == "op":
        return core
    if level == "mixer":
        return core + shell_flops(s, gate=gate, lepe=lepe) * pass_factor(pass_)
    raise ValueError(f"no analytic FLOPs for level {level!r}")


def level_bytes(
    s: Shape, *, level: str, dtype: str, reads: int = 3, writes: int = 1, gate: bool = True, lepe: bool = True
) -> float:
    """Minimum traffic at op level (`reads` inputs, `writes` outputs) or mixer level (x, weights, y)."""
    if level == "op":
        return op_bytes(s, dtype, reads=reads, writes=writes)
    if level == "mixer":
        return mixer_bytes(s, dtype, gate=gate, lepe=lepe)
    raise ValueError(f"no analytic bytes for level {level!r}")


def check_grid(grid, n: int) -> None:
    """ValueError unless the (H, W) token grid has the inputs' N tokens (every op that takes `grid`)."""
    if grid[0] * grid[1] != n:
        raise ValueError(f"grid {tuple(grid)} has {grid[0] * grid[1]} tokens but the inputs have {n}")
