"""What every softmax registration shares: its costs, its mixer, the score-memory mixin, the citations.

op: out = softmax(d^-0.5 q k^T) v over all N tokens, inputs/outputs (B, h, N, d), no RoPE.
mixer: the TokenMixer shell; RoPE on the raw q and k (no feature map), then the op.

FLOPs (op, forward): 4 B h N^2 d (two N x N x d matmuls, a multiply-add = 2 FLOPs);
fwd_bwd = 3.5 x fwd (FlashAttention's benchmark convention: backward 2.5x, scores recomputed);
bwd (the backward alone) = 2.5 x fwd. Mixer: the op plus the shell's convs (fwd_bwd 3x, bwd 2x for those).
Bytes: q, k, v read and out written once (the flash-style minimum; the N x N scores never reach memory).
Every registration here shares these conventions through `SoftmaxBase`, so their rows compare directly.
"""

from __future__ import annotations

from torch import Tensor

from attnbench.dtypes import DTYPE_BYTES
from attnbench.layers import TokenMixer, rope_operator
from attnbench.registry import Mechanism, Shape
from mechanisms.common import SOFTMAX_CORE_FWD_BWD, level_bytes, level_flops

CITE_ATTN = "Vaswani et al., Attention Is All You Need, NeurIPS 2017"
CITE_FA2 = "Dao, FlashAttention-2, ICLR 2024"
CITE_FA3 = "Shah et al., FlashAttention-3, NeurIPS 2024"
CITE_MEM_EFFICIENT = "Rabe & Staats, Self-attention does not need O(n^2) memory, 2021; Lefaudeux et al., xFormers, 2022"


class SoftmaxBase(Mechanism):
    """Shared costs and mixer; subclasses provide `attend(q, k, v)` on (B, h, N, d)."""

    def attend(self, q, k, v):
        raise NotImplementedError

    def op(self, q, k, v, *, grid):
        return self.attend(q, k, v)

    def mixer(self, dim, num_heads):
        return TokenMixer(dim, num_heads, rope_operator(self.attend))

    def flops(self, s: Shape, *, level: str, pass_: str) -> float:
        core = 4.0 * s.batch * s.heads * s.tokens**2 * s.head_dim
        return level_flops(s, level=level, pass_=pass_, core_fwd=core, core_fwd_bwd=SOFTMAX_CORE_FWD_BWD)

    def bytes(self, s: Shape, *, level: str, dtype: str) -> float:
        return level_bytes(s, level=level, dtype=dtype)

    def off_device_reason(self, device_type: str) -> str:
        """Why this registration does not run on `device_type` (a device not in `devices`)."""
        return f"runs on {'/'.join(self.devices)} only, not {device_type}"

    def _availability(self, device: str | None) -> tuple[bool, str]:
        # the registry's device test, with a reason that says why (subclasses know it)
        device_type = str(device).split(":")[0]
        if device is not None and device_type not in self.devices:
            return False, self.off_device_reason(device_type)
        return super()._availability(device)


class MaterialisedScores:
    """Mixin for implementations that materialise the (B, h, N, N) score matrix: its memory, used
    by the runner to predict (and prune) cases that cannot fit."""

    def workspace_bytes(self, s: Shape, *, level: str, dtype: str, pass_: str) -> float:
        # fwd: scores and probabilities; fwd_bwd and bwd add the saved probabilities' gradient
        copies = 2 if pass_ == "fwd" else 3
        return float(copies * s.batch * s.heads * s.tokens**2 * DTYPE_BYTES[dtype])


def last_dim_contiguous(x: Tensor) -> Tensor:
    """x itself when d is its innermost stride, else a contiguous copy.

    Every fused attention kernel needs stride(-1) == 1; SDPA given anything else silently falls back
    to its math path (and a pinned fused backend refuses). The mixer's head split hands v over as a
    strided view (B, h, N, d) with stride(-1) = N, so mixers pay for one copy here, as the
    flash-attn package's own `maybe_contiguous` would; op-level inputs pass through untouched.
    """
    return x if x.stride(-1) == 1 else x.contiguous()
